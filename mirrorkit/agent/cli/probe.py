"""``mirrorkit-agent probe primary --mirror M``, the fast way.

keepalived's ``vrrp_script`` can run this every second on every failover
member (the role's default is the bash ``mirrorkit-primary-check``, which
reads the same file), so it must cost little and nothing a local user does
may sway it: it imports only the standard library (PyYAML only when it has
to read the runtime directory from the config), and it does not ask the
status API, whose connections anyone on the host can hold. It reads the
agent's primary file ``<runtime dir>/<mirror>.primary``
(``util/primary_file.py``): exit 0 only when the agent wrote "writable
primary" there within the last ``STALE_SECONDS``; a missing, stale,
foreign or malformed file is 1, never 0. ``--verbose`` prints why.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mirrorkit.agent.util.primary_file import read_verdict

DEFAULT_CONFIG = Path("/etc/mirrorkit/agent.yml")
DEFAULT_RUNTIME_DIR = Path("/run/mirrorkit")


def runtime_dir_from(config: Path) -> Path:
    """The directory of the control socket the agent config names (where the
    agent writes its primary files), else the default: a wrong guess can only
    fail safe (no file there)."""
    try:
        import yaml

        data = yaml.safe_load(config.read_text())
        socket_path = data.get("control_socket") if isinstance(data, dict) else None
    except Exception:
        return DEFAULT_RUNTIME_DIR
    if isinstance(socket_path, str) and socket_path.startswith("/"):
        return Path(socket_path).parent
    return DEFAULT_RUNTIME_DIR


def main(argv: Sequence[str] | None = None, config: Path = DEFAULT_CONFIG) -> int:
    parser = argparse.ArgumentParser(prog="mirrorkit-agent probe",
                                     description="exit 0 if this host has the asked role")
    parser.add_argument("what", choices=["primary"])
    parser.add_argument("--mirror", required=True)
    parser.add_argument("--runtime-dir", type=Path, default=None,
                        help="where the agent writes <mirror>.primary (default: the "
                             f"directory of the config's control_socket, else "
                             f"{DEFAULT_RUNTIME_DIR})")
    parser.add_argument("--config", type=Path, default=config)
    parser.add_argument("--verbose", "-v", action="store_true", help="say why")
    args = parser.parse_args(argv)
    directory = args.runtime_dir or runtime_dir_from(args.config)
    ok, why = read_verdict(directory, args.mirror)
    if args.verbose:
        print(f"{'primary' if ok else 'not primary'}: {why}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

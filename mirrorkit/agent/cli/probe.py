"""``mirrorkit-agent probe primary --mirror M``, the fast way.

keepalived's ``vrrp_script`` runs this every second on every failover member,
so it must cost little: it imports only the standard library (PyYAML only
when it has to read the API port from the config), where the full agent
command line costs about a quarter of a second of imports per call, enough to
make keepalived skip checks on a loaded host. Exit 0 only when the local
agent answers ``/primary?mirror=M`` with 200 (this host is M's writable
primary); no agent answering is 1, never 0.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

DEFAULT_CONFIG = Path("/etc/mirrorkit/agent.yml")
DEFAULT_API_PORT = 7480


def api_port_from(config: Path) -> int:
    """The API port the agent config names (its default when it names none or
    cannot be read: the probe then fails safe if the agent is elsewhere)."""
    try:
        import yaml

        data = yaml.safe_load(config.read_text())
        port = int(data["api"]["port"])
    except Exception:
        return DEFAULT_API_PORT
    return port


def is_primary(mirror: str, api_port: int, timeout: float = 5.0) -> bool:
    query = urllib.parse.urlencode({"mirror": mirror})
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/primary?{query}",
                                    timeout=timeout) as resp:
            return int(resp.status) == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False  # 503 (HTTPError), no agent, garbage: not a writable primary


def main(argv: Sequence[str] | None = None, config: Path = DEFAULT_CONFIG) -> int:
    parser = argparse.ArgumentParser(prog="mirrorkit-agent probe",
                                     description="exit 0 if this host has the asked role")
    parser.add_argument("what", choices=["primary"])
    parser.add_argument("--mirror", required=True)
    parser.add_argument("--api-port", type=int, default=0)
    args = parser.parse_args(argv)
    port = args.api_port or api_port_from(config)
    return 0 if is_primary(args.mirror, port) else 1


if __name__ == "__main__":
    sys.exit(main())

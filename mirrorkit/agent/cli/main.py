"""``mirrorkit-agent``: the replication agent and its local commands.

* ``mirrorkit-agent [--config /etc/mirrorkit/agent.yml]``: run every mirror
  of this host in one asyncio process; SIGTERM/SIGINT stop it cleanly.
* ``mirrorkit-agent --check-config FILE``: validate FILE (any path; used as
  the Ansible template's ``validate:``); print every error; exit 0 or 1.
* ``mirrorkit-agent status [--json] [--api-port N]``: this host's ``/status``.
* ``mirrorkit-agent probe primary --mirror M``: exit 0 if this host is the
  writable primary of M (keepalived's ``vrrp_script``), else 1; it reads
  the agent's primary file, not the API (``cli/probe.py``).
* ``mirrorkit-agent manifest --mirror M [--at-lsn N]`` and
  ``mirrorkit-agent repair --mirror M PATH...``: online verification's
  agent side (``cli/verify.py``).
* ``mirrorkit-agent resync --mirror M [--member H] [--mode MODE]``: start a
  resync on this host, its primary (``cli/resync.py``).
* ``mirrorkit-agent events [--mirror M] [--since N] [--limit N] [--json]``:
  this host's event history (``cli/events.py``).
* ``mirrorkit-agent maintenance on|off --mirror M``, ``switchover --mirror M
  [--to H] [--at TIME] [--cancel]``, ``promote --mirror M [--force]``: the
  operations (``cli/operations.py``).

``repair``, ``resync``, ``maintenance``, ``switchover`` and ``promote``
change state: they talk to the agent's root-only control socket
(``--control-socket``, else ``control_socket`` of ``--config``), so only
root may run them; the others read the loopback API.

Exit status: 0 success, 1 failure, 2 usage error. Logs go to stderr (journald
under systemd), one line per decision or event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import urllib.error
from collections.abc import Callable, Sequence
from pathlib import Path

from mirrorkit import __version__
from mirrorkit.agent.cli import api_client, probe
from mirrorkit.agent.cli import events as eventscli
from mirrorkit.agent.cli import operations as opscli
from mirrorkit.agent.cli import resync as resynccli
from mirrorkit.agent.cli import verify as verifycli
from mirrorkit.agent.config import ConfigError, load_config
from mirrorkit.agent.daemon import Agent
from mirrorkit.agent.util.logsafe import SafeFormatter

__all__ = ["Agent", "main"]

log = logging.getLogger("mirrorkit.agent")

DEFAULT_CONFIG = Path("/etc/mirrorkit/agent.yml")




def _setup_logging(verbose: bool) -> None:
    # journald stamps time and unit itself; elsewhere (tests, a terminal) we do.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    # Peer data (member names, reasons, paths) reaches log messages: the
    # formatter escapes control characters so no peer can forge a line.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter(fmt))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def check_config(path: Path) -> int:
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{path}: OK ({len(cfg.mirrors)} mirror(s) for host {cfg.host})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    try:
        code, body = api_client.get(api_client.api_port(args), "/status")
    except (OSError, urllib.error.URLError) as exc:
        print(f"mirrorkit-agent: cannot reach the local agent API: {exc}", file=sys.stderr)
        return 1
    if code != 200:
        print(f"mirrorkit-agent: /status answered {code}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(body.decode() + ("" if body.endswith(b"\n") else "\n"))
        return 0
    data = json.loads(body)
    print(f"host {data.get('host')}  version {data.get('version')}")
    for name, m in sorted(data.get("mirrors", {}).items()):
        print(f"{name:16} {m.get('role', '?'):8} term {m.get('term', '?')}  "
              f"lsn {m.get('lsn', '?')}  applied {m.get('applied_lsn', '?')}  "
              f"lag {m.get('lag_records', '?')} rec / {m.get('lag_seconds', '?')} s  "
              f"connected {m.get('connected', '?')}")
        if m.get("error"):
            print(f"    ERROR: {m['error']}")
        for peer, p in sorted(m.get("peers", {}).items()):
            state = f"  {p['state']}" if p.get("state") else ""
            print(f"    {peer:14} {p.get('role', '?'):8} connected {p.get('connected')}  "
                  f"acked {p.get('acked_lsn', '-')}  lag {p.get('lag_seconds', '-')} s{state}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    # `mirrorkit-agent probe …` normally takes entry.py's fast path; this is
    # the same check when --config comes first or via `python -m …main`.
    argv = ["primary", "--mirror", args.mirror, "--config", args.config]
    if args.runtime_dir:
        argv += ["--runtime-dir", args.runtime_dir]
    return probe.main(argv + (["--verbose"] if args.probe_verbose else []))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mirrorkit-agent",
                                description="mirrorkit replication agent")
    p.add_argument("--version", action="version", version=f"mirrorkit-agent {__version__}")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="agent config file")
    p.add_argument("--check-config", metavar="FILE", help="validate FILE and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command")
    st = sub.add_parser("status", help="print this host's agent status")
    st.add_argument("--json", action="store_true")
    st.add_argument("--api-port", type=int, default=0)
    pr = sub.add_parser("probe", help="exit 0 if this host has the asked role")
    pr.add_argument("what", choices=["primary"])
    pr.add_argument("--mirror", required=True)
    pr.add_argument("--runtime-dir", default="")
    pr.add_argument("--verbose", dest="probe_verbose", action="store_true")
    verifycli.add_parsers(sub)
    resynccli.add_parser(sub)
    eventscli.add_parser(sub)
    opscli.add_parsers(sub)
    return p


# The local commands (the agent itself runs when none is given).
_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "status": cmd_status,
    "probe": cmd_probe,
    "manifest": verifycli.cmd_manifest,
    "repair": verifycli.cmd_repair,
    "resync": resynccli.cmd_resync,
    "events": eventscli.cmd_events,
    "maintenance": opscli.cmd_maintenance,
    "switchover": opscli.cmd_switchover,
    "promote": opscli.cmd_promote,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.check_config:
        return check_config(Path(args.check_config))
    command = _COMMANDS.get(args.command or "")
    if command is not None:
        return command(args)
    _setup_logging(args.verbose)
    try:
        cfg = load_config(Path(args.config))
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
    try:
        asyncio.run(Agent(cfg, Path(args.config)).run())
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

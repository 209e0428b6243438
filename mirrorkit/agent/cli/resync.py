"""On-demand resync: ``mirrorkit-agent resync``, the client of the primary's
``POST /resync`` control route (``api/control.py``).

``POST /resync?mirror=M[&member=H][&mode=checksum][&keep_orphans=1]``, on the
agent's root-only control socket, asks the primary of M to resync member H,
or every receiver without ``member``. Answers 200 ``{"mirror", "mode",
"resyncs": {member: id}}``; 400 for a bad mode, unknown member or mirror;
409 when this host is not M's primary. Progress is in ``GET /status`` under
``mirrors.M.peers.H.resync`` (its ``id`` matches).

``mirrorkit-agent resync --mirror M [--member H] [--mode MODE]
[--keep-orphans] [--json] [--control-socket PATH]`` posts that request and
prints the answer; exit 0 when the resync was started, 1 when the agent
refused or cannot be reached — run by another user than root, "must be run
as root" (the controller's ``mirrorkit resync`` then polls status).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any

from mirrorkit.agent.cli import control_client
from mirrorkit.agent.resync.compare import MODES

__all__ = ["add_parser", "cmd_resync"]


def add_parser(sub: Any) -> None:
    rs = sub.add_parser("resync", help="start a resync on this host (the mirror's primary)")
    rs.add_argument("--mirror", required=True)
    rs.add_argument("--member", default="", help="one receiver (default: all receivers)")
    rs.add_argument("--mode", choices=MODES, default="checksum")
    rs.add_argument("--keep-orphans", action="store_true",
                    help="report files only the replica has instead of quarantining them")
    rs.add_argument("--json", action="store_true")
    control_client.add_argument(rs)


def cmd_resync(args: argparse.Namespace) -> int:
    query = {"mirror": args.mirror, "mode": args.mode,
             "keep_orphans": "1" if args.keep_orphans else "0"}
    if args.member:
        query["member"] = args.member
    answer: dict[str, Any]
    try:
        code, answer = control_client.post(control_client.socket_path(args),
                                           f"/resync?{urllib.parse.urlencode(query)}")
    except control_client.ControlUnavailable as exc:
        if args.json:
            print(json.dumps({"error": str(exc)}, sort_keys=True))
        print(f"mirrorkit-agent: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, sort_keys=True))
    if code != 200:
        if not args.json:
            print(f"mirrorkit-agent: resync refused ({code}): {answer.get('error')}",
                  file=sys.stderr)
        return 1
    if not args.json:
        for member, rid in sorted(answer["resyncs"].items()):
            print(f"{args.mirror}: {args.mode} resync of {member} started (id {rid})")
    return 0

"""On-demand resync: the primary's ``POST /resync`` route and the
``mirrorkit-agent resync`` command that calls it on the local API.

``POST /resync?mirror=M[&member=H][&mode=checksum][&keep_orphans=1]`` (the
API listens on loopback only) asks the primary of M to resync member H, or
every receiver without ``member``. Answers 200 ``{"mirror", "mode",
"resyncs": {member: id}}``; 400 for a bad mode, unknown member or mirror;
409 when this host is not M's primary. Progress is in ``GET /status`` under
``mirrors.M.peers.H.resync`` (its ``id`` matches).

``mirrorkit-agent resync --mirror M [--member H] [--mode MODE]
[--keep-orphans] [--json]`` posts that request and prints the answer;
exit 0 when the resync was started, 1 when the agent refused or cannot be
reached (the controller's ``mirrorkit resync`` then polls status).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

from mirrorkit.agent.resync.compare import MODES

__all__ = ["add_parser", "cmd_resync"]

Answer = tuple[int, dict[str, Any]]
PostFn = Callable[[str, dict[str, str], bytes], Awaitable[Answer]]






def add_parser(sub: Any) -> None:
    rs = sub.add_parser("resync", help="start a resync on this host (the mirror's primary)")
    rs.add_argument("--mirror", required=True)
    rs.add_argument("--member", default="", help="one receiver (default: all receivers)")
    rs.add_argument("--mode", choices=MODES, default="checksum")
    rs.add_argument("--keep-orphans", action="store_true",
                    help="report files only the replica has instead of quarantining them")
    rs.add_argument("--json", action="store_true")
    rs.add_argument("--api-port", type=int, default=0)


def cmd_resync(args: argparse.Namespace, port: Callable[[], int]) -> int:
    query = {"mirror": args.mirror, "mode": args.mode,
             "keep_orphans": "1" if args.keep_orphans else "0"}
    if args.member:
        query["member"] = args.member
    url = f"http://127.0.0.1:{port()}/resync?{urllib.parse.urlencode(query)}"
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            code, body = int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        code, body = exc.code, exc.read()
    except (OSError, urllib.error.URLError) as exc:
        print(f"mirrorkit-agent: cannot reach the local agent API: {exc}", file=sys.stderr)
        return 1
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {"error": body.decode(errors="replace")}
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

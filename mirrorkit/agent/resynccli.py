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
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mirrorkit.agent.replication import MirrorWorker
from mirrorkit.agent.resync import MODES
from mirrorkit.agent.sender import PrimaryMirror

__all__ = ["RESYNC_PARAMS", "add_parser", "cmd_resync", "resync_handler"]

Answer = tuple[int, dict[str, Any]]
PostFn = Callable[[str, dict[str, str], bytes], Awaitable[Answer]]
RESYNC_PARAMS = ("mirror", "member", "mode", "keep_orphans")


def start_resync(workers: Mapping[str, MirrorWorker], params: dict[str, str]) -> Answer:
    mirror = params.get("mirror")
    if not mirror:
        return 400, {"error": "parameter 'mirror' is required"}
    worker = workers.get(mirror)
    if worker is None:
        return 404, {"error": f"no mirror {mirror!r} on this host"}
    if not isinstance(worker, PrimaryMirror):
        return 409, {"error": f"this host is not the primary of {mirror} "
                              f"(role {worker.state.role}, primary {worker.state.primary})"}
    mode = params.get("mode", "checksum")
    keep = params.get("keep_orphans", "0")
    if keep not in ("0", "1"):
        return 400, {"error": "keep_orphans must be 0 or 1"}
    try:
        ids = worker.request_resync(params.get("member") or None, mode, keep == "1")
    except ValueError as exc:
        return 400, {"error": str(exc)}
    return 200, {"mirror": mirror, "mode": mode, "keep_orphans": keep == "1", "resyncs": ids}


def resync_handler(workers: Mapping[str, MirrorWorker], other: PostFn | None) -> PostFn:
    """The agent's POST callback: ``/resync`` here, anything else to ``other``."""

    async def post(path: str, params: dict[str, str], body: bytes) -> Answer:
        if path == "/resync":
            return start_resync(workers, params)
        if other is None:
            return 404, {"error": f"no POST route {path!r}"}
        return await other(path, params, body)

    return post


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

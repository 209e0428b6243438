"""The agent's mutating routes: ``POST /resync`` and ``POST /repair``.

They change replication state, so they are only reached through the
control channel (see :mod:`mirrorkit.agent.api.http`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Mapping

from mirrorkit.agent.api.http import Answer, PostFn
from mirrorkit.agent.stream.sender import PrimaryMirror
from mirrorkit.agent.stream.worker import MirrorWorker
from mirrorkit.agent.verify.repair import resend

__all__ = ["RESYNC_PARAMS", "RepairFn", "repair_handler", "resync_handler", "start_resync"]

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


RepairFn = Callable[[str, dict[str, str], bytes], Awaitable[Answer]]


def repair_handler(workers: Mapping[str, MirrorWorker]) -> RepairFn:
    """The agent's POST handler: ``/repair?mirror=M``, body ``{"paths": [...]}``."""

    async def post(path: str, params: dict[str, str], body: bytes) -> Answer:
        name = params.get("mirror")
        if name is None:
            return 400, {"error": "parameter 'mirror' is required"}
        worker = workers.get(name)
        if worker is None:
            return 404, {"error": f"no running mirror {name!r} on this host"}
        if not isinstance(worker, PrimaryMirror) or worker.state.role != "primary":
            return 409, {"error": f"this host is not the primary of {name} "
                                  f"(role {worker.state.role}): repair on the primary"}
        try:
            doc = json.loads(body)
            paths = doc["paths"]
            if not (isinstance(paths, list) and all(isinstance(p, str) for p in paths)):
                raise TypeError("paths must be a list of strings")
        except (ValueError, KeyError, TypeError) as exc:
            return 400, {"error": f'body must be {{"paths": ["/abs/path", ...]}}: {exc}'}
        roots = [os.path.realpath(t) for t in worker.cfg.targets]
        result = await resend(worker, roots, worker.cfg.exclude, paths)
        return 200, result.as_dict()

    return post

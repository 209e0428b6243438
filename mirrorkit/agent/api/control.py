"""The agent's mutating routes: ``POST /resync`` and ``POST /repair``.

They change replication state, so they are served only on the root-only
control socket (:mod:`mirrorkit.agent.api.control_socket`), never on the
loopback TCP status API. :func:`control_routes` is the one table of them:
a new mutating route (switchover, promote, fence, maintenance) is one entry
there, and the control socket's credential check covers it like the others.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from mirrorkit.agent.api.control_socket import ControlRoute
from mirrorkit.agent.api.http import Answer
from mirrorkit.agent.stream.sender import PrimaryMirror
from mirrorkit.agent.stream.worker import MirrorWorker
from mirrorkit.agent.verify.repair import resend

__all__ = ["RESYNC_PARAMS", "control_routes", "repair", "start_resync"]

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


async def repair(workers: Mapping[str, MirrorWorker], params: dict[str, str],
                 body: bytes) -> Answer:
    """``/repair?mirror=M``, body ``{"paths": [...]}``: the primary re-sends them."""
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


def control_routes(workers: Mapping[str, MirrorWorker]) -> dict[str, ControlRoute]:
    """Every mutating route of the agent, bound to its running ``workers``
    (read at each request, so mirrors started later are found)."""

    async def resync(params: dict[str, str], body: bytes) -> Answer:
        return start_resync(workers, params)

    async def repair_paths(params: dict[str, str], body: bytes) -> Answer:
        return await repair(workers, params, body)

    return {
        "/resync": ControlRoute(RESYNC_PARAMS, resync),
        "/repair": ControlRoute(("mirror",), repair_paths),
    }

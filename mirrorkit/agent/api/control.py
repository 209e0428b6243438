"""The agent's mutating routes: ``POST /resync``, ``/repair``, ``/maintenance``,
``/switchover`` and ``/promote``.

They change replication state, so they are served only on the root-only
control socket (:mod:`mirrorkit.agent.api.control_socket`), never on the
loopback TCP status API. :func:`control_routes` is the one table of them:
a new mutating route (switchover, promote, fence, maintenance) is one entry
there, and the control socket's credential check covers it like the others.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from mirrorkit.agent.api.control_socket import ControlRoute
from mirrorkit.agent.api.http import Answer
from mirrorkit.agent.ha.loop import HaLoop, OperationRefused
from mirrorkit.agent.stream.sender import PrimaryMirror
from mirrorkit.agent.stream.worker import MirrorWorker
from mirrorkit.agent.util.boundedjson import JsonRefused, loads
from mirrorkit.agent.verify.repair import resend

__all__ = ["REPAIR_MAX_BODY", "REPAIR_MAX_PATH", "REPAIR_MAX_PATHS", "RESYNC_PARAMS",
           "control_routes", "repair", "repair_paths", "start_resync"]

RESYNC_PARAMS = ("mirror", "member", "mode", "keep_orphans")
# POST /repair's body, {"paths": [...]}: `mirrorkit-agent repair` sends
# longer lists in several requests (cli/verify.py), so these bound one
# request's memory (the parsed list costs a few times the body), not what
# can be repaired.
REPAIR_MAX_BODY = 1 << 20
REPAIR_MAX_PATHS = 10_000
REPAIR_MAX_PATH = 4096  # bytes of one path (Linux's PATH_MAX)
_REPAIR_SHAPE = '{"paths": ["/abs/path", ...]}'


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
        paths = repair_paths(body)
    except ValueError as exc:
        return 400, {"error": f"body must be {_REPAIR_SHAPE}: {exc}"}
    roots = [os.path.realpath(t) for t in worker.cfg.targets]
    result = await resend(worker, roots, worker.cfg.exclude, paths)
    return 200, result.as_dict()


def repair_paths(body: bytes) -> list[str]:
    """The paths of a /repair body; raises ValueError saying what is wrong."""
    try:
        doc: Any = loads(body, max_bytes=REPAIR_MAX_BODY, what="the body")
    except JsonRefused as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(doc, dict):
        raise ValueError(f"the body is a JSON {type(doc).__name__}, not an object")
    unknown = sorted(set(doc) - {"paths"})
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))[:200]}")
    paths = doc.get("paths")
    if not isinstance(paths, list):
        raise ValueError("'paths' must be a list of absolute paths")
    if len(paths) > REPAIR_MAX_PATHS:
        raise ValueError(f"{len(paths)} paths, at most {REPAIR_MAX_PATHS} per request")
    for i, path in enumerate(paths):
        if not isinstance(path, str):
            raise ValueError(f"paths[{i}] is a {type(path).__name__}, not a string")
        if not path.startswith("/") or "\x00" in path:
            raise ValueError(f"paths[{i}] must be an absolute path without NUL, "
                             f"got {path[:100]!r}")
        try:
            raw = os.fsencode(path)  # what the file system is asked for
        except UnicodeError:
            raise ValueError(f"paths[{i}] is not a file name this host can encode: "
                             f"{path[:100]!r}") from None
        if len(raw) > REPAIR_MAX_PATH:
            raise ValueError(f"paths[{i}] is {len(raw)} bytes, longer than "
                             f"{REPAIR_MAX_PATH}")
    return paths


def _flag(params: dict[str, str], key: str) -> bool:
    value = params.get(key, "0")
    if value not in ("0", "1"):
        raise ValueError(f"{key} must be 0 or 1, got {value[:20]!r}")
    return value == "1"


def _loop(ha: Mapping[str, HaLoop], params: dict[str, str]) -> HaLoop | Answer:
    mirror = params.get("mirror")
    if not mirror:
        return 400, {"error": "parameter 'mirror' is required"}
    loop = ha.get(mirror)
    if loop is None:
        return 404, {"error": f"no mirror {mirror!r} on this host"}
    return loop


async def maintenance(ha: Mapping[str, HaLoop], params: dict[str, str]) -> Answer:
    loop = _loop(ha, params)
    if not isinstance(loop, HaLoop):
        return loop
    if "on" not in params:
        return 400, {"error": "parameter 'on' (0 or 1) is required"}
    try:
        on = _flag(params, "on")
    except ValueError as exc:
        return 400, {"error": str(exc)}
    return 200, await loop.set_maintenance(on)


async def switchover(ha: Mapping[str, HaLoop], params: dict[str, str]) -> Answer:
    loop = _loop(ha, params)
    if not isinstance(loop, HaLoop):
        return loop
    try:
        cancel = _flag(params, "cancel")
        at = _epoch(params.get("at"))
    except ValueError as exc:
        return 400, {"error": str(exc)}
    if cancel and (at is not None or params.get("to")):
        return 400, {"error": "cancel takes no 'at' or 'to'"}
    try:
        return 200, await loop.schedule_switchover(at, params.get("to") or None, cancel)
    except OperationRefused as exc:
        return 409, {"error": str(exc)}


def _epoch(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 < value < 1e11:
        raise ValueError(f"at must be epoch seconds, got {raw[:40]!r}")
    return value


async def promote(ha: Mapping[str, HaLoop], params: dict[str, str]) -> Answer:
    loop = _loop(ha, params)
    if not isinstance(loop, HaLoop):
        return loop
    try:
        force = _flag(params, "force")
    except ValueError as exc:
        return 400, {"error": str(exc)}
    try:
        return 200, await loop.promote(force)
    except OperationRefused as exc:
        return 409, {"error": str(exc)}


def control_routes(workers: Mapping[str, MirrorWorker],
                   ha: Mapping[str, HaLoop] | None = None) -> dict[str, ControlRoute]:
    """Every mutating route of the agent, bound to its running ``workers``
    and its mirrors' HA loops (read at each request, so mirrors started
    later are found)."""
    loops: Mapping[str, HaLoop] = ha if ha is not None else {}

    async def maintenance_route(params: dict[str, str], body: bytes) -> Answer:
        return await maintenance(loops, params)

    async def switchover_route(params: dict[str, str], body: bytes) -> Answer:
        return await switchover(loops, params)

    async def promote_route(params: dict[str, str], body: bytes) -> Answer:
        return await promote(loops, params)

    async def resync(params: dict[str, str], body: bytes) -> Answer:
        return start_resync(workers, params)

    async def repair_body(params: dict[str, str], body: bytes) -> Answer:
        return await repair(workers, params, body)

    return {
        # /resync takes everything in its query string: no body at all.
        "/resync": ControlRoute(RESYNC_PARAMS, resync, max_body=0),
        "/repair": ControlRoute(("mirror",), repair_body, max_body=REPAIR_MAX_BODY),
        "/maintenance": ControlRoute(("mirror", "on"), maintenance_route),
        "/switchover": ControlRoute(("mirror", "to", "at", "cancel"), switchover_route),
        "/promote": ControlRoute(("mirror", "force"), promote_route),
    }

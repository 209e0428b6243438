"""``mirrorkit-agent manifest`` and ``mirrorkit-agent repair``, and the
agent's ``POST /repair`` handler (the agent side of ``mirrorkit verify``).

* ``manifest --mirror M [--at-lsn N] [--timeout S] [--paths-stdin]``: print
  this host's manifest of M (JSON lines, see ``agent/verify.py``). With
  ``--at-lsn`` it first waits (at most S seconds, default 60) until the local
  agent's applied LSN of M is at least N, so the controller compares every
  member at a point at or after the primary's LSN N. ``--paths-stdin``
  restricts it to the ``[tree, path]`` pairs of a JSON list read on stdin
  (the controller's re-check of differing paths).
* ``repair --mirror M [--control-socket PATH] [PATH...]`` (paths on stdin,
  one per line, when none are given): ask the local primary, through the
  agent's root-only control socket, to re-send PATHs (absolute paths on the
  primary) through its mirror log, in requests within the route's bounds
  (``repair_requests``); prints the result as JSON (``{"error"}``
  when refused: not the primary, not root...); exit 0 when every path was
  re-sent, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from mirrorkit.agent.api.control import REPAIR_MAX_BODY, REPAIR_MAX_PATHS
from mirrorkit.agent.apply.held_modes import HELD_MODES_FILE, HeldModes
from mirrorkit.agent.cli import control_client
from mirrorkit.agent.config import ConfigError, MirrorConfig, load_config
from mirrorkit.agent.verify.manifest import ManifestError, build_manifest

__all__ = ["add_parsers", "cmd_manifest", "cmd_repair"]

POLL_SECONDS = 0.1
Answer = tuple[int, dict[str, Any]]


def add_parsers(sub: Any) -> None:
    mf = sub.add_parser("manifest", help="print this host's manifest of a mirror (JSON lines)")
    mf.add_argument("--mirror", required=True)
    mf.add_argument("--at-lsn", type=int, default=None, metavar="N",
                    help="first wait until the local applied LSN is at least N")
    mf.add_argument("--timeout", type=float, default=60.0, metavar="S",
                    help="how long --at-lsn may wait (seconds, default 60)")
    mf.add_argument("--paths-stdin", action="store_true",
                    help="only the [tree, path] pairs of a JSON list on stdin")
    mf.add_argument("--api-port", type=int, default=0)
    rp = sub.add_parser("repair", help="ask the local primary to re-send paths to every member")
    rp.add_argument("--mirror", required=True)
    rp.add_argument("paths", nargs="*", metavar="PATH",
                    help="absolute paths on the primary (default: one per line on stdin)")
    control_client.add_argument(rp)


def _mirror(config: str, name: str) -> tuple[MirrorConfig, int, str] | str:
    """(mirror config, API port, this host), or what is wrong."""
    try:
        cfg = load_config(Path(config))
    except ConfigError as exc:
        return str(exc)
    if name not in cfg.mirrors:
        return (f"this host serves no mirror {name!r} (it serves: "
                f"{', '.join(sorted(cfg.mirrors)) or 'none'})")
    return cfg.mirrors[name], cfg.api_port, cfg.host


def _live_role(port: int, mirror: str) -> str:
    """This member's role now, as its agent says (the config's is only the
    inventory's initial layout); ``unknown`` when the agent cannot say."""
    try:
        role = _status(port)["mirrors"][mirror]["role"]
    except (OSError, urllib.error.URLError, ValueError, KeyError, TypeError):
        return "unknown"
    return str(role)


def _status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


def _wait_applied(port: int, mirror: str, lsn: int, timeout: float) -> int:
    """The local applied LSN once it is >= ``lsn``; raises TimeoutError."""
    deadline = time.monotonic() + timeout
    applied = -1
    while True:
        try:
            applied = int(_status(port)["mirrors"][mirror].get("applied_lsn") or 0)
        except (OSError, ValueError, KeyError, TypeError):
            applied = -1
        if applied >= lsn:
            return applied
        if time.monotonic() >= deadline:
            seen = "no answer from the local agent" if applied < 0 else f"applied LSN {applied}"
            raise TimeoutError(f"{seen}, still below {lsn} after {timeout:g}s "
                               "(is this member connected to the primary?)")
        time.sleep(POLL_SECONDS)


def _held_modes(config: str, mirror: str) -> HeldModes | None:
    """The setuid/setgid bits this member holds back (a non-primary member's
    table, kept by its agent), read-only; None when it keeps none."""
    path = load_config(Path(config)).mirror_dir(mirror) / HELD_MODES_FILE
    if not path.exists():
        return None
    try:
        return HeldModes(path, readonly=True)
    except sqlite3.Error:
        return None


def cmd_manifest(args: argparse.Namespace) -> int:
    found = _mirror(args.config, args.mirror)
    if isinstance(found, str):
        print(f"mirrorkit-agent: {found}", file=sys.stderr)
        return 2
    mirror, port, host = found
    port = args.api_port or port
    if mirror.members[host].member_class == "arbiter":
        print(f"mirrorkit-agent: {args.mirror}: an arbiter holds no data", file=sys.stderr)
        return 2
    only = None
    if args.paths_stdin:
        try:
            only = [(int(t), str(p)) for t, p in json.load(sys.stdin)]
        except (ValueError, TypeError) as exc:
            print(f"mirrorkit-agent: stdin is not a JSON list of [tree, path]: {exc}",
                  file=sys.stderr)
            return 2
    applied = None
    try:
        if args.at_lsn is not None:
            applied = _wait_applied(port, args.mirror, args.at_lsn, args.timeout)
        roots = [os.path.realpath(t) for t in mirror.targets]
        out = sys.stdout
        out.write(json.dumps({"manifest": 1, "mirror": args.mirror,
                              "role": _live_role(port, args.mirror), "trees": roots,
                              "applied_lsn": applied}) + "\n")
        count = 0
        read_only = mirror.kind == "reporting"  # its modes are locked down: see verify.differs
        held = _held_modes(args.config, mirror.name)
        logical = held.logical if held is not None else None
        for entry in build_manifest(roots, mirror.exclude, only, logical):
            if read_only:
                entry["ro"] = True
            out.write(json.dumps(entry, sort_keys=True) + "\n")
            count += 1
        out.write(json.dumps({"end": count}) + "\n")
        out.flush()
    except (TimeoutError, ManifestError, OSError) as exc:
        print(f"mirrorkit-agent: manifest of {args.mirror}: {exc}", file=sys.stderr)
        return 1
    return 0


def repair_requests(paths: list[str]) -> list[bytes]:
    """The bodies of the ``POST /repair`` requests for ``paths``: sorted (so
    parents still come first across requests), each within the route's
    bounds (``REPAIR_MAX_BODY`` bytes, ``REPAIR_MAX_PATHS`` paths)."""
    bodies: list[bytes] = []
    chunk: list[str] = []
    size = len(b'{"paths": []}')
    for path in sorted(set(paths)):
        cost = len(json.dumps(path)) + 2  # the string and its ", "
        if chunk and (size + cost > REPAIR_MAX_BODY or len(chunk) >= REPAIR_MAX_PATHS):
            bodies.append(json.dumps({"paths": chunk}).encode())
            chunk, size = [], len(b'{"paths": []}')
        chunk.append(path)
        size += cost
    if chunk:
        bodies.append(json.dumps({"paths": chunk}).encode())
    return bodies


def cmd_repair(args: argparse.Namespace) -> int:
    paths = list(args.paths) or [line.strip() for line in sys.stdin if line.strip()]
    if not paths:
        print("mirrorkit-agent: repair: no paths given", file=sys.stderr)
        return 2
    query = urllib.parse.urlencode({"mirror": args.mirror})
    result: dict[str, Any] = {"resent": [], "not_on_primary": [], "refused": [], "ops": 0,
                              "lsn": 0}
    for body in repair_requests(paths):
        try:
            code, part = control_client.post(control_client.socket_path(args),
                                             f"/repair?{query}", body, timeout=300)
        except control_client.ControlUnavailable as exc:
            print(json.dumps({"error": str(exc)}))
            print(f"mirrorkit-agent: {exc}", file=sys.stderr)
            return 1
        if code != 200:
            print(json.dumps(part, sort_keys=True))
            return 1
        for key in ("resent", "not_on_primary", "refused"):
            result[key] += list(part.get(key) or [])
        result["ops"] += int(part.get("ops") or 0)
        result["lsn"] = max(result["lsn"], int(part.get("lsn") or 0))
    print(json.dumps(result, sort_keys=True))
    return 0 if not (result.get("not_on_primary") or result.get("refused")) else 1

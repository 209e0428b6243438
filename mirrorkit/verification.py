"""Online verification on the controller: compare every member of a mirror
with its primary while replication runs (``mirrorkit verify``).

How a consistent comparison is made without stopping anything:

1. Read the primary's log position ``L``; ask the primary for its manifest
   and every receiver for its manifest *once its applied LSN is >= L*
   (``mirrorkit-agent manifest --at-lsn L``), all in parallel.
2. Every path that differs on some member (missing, different, orphan) is
   re-checked once: after ``settle`` seconds (longer than capture's
   debounce), a new barrier ``L2``, then the primary's and the members'
   entries of just those paths at >= ``L2``. A path whose primary entry
   changed between the two rounds is being written: it is listed as
   *changing*, not as a difference. A path stable on the primary that still
   differs at ``L2`` is a real difference.
3. ``repair``: the primary re-sends the missing and different paths through
   its mirror log (``mirrorkit-agent repair``); they are then re-checked at
   the LSN the repair ended at. Orphans are reported, never touched.

The :class:`Transport` does the talking (SSH in ``commands/verify.py``,
local processes in the tests); everything here is transport-independent.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from mirrorkit.agent.verify.manifest import Entry, Key, compare, differs

__all__ = ["Manifest", "MemberResult", "Transport", "VerifyFailed", "verify_mirror"]

Manifest = tuple[dict[str, Any], dict[Key, Entry]]


class VerifyFailed(Exception):
    """A member could not produce its manifest (unreachable, timed out...)."""


class Transport(Protocol):
    def primary_lsn(self, host: str, mirror: str) -> int:
        """The primary's last LSN of ``mirror`` (raises VerifyFailed)."""
        ...

    def manifest(self, host: str, mirror: str, at_lsn: int | None,
                 only: Sequence[Key] | None) -> Manifest:
        """``host``'s manifest, at applied LSN >= ``at_lsn`` (raises VerifyFailed)."""
        ...

    def repair(self, host: str, mirror: str, paths: Sequence[str]) -> dict[str, Any]:
        """Ask the primary ``host`` to re-send ``paths``; its answer (raises VerifyFailed)."""
        ...


@dataclass
class MemberResult:
    host: str
    role: str
    error: str | None = None
    compared: int = 0
    matched: int = 0
    different: dict[Key, list[str]] = field(default_factory=dict)
    missing: list[Key] = field(default_factory=list)
    orphans: list[Key] = field(default_factory=list)
    changing: list[Key] = field(default_factory=list)
    repaired: list[Key] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and not (self.different or self.missing or self.orphans)

    def bad(self) -> set[Key]:
        return set(self.different) | set(self.missing) | set(self.orphans)


def _abspath(trees: Sequence[str], key: Key) -> str:
    tree, rel = key
    root = trees[tree] if 0 <= tree < len(trees) else f"<tree {tree}>"
    return f"{root.rstrip('/')}/{rel}"


def _parallel(calls: Mapping[str, Callable[[], Manifest]]) -> dict[str, Manifest | str]:
    out: dict[str, Manifest | str] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(calls)))) as pool:
        futures = {host: pool.submit(fn) for host, fn in calls.items()}
        for host, fut in futures.items():
            try:
                out[host] = fut.result()
            except VerifyFailed as exc:
                out[host] = str(exc)
    return out


def _round(t: Transport, mirror: str, primary: str, receivers: Sequence[str],
           lsn: int, only: Sequence[Key] | None) -> tuple[Manifest, dict[str, Manifest | str]]:
    calls: dict[str, Callable[[], Manifest]] = {
        primary: lambda: t.manifest(primary, mirror, None, only)}
    for host in receivers:
        calls[host] = functools.partial(t.manifest, host, mirror, lsn, only)
    got = _parallel(calls)
    main = got.pop(primary)
    if isinstance(main, str):
        raise VerifyFailed(f"primary {primary}: {main}")
    return main, got


def _classify(res: MemberResult, key: Key, p: Entry | None, r: Entry | None) -> None:
    """Record ``key``'s final state on one member (round-1 verdict dropped)."""
    res.different.pop(key, None)
    for lst in (res.missing, res.orphans):
        if key in lst:
            lst.remove(key)
    if p is None and r is not None:
        res.orphans.append(key)
    elif p is not None and r is None:
        res.missing.append(key)
    elif p is not None and r is not None:
        fields = differs(p, r)
        if fields:
            res.different[key] = fields


def _recheck(t: Transport, mirror: str, primary: str, results: dict[str, MemberResult],
             before: dict[Key, Entry], keys: Sequence[Key], lsn: int) -> dict[Key, Entry]:
    """Re-check ``keys`` at ``lsn``; a key whose primary entry is no longer
    ``before``'s is *changing*. Returns the primary's new entries."""
    live = [h for h, r in results.items() if r.error is None]
    (_, now), got = _round(t, mirror, primary, live, lsn, keys)
    for host in live:
        res = results[host]
        other = got[host]
        if isinstance(other, str):
            res.error = other
            continue
        for key in keys:
            if key not in res.bad() and key not in res.repaired:
                continue
            if before.get(key) != now.get(key):
                _classify(res, key, None, None)
                res.changing.append(key)
            else:
                _classify(res, key, now.get(key), other[1].get(key))
    for host in live:
        res = results[host]
        res.changing = sorted(set(res.changing))
        res.missing.sort()
        res.orphans.sort()
        res.matched = max(0, res.compared - len(res.missing) - len(res.different)
                          - sum(1 for k in res.changing if k in before))
    return now


def verify_mirror(t: Transport, mirror: str, primary: str, receivers: Mapping[str, str],
                  *, repair: bool = False, settle: float = 1.0) -> dict[str, Any]:
    """Verify ``receivers`` (host -> live role) against ``primary``; the
    report documented in the README (``mirrorkit verify --json``)."""
    lsn = t.primary_lsn(primary, mirror)
    (header, first), got = _round(t, mirror, primary, list(receivers), lsn, None)
    trees = [str(x) for x in header.get("trees", [])]
    results: dict[str, MemberResult] = {}
    for host, role in receivers.items():
        res = MemberResult(host, role)
        other = got[host]
        if isinstance(other, str):
            res.error = other
        else:
            cmp = compare(first, other[1])
            res.compared, res.matched = cmp.compared, cmp.matched
            res.different, res.missing, res.orphans = cmp.different, cmp.missing, cmp.orphans
        results[host] = res
    suspects = sorted(set().union(*(r.bad() for r in results.values())))
    current = first
    if suspects:
        time.sleep(settle)
        lsn = t.primary_lsn(primary, mirror)
        now = _recheck(t, mirror, primary, results, first, suspects, lsn)
        current = {k: v for k, v in first.items() if k not in suspects}
        current.update(now)
    repair_answer: dict[str, Any] | None = None
    if repair:
        fix = sorted(set().union(*(set(r.missing) | set(r.different)
                                   for r in results.values())))
        if fix:
            repair_answer = t.repair(primary, mirror, [_abspath(trees, k) for k in fix])
            for res in results.values():
                res.repaired = sorted(set(res.missing) | set(res.different))
            after = int(repair_answer.get("lsn") or lsn)
            _recheck(t, mirror, primary, results, current, fix, after)
    members = [_member_report(r, trees) for r in results.values()]
    return {"mirror": mirror, "primary": primary, "lsn": lsn, "trees": trees,
            "ok": all(r.ok for r in results.values()), "repair": repair_answer,
            "members": members}


def _member_report(r: MemberResult, trees: Sequence[str]) -> dict[str, Any]:
    return {
        "host": r.host, "role": r.role, "reachable": r.error is None, "error": r.error,
        "ok": r.ok, "compared": r.compared, "matched": r.matched,
        "different": [{"path": _abspath(trees, k), "fields": f}
                      for k, f in sorted(r.different.items())],
        "missing": [_abspath(trees, k) for k in r.missing],
        "orphans": [_abspath(trees, k) for k in r.orphans],
        "changing": [_abspath(trees, k) for k in r.changing],
        "repaired": [_abspath(trees, k) for k in r.repaired],
    }

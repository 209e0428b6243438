"""Keeps each mirror's primary file fresh (format: ``util/primary_file.py``)
and its VRRP track file right (``util/vrrp_file.py``).

keepalived's check reads these files instead of asking the status API, so
that no client of the API — 1,000 idle connections, a slowloris — can make
the primary's VIP drop (docs/architecture.md, "Status API, probe and
control socket", with the measurements). The verdict is the status API's
own ``check_primary``, so the file and ``GET /primary`` never disagree for
longer than one ``INTERVAL``.

The writes run on the event loop on purpose: a few hundred bytes renamed
on tmpfs cost microseconds, and a loop too stalled to write them is one
whose primary should not keep the VIP — the file goes stale and the check
fails safe. A write that fails (the directory removed, a full disk) is
logged once until it works again; the file then goes stale, which is the
safe answer.

The track file (``<mirror>.vrrp``: ``0`` primary, ``1`` not) is written
only when its value changes, at start, and when it has gone missing, so
keepalived, which rereads it on every change, reacts to each role change
once and at once. A mirror still starting (its state or log not read
yet) has no verdict for it: its track file keeps the value it had (the
previous agent's), so a restart of the primary's agent does not drop the
VIP at once; if the start takes too long, the script (the primary file says
"starting") releases it after its ``interval * fall``, as before. The same
holds for a switchover's drain while its ``on_demote`` runs (``keeps_vip``
in the status): the VIP goes when the hook has ended.
:meth:`publish` is cheap (one ``stat`` per mirror when
nothing changed): call it whenever writability may have changed. A mirror
that disappears from ``status()`` (or a ``status()`` that fails) gets ``1``.
:meth:`stop` leaves the track files alone on purpose: a routine agent
restart must not drop the VIP; the script's staleness check on the removed
primary file releases it if the agent does not come back in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mirrorkit.agent.api.http import check_primary
from mirrorkit.agent.util import primary_file, vrrp_file

__all__ = ["PrimaryPublisher"]

log = logging.getLogger(__name__)


class PrimaryPublisher:
    """Rewrites ``<directory()>/<mirror>.primary`` for every mirror of
    ``status()`` every ``primary_file.INTERVAL`` seconds; :meth:`stop`
    removes them (an agent that stops is nobody's primary)."""

    def __init__(self, directory: Callable[[], Path],
                 status: Callable[[], dict[str, Any]]) -> None:
        self._directory = directory
        self._status = status
        self._written: set[tuple[Path, str]] = set()
        # The track file value last written, per (directory, mirror).
        self._vrrp: dict[tuple[Path, str], bool] = {}
        self._failing: str | None = None
        self._unexpected: str | None = None  # the last unexpected failure, logged once
        self.writes = 0
        self.vrrp_writes = 0

    async def run(self) -> None:
        while True:
            try:
                self.publish()
            except Exception as exc:  # never die silently: the files would go stale for good
                if self._unexpected != repr(exc):
                    log.exception("primary files: a round failed (keepalived's check fails "
                                  "until one succeeds)")
                self._unexpected = repr(exc)
            else:
                self._unexpected = None
            await asyncio.sleep(primary_file.INTERVAL)

    def publish(self) -> None:
        """One round: write every mirror's file, remove those of mirrors gone."""
        directory = self._directory()
        try:
            status = self._status()
            mirrors = status.get("mirrors") or {}
        except Exception:  # the status API answers 500: not primary, files removed
            status, mirrors = {}, {}
        wanted: set[tuple[Path, str]] = set()
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            for name in mirrors:
                code, body = check_primary(status, name)
                verdict = body.get("mirrors", {}).get(name, {})
                reason = str(verdict.get("reason") or body.get("reason") or "")
                term = mirrors[name].get("term") if isinstance(mirrors[name], dict) else None
                # On a step-down the track file first: it is what releases the
                # VIP at once. On a promotion the primary file first: the
                # tracking script, waiting for it, passes as the track file
                # turns 0.
                entry = mirrors[name] if isinstance(mirrors[name], dict) else {}
                # A switchover's on_demote still running keeps the VIP until
                # the application has answered its requests in flight
                # (RoleOwner.keeps_vip); starting: no verdict yet.
                hold = entry.get("starting") or entry.get("keeps_vip") is True
                if code == 200:
                    primary_file.write(directory, name, True, term, reason)
                    self._track(directory, name, True)
                else:
                    if not hold:
                        self._track(directory, name, False)
                    primary_file.write(directory, name, False, term, reason)
                wanted.add((directory, name))
            for gone in [key for key in self._vrrp if key not in wanted]:
                self._track(*gone, primary=False)
                del self._vrrp[gone]
        except OSError as exc:
            if self._failing != str(exc):
                log.warning("primary file in %s cannot be written: %s (keepalived's check "
                            "fails until it can)", directory, exc)
            self._failing = str(exc)
            return
        if self._failing is not None:
            log.info("primary files in %s written again", directory)
            self._failing = None
        self.writes += 1
        for old_dir, name in self._written - wanted:
            with contextlib.suppress(OSError):
                primary_file.remove(old_dir, name)
        self._written = wanted

    def _track(self, directory: Path, mirror: str, primary: bool) -> None:
        """Write the track file when its value changed (or it is new, or gone)."""
        key = (directory, mirror)
        if self._vrrp.get(key) is primary and vrrp_file.file_for(directory, mirror).exists():
            return
        vrrp_file.write(directory, mirror, primary)
        if self._vrrp.get(key) is not primary:
            log.info("VRRP track file %s: %s", vrrp_file.file_for(directory, mirror),
                     "0 (the writable primary: keepalived may hold the VIP)" if primary
                     else "1 (not the writable primary: keepalived releases the VIP)")
        self._vrrp[key] = primary
        self.vrrp_writes += 1

    def stop(self) -> None:
        for directory, name in self._written:
            with contextlib.suppress(OSError):
                primary_file.remove(directory, name)
        self._written = set()

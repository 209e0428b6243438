"""A receiver with the ``mount`` capture checks, once per start, that its
backing store holds nothing the log does not: :class:`MountRejoin`.

(capture/mount/unlogged.py says how such changes arise: writes a dead
primary's mount accepted within its last lease.) What mountd still holds is
quarantined, exact, under ``<state_dir>/<mirror>/quarantine/unlogged-<time>/``
(``changes.log``: the records as mountd made them, readable with the log's
decoder; ``REPORT.txt``: one line per change), and then the member asks its
primary for a checksum resync, which brings every path back to the
primary's version. When changes may be missing that mountd no longer holds
(it restarted after this member was primary), the resync is asked for all
the same and the report says what is not known.

mountd not answering does not stop replication (applying needs only the
backing store); the check is retried every few seconds until it is done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from mirrorkit.agent.capture.mount import wire
from mirrorkit.agent.capture.mount.marks import LoggedMark
from mirrorkit.agent.capture.mount.unlogged import Unlogged, take_unlogged
from mirrorkit.agent.log.segments import decode_all
from mirrorkit.agent.resync.compare import quarantine_dir
from mirrorkit.atomicfile import atomic_write, fsync_dir

__all__ = ["TAKEN_FILE", "MountRejoin", "write_report"]

TAKEN_FILE = "mount-taken.json"

log = logging.getLogger(__name__)

_RETRY = 5.0


def write_report(quarantine: Path, mirror: str, host: str, found: Unlogged) -> Path:
    """Write the quarantine of ``found`` durably; its directory. Blocking."""
    base = time.strftime(f"unlogged-%Y%m%dT%H%M%S-{found.session}")
    dest, n = quarantine / base, 0
    while dest.exists():
        n += 1
        dest = quarantine / f"{base}.{n}"
    quarantine_dir(dest)
    data = b"".join(raw for _, raw in found.records)
    lines = [f"mirror {mirror} on {host}: changes made on the mount that the mirror log "
             f"never received (mountd session {found.session}).",
             "They were made while this member was primary, within its last write "
             "lease, after its agent stopped logging; the primary has its own version "
             "of these paths, which a checksum resync restores here.",
             "changes.log holds them exactly (mirror-log records; the LSN field is "
             "mountd's own number).", ""]
    if found.unknown:
        lines += [f"NOT KNOWN: {found.unknown}.", ""]
    for r in decode_all(data):
        op = r.op
        extra = f" -> {op.target}" if op.target else ""
        size = f" ({len(op.data)} B)" if op.data else ""
        lines.append(f"{r.lsn} {op.kind.name} tree {op.tree} {op.path!r}{extra}{size}")
    for name, content in (("changes.log", data), ("REPORT.txt",
                                                   ("\n".join(lines) + "\n").encode())):
        with open(dest / name, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
    fsync_dir(dest)
    fsync_dir(dest.parent)
    return dest


class MountRejoin:
    """One check per receiver start; ``on_found(reason)`` when a resync is needed."""

    def __init__(self, socket_path: Path, mirror: str, host: str, quarantine: Path,
                 last_mark: Callable[[], LoggedMark | None],
                 on_found: Callable[[str], None]) -> None:
        # What an earlier start took (mountd session, last change): those
        # are in quarantine, not missing, even though the log lacks them.
        self.taken_path = quarantine.parent / TAKEN_FILE
        self.socket_path = socket_path
        self.mirror = mirror
        self.host = host
        self.quarantine = quarantine
        self.last_mark = last_mark
        self.on_found = on_found
        self.done = False
        self.report: Path | None = None

    async def run(self) -> None:
        warned = 0.0
        while not self.done:
            try:
                await self.check()
                return
            except (OSError, TimeoutError, wire.WireError) as exc:
                if time.monotonic() - warned > 60:
                    log.warning("%s: cannot ask mirrorkit-mountd at %s whether the mount "
                                "holds changes the log never got (%s); retrying every "
                                "%.0f s", self.mirror, self.socket_path, exc, _RETRY)
                    warned = time.monotonic()
            await asyncio.sleep(_RETRY)

    def _load_taken(self) -> dict[str, object] | None:
        """What an earlier start took: {session, seq, resync_owed}."""
        try:
            data = json.loads(self.taken_path.read_text())
            return {"session": str(data["session"]), "seq": int(data["seq"]),
                    "resync_owed": bool(data.get("resync_owed", True)),
                    "report": str(data.get("report", "?"))}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Unreadable: count nothing as taken, owe a resync (the safe side).
            log.warning("%s: %s is unreadable (%s): a checksum resync is asked for",
                        self.mirror, self.taken_path, exc)
            return {"session": "", "seq": 0, "resync_owed": True, "report": "?"}

    def _save_taken(self, session: str, seq: int, owed: bool) -> None:
        entry = {"session": session, "seq": seq, "resync_owed": owed,
                 "report": str(self.report) if self.report is not None else "?"}
        atomic_write(self.taken_path, json.dumps(entry).encode())

    def resync_done(self) -> None:
        """(worker thread) A checksum resync from the primary completed: the
        quarantined changes are replaced by its version; nothing is owed."""
        taken = self._load_taken()
        if taken is not None and taken["resync_owed"]:
            self._save_taken(str(taken["session"]), int(str(taken["seq"])), False)
            log.info("%s: the checksum resync owed since %s is done", self.mirror,
                     taken["report"])

    async def check(self) -> None:
        last = await asyncio.to_thread(self.last_mark)
        taken = await asyncio.to_thread(self._load_taken)
        before = (str(taken["session"]), int(str(taken["seq"]))) if taken else None

        async def save(found: Unlogged) -> None:
            # The report, then what was taken and that a resync is owed, all
            # durable before mountd may drop anything: a restart before the
            # resync completes asks for it again (the log does not say).
            self.report = await asyncio.to_thread(write_report, self.quarantine, self.mirror,
                                                  self.host, found)
            await asyncio.to_thread(self._save_taken, found.session, found.records[-1][0], True)

        found = await take_unlogged(self.socket_path, self.host, last, save, before)
        self.done = True
        if not found.found:
            if taken is not None and taken["resync_owed"]:
                why = (f"a checksum resync owed since an earlier start (changes quarantined "
                       f"in {taken['report']}) has not completed")
                log.warning("%s: %s; asking the primary for it", self.mirror, why)
                self.on_found(why)
                return
            log.info("%s: the mount holds nothing the log does not (mountd session %s)",
                     self.mirror, found.session)
            return
        if found.records:
            why = (f"the mount held {len(found.records)} change(s) this member made as "
                   f"primary that never reached the log: quarantined in {self.report}")
        else:
            self.report = await asyncio.to_thread(write_report, self.quarantine, self.mirror,
                                                  self.host, found)
            await asyncio.to_thread(self._save_taken, found.session,
                                    int(str(taken["seq"])) if taken else 0, True)
            why = (f"changes may be missing from the log: {found.unknown} (report in "
                   f"{self.report})")
        log.warning("%s: %s; asking the primary for a checksum resync", self.mirror, why)
        self.on_found(why)

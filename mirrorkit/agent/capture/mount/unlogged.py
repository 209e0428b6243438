"""A member that is not the primary asks its mountd for changes the log
never got: :func:`take_unlogged`.

How they arise: the primary's agent grants mountd a write lease up to the
end of its own lease. If the agent dies (or cannot stop in time) the
application may go on writing until that lease runs out; those changes
reach the backing store and mountd's journal, never the log. If a failover
happened meanwhile, the member rejoins as a replica and its backing store
holds writes the new primary never received — diverged writes, which must
be quarantined with a report and replaced by the primary's version, never
silently kept nor silently overwritten.

What it does: connect, fence the mount (a lease the dead agent granted may
still run), collect every change mountd holds that the log does not (after
the log's own mark of that mountd session, if the log has one), hand them
to ``save`` (the caller writes the quarantine, durably), and only then tell
mountd they are taken (it drops them). It also says when changes may be
missing that mountd no longer holds: the newest mark in the log is this
member's own, not a clean stop's, and mountd's session is another one
(mountd restarted after this member was primary).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from mirrorkit.agent.capture.mount import wire
from mirrorkit.agent.capture.mount.marks import LoggedMark
from mirrorkit.agent.log.records import RecordCorrupt, encode_record
from mirrorkit.agent.log.segments import decode_all
from mirrorkit.agent.util.aio import wait_for

__all__ = ["Unlogged", "take_unlogged"]

_TIMEOUT = 5.0


@dataclass
class Unlogged:
    session: str
    # (mountd's number, the encoded record) of each change held and not logged
    records: list[tuple[int, bytes]] = field(default_factory=list)
    # Why changes may be missing that mountd no longer holds (None: none).
    unknown: str | None = None

    @property
    def found(self) -> bool:
        return bool(self.records) or self.unknown is not None


async def _frame(reader: asyncio.StreamReader) -> tuple[wire.Kind, bytes]:
    kind, length = wire.decode_header(
        await wait_for(reader.readexactly(wire.HEADER.size), _TIMEOUT))
    return kind, await wait_for(reader.readexactly(length), _TIMEOUT)


async def take_unlogged(socket_path: Path, host: str, last: LoggedMark | None,
                        save: Callable[[Unlogged], Awaitable[None]],
                        taken_before: tuple[str, int] | None = None) -> Unlogged:
    """See the module docstring. ``taken_before``: (mountd session, last
    change) an earlier call already took into quarantine. Raises OSError,
    TimeoutError or :class:`~.wire.WireError` when mountd cannot be asked
    (the caller retries)."""
    reader, writer = await wait_for(asyncio.open_unix_connection(str(socket_path)), _TIMEOUT)
    try:
        kind, payload = await _frame(reader)
        if kind is not wire.Kind.HELLO:
            raise wire.WireError(f"expected HELLO from mountd, got {kind.name}")
        session, first_held, _ = wire.parse_hello(payload)
        found = Unlogged(session)
        mark = last.mark if last is not None else None
        ours = mark is not None and mark.host == host
        if ours and mark is not None and last is not None and mark.session == session:
            logged = mark.last if mark.fenced else last.after
            if taken_before is not None and taken_before[0] == session:
                logged = max(logged, taken_before[1])
            if logged < first_held - 1:
                found.unknown = (f"mountd dropped changes {logged + 1}..{first_held - 1} "
                                 "that the log does not hold")
            writer.write(wire.resume(session, logged))  # what the log holds, mountd drops
            taken = max(logged, first_held - 1)
        else:
            if ours and mark is not None and not mark.fenced:
                found.unknown = (f"mountd restarted (session {mark.session} -> {session}) "
                                 "after this member was primary: what the old one made but "
                                 "never handed over is not known")
            writer.write(wire.resume("", 0))
            taken = first_held - 1
        writer.write(wire.mode(False, 0.0))
        await writer.drain()
        fenced: int | None = None
        while fenced is None or taken < fenced:
            kind, payload = await _frame(reader)
            if kind is wire.Kind.FENCED:
                fenced = wire.parse_seq(payload)
            elif kind is wire.Kind.OPS:
                try:
                    records = decode_all(payload)
                except RecordCorrupt as exc:
                    raise wire.WireError(f"bad record from mountd: {exc}") from None
                for r in records:
                    if r.lsn != taken + 1:
                        raise wire.WireError(f"mountd sent change {r.lsn}, expected {taken + 1}")
                    found.records.append((r.lsn, encode_record(r)))
                    taken = r.lsn
            else:
                raise wire.WireError(f"unexpected {kind.name} from mountd")
        if found.records:
            await save(found)
            writer.write(wire.seq_frame(wire.Kind.DURABLE, taken))
            await writer.drain()
        return found
    finally:
        with contextlib.suppress(Exception):
            writer.close()


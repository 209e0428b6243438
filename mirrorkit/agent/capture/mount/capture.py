"""The ``mount`` capture method, the agent's half: :class:`MountCapture`
reads mountd's journal from its Unix socket and emits it, in its order,
into the mirror log; it tells mountd what is durable and keeps the mount's
write lease while this member is the writable primary.

Exactly once, across agent restarts: every emitted batch ends with
``MARK "mount <host> <session> <seq>"``, in the same durable append. At start
the last such mark in the log (``last_mark``) says where to resume:

* **our host, mountd's current session**: resume after ``seq`` (mountd still
  holds everything after it: it frees only what the agent called durable);
* **our host, another session** (mountd died and restarted: what it made
  but never handed over is on the backing store only), **or no mark at
  all** (the first start: the initial mirror): fence the mount, drop what
  mountd holds, emit a full pass over the backing store, then open it;
* **another host** (this member was a replica, the backing store is exactly
  what it applied): resume after whatever mountd holds — nothing, it was
  read-only — or, if it holds changes anyway, the full pass as above.

The contract of :class:`~mirrorkit.agent.capture.base.Capture` holds; the
full pass ends with ``MARK scan-complete``, and so does an exact resume
(nothing to rescan: the replica is current once the log drains).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from mirrorkit.agent.capture.base import Emit, scan_full
from mirrorkit.agent.capture.mount import wire
from mirrorkit.agent.capture.reconcile import CaptureError
from mirrorkit.agent.log.records import Op, OpKind, RecordCorrupt
from mirrorkit.agent.log.segments import decode_all
from mirrorkit.agent.util import clock
from mirrorkit.agent.util.aio import wait_for

__all__ = ["MARK_PREFIX", "MountCapture", "MountMark", "parse_mark"]

log = logging.getLogger(__name__)

MARK_PREFIX = "mount "
_CONNECT_TIMEOUT = 5.0
_FENCE_TIMEOUT = 5.0
# Ops per emit: one group commit; mountd's frames are cut at 4 MiB.
_MAX_BATCH = 4096


@dataclass(frozen=True, slots=True)
class MountMark:
    host: str
    session: str
    seq: int

    def op(self) -> Op:
        return Op(OpKind.MARK, 0, "", target=f"{MARK_PREFIX}{self.host} {self.session} {self.seq}")


def parse_mark(target: str) -> MountMark | None:
    """The mount mark a MARK record's target holds, or None."""
    if not target.startswith(MARK_PREFIX):
        return None
    parts = target[len(MARK_PREFIX):].split(" ")
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    return MountMark(parts[0], parts[1], int(parts[2]))


LastMark = Callable[[], Awaitable[MountMark | None]]


class MountCapture:
    """Capture of one mirror tree served by ``mirrorkit-mountd`` on ``socket_path``.

    ``lease_left()`` is how long this member may still write (the writable
    primary's own lease; 0 when it may not): every ``renew_seconds`` mountd
    is given the same deadline on the shared CLOCK_BOOTTIME, so the mount is
    never writable after the member's lease ran out, even if the agent
    stalls or dies. :meth:`fence_now` (a step-down listener) closes it
    without waiting for the next renewal. ``backing`` is the tree
    (the mount's backing store) the full pass reads."""

    def __init__(self, socket_path: Path, backing: Path, exclude: list[str], host: str,
                 last_mark: LastMark, *, lease_left: Callable[[], float],
                 renew_seconds: float) -> None:
        self.socket_path = socket_path
        self.backing = backing
        self.exclude = exclude
        self.host = host
        self.last_mark = last_mark
        self.lease_left = lease_left
        self.renew_seconds = renew_seconds
        self._writer: asyncio.StreamWriter | None = None
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._fenced_at: asyncio.Future[int] | None = None
        self.session = ""
        self.emitted_seq = 0

    # -- framing -----------------------------------------------------------

    @staticmethod
    async def _frame(reader: asyncio.StreamReader) -> tuple[wire.Kind, bytes]:
        kind, length = wire.decode_header(await reader.readexactly(wire.HEADER.size))
        return kind, await reader.readexactly(length)

    async def _send(self, frame: bytes) -> None:
        assert self._writer is not None
        self._writer.write(frame)
        await self._writer.drain()

    @staticmethod
    def _records(payload: bytes) -> list[tuple[int, Op]]:
        try:
            return [(r.lsn, r.op) for r in decode_all(payload)]
        except RecordCorrupt as exc:
            raise wire.WireError(f"bad record from mountd: {exc}") from None

    # -- run -----------------------------------------------------------------

    async def run(self, emit: Emit) -> None:
        try:
            reader, self._writer = await wait_for(
                asyncio.open_unix_connection(str(self.socket_path)), _CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise CaptureError(f"mirrorkit-mountd is not answering on {self.socket_path} "
                               f"({exc}): the mount is not served, nothing can be "
                               "captured") from None
        try:
            await self._run(reader, emit)
        except (asyncio.IncompleteReadError, ConnectionError, wire.WireError) as exc:
            if self._stopping.is_set():
                return
            self.fence_now()  # a capture that failed must not leave the mount open
            raise CaptureError(f"lost mirrorkit-mountd ({exc})") from None
        except BaseException:
            self.fence_now()
            raise
        finally:
            self._stopped.set()
            if self._writer is not None:
                with contextlib.suppress(Exception):
                    self._writer.close()

    async def _run(self, reader: asyncio.StreamReader, emit: Emit) -> None:
        kind, payload = await wait_for(self._frame(reader), _CONNECT_TIMEOUT)
        if kind is not wire.Kind.HELLO:
            raise wire.WireError(f"expected HELLO from mountd, got {kind.name}")
        session, first_held, next_seq = wire.parse_hello(payload)
        self.session = session
        last = await self.last_mark()
        holds = first_held < next_seq
        if last is not None and last.host == self.host and last.session == session:
            how, after = "resume", last.seq
        elif last is not None and last.host != self.host and not holds:
            how, after = "resume", next_seq - 1
        else:
            how, after = "rescan", 0
        if how == "resume" and not first_held - 1 <= after <= next_seq - 1:
            # The log's mark names changes mountd no longer holds (or never
            # made): the log and the journal disagree; trust neither, rescan.
            log.warning("mount capture: the log resumes after %d but mountd holds %d..%d: "
                        "rescanning", after, first_held, next_seq - 1)
            how, after = "rescan", 0
        log.info("mount capture: mountd session %s, last mark %s: %s", session,
                 f"{last.host} {last.session} {last.seq}" if last else "none",
                 "resuming exactly" if how == "resume" else "fencing and rescanning the "
                 "backing store")
        await self._send(wire.resume(session if how == "resume" else "", after))
        if how == "rescan":
            # Fence first: nothing may change while the pass reads the tree.
            await self._send(wire.mode(False, 0.0))
            fenced = None
            while fenced is None:
                kind, payload = await wait_for(self._frame(reader), _FENCE_TIMEOUT)
                if kind is wire.Kind.FENCED:
                    fenced = wire.parse_seq(payload)
                elif kind is not wire.Kind.OPS:
                    raise wire.WireError(f"unexpected {kind.name} from mountd")
            # What mountd held is on the backing store: the pass covers it.
            await self._send(wire.seq_frame(wire.Kind.DURABLE, fenced))
            after = fenced
            await self._full_pass(emit, MountMark(self.host, session, fenced))
        else:
            await emit([MountMark(self.host, session, after).op(),
                        Op(OpKind.MARK, 0, "", target="scan-complete")])
        self.emitted_seq = after
        renew = asyncio.create_task(self._renew())
        try:
            await self._stream(reader, emit)
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew

    async def _full_pass(self, emit: Emit, mark: MountMark) -> None:
        loop = asyncio.get_running_loop()
        ops_iter = scan_full([self.backing], self.exclude)

        def next_batch() -> list[Op]:
            return [op for _, op in zip(range(_MAX_BATCH), ops_iter, strict=False)]

        while batch := await loop.run_in_executor(None, next_batch):
            await emit(batch)
        await emit([mark.op(), Op(OpKind.MARK, 0, "", target="scan-complete")])

    async def _renew(self) -> None:
        writable_sent = False
        while not self._stopping.is_set():
            left = self.lease_left()
            if left > 0:
                await self._send(wire.mode(True, clock.now() + left))
                writable_sent = True
            elif writable_sent:
                await self._send(wire.mode(False, 0.0))
                writable_sent = False
            await asyncio.sleep(self.renew_seconds)

    async def _stream(self, reader: asyncio.StreamReader, emit: Emit) -> None:
        while True:
            kind, payload = await self._frame(reader)
            if kind is wire.Kind.FENCED:
                if self._fenced_at is not None and not self._fenced_at.done():
                    self._fenced_at.set_result(wire.parse_seq(payload))
            elif kind is wire.Kind.OPS:
                await self._emit_frame(payload, emit)
            else:
                raise wire.WireError(f"unexpected {kind.name} from mountd")
            if self._stopping.is_set() and self._fenced_at is not None \
                    and self._fenced_at.done() and self.emitted_seq >= self._fenced_at.result():
                return

    async def _emit_frame(self, payload: bytes, emit: Emit) -> None:
        records = self._records(payload)
        if not records:
            return
        expected = self.emitted_seq + 1
        if records[0][0] != expected:
            raise wire.WireError(f"mountd sent change {records[0][0]}, expected {expected}")
        last_seq = records[-1][0]
        if last_seq - records[0][0] + 1 != len(records):
            raise wire.WireError("mountd's changes are not consecutive")
        await emit([*(op for _, op in records), MountMark(self.host, self.session, last_seq).op()])
        self.emitted_seq = last_seq
        await self._send(wire.seq_frame(wire.Kind.DURABLE, last_seq))

    def fence_now(self) -> None:
        """Step-down: tell mountd to go read-only at once (synchronous write;
        the FENCED answer is not awaited here)."""
        if self.lease_left() > 0:
            return  # still the writable primary (a switchover's on_demote still runs)
        if self._writer is not None and not self._stopped.is_set():
            with contextlib.suppress(Exception):
                self._writer.write(wire.mode(False, 0.0))

    async def fence(self) -> int | None:
        """Make the mount read-only now; the last change mountd made, or None
        when mountd did not answer within the bound."""
        if self._writer is None or self._stopped.is_set():
            return None
        self._fenced_at = asyncio.get_running_loop().create_future()
        try:
            await self._send(wire.mode(False, 0.0))
            return await wait_for(asyncio.shield(self._fenced_at), _FENCE_TIMEOUT)
        except (OSError, TimeoutError):
            return None

    async def drain(self, timeout: float = _FENCE_TIMEOUT) -> bool:
        """Fence the mount and wait until everything it made is emitted (a
        switchover's drain). False when that did not happen in ``timeout``."""
        fenced = await self.fence()
        if fenced is None:
            return False
        deadline = asyncio.get_running_loop().time() + timeout
        while self.emitted_seq < fenced:
            if self._stopped.is_set() or asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def stop(self) -> None:
        """Fence the mount, emit what it made up to the fence, and end ``run``."""
        self._stopping.set()  # _renew grants nothing more from here on
        fenced = await self.fence()
        if fenced is not None and fenced > self.emitted_seq:
            with contextlib.suppress(TimeoutError):
                await wait_for(self._stopped.wait(), _FENCE_TIMEOUT)
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        with contextlib.suppress(TimeoutError):
            await wait_for(self._stopped.wait(), _FENCE_TIMEOUT)

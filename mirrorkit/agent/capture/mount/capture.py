"""The ``mount`` capture method, the agent's half: :class:`MountCapture`
reads mountd's journal from its Unix socket and emits it, in its order,
into the mirror log; it tells mountd what is durable (and, for sync mode,
what the active backup has) and keeps the mount's write lease while this
member is the writable primary.

Exactly once, across agent restarts: every emitted batch starts with a mark
naming the mountd changes it carries (:mod:`.marks`, which says why the mark
leads). At start the newest mark in the log says where to resume:

* **our host, mountd's current session**: resume after what the log holds
  of that session (mountd still holds everything after it: it frees only
  what the agent called durable);
* **no mark at all** (the first start: the initial mirror): fence the
  mount, emit a full pass over the backing store, then call what mountd
  held durable (the pass covers it) and open the mount;
* **our host's clean stop** (``mount-fenced``) **or another host's mark**
  (this member was a replica: the backing store is what it applied), and
  mountd holds nothing: resume after whatever mountd numbers next;
* **anything else** — our own mark of another session (mountd died while
  this member was primary: what it made but never handed over is on the
  backing store only), a mark naming changes mountd no longer holds, or
  changes held that no mark explains: the log is not a faithful history of
  the backing store any more. Fence, mark the log, and ask for a checksum
  resync of every peer (``resync_peers``): it compares each replica with the
  backing store itself, so deletes, renames, owners, xattrs and links the
  log missed are found too (a full pass of writes would miss them).

The contract of :class:`~mirrorkit.agent.capture.base.Capture` holds; every
start's batch ends with ``MARK scan-complete``.

Bounds: when the log has not taken a batch for ``stall_limit`` seconds (a
full or failing disk), or logged batches wait for an acknowledgement that
has not moved for that long (sync mode: no backup and no leave from the
arbiter to run without it),
no lease is granted until it is: the mount turns read-only when the current
one runs out, and an fsync waiting on the stalled change fails with EIO
instead of hanging.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from mirrorkit.agent.capture.base import Emit, scan_full
from mirrorkit.agent.capture.mount import wire
from mirrorkit.agent.capture.mount.marks import LoggedMark, MountMark, UnreadableMark
from mirrorkit.agent.capture.reconcile import CaptureError
from mirrorkit.agent.log.records import Op, OpKind, RecordCorrupt
from mirrorkit.agent.log.segments import decode_all
from mirrorkit.agent.util import clock
from mirrorkit.agent.util.aio import wait_for

__all__ = ["MountCapture"]

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 5.0
_FENCE_TIMEOUT = 5.0
# Ops per emit: one group commit; mountd's frames are cut at 4 MiB.
_MAX_BATCH = 4096
# LSN -> mountd change pairs kept for sync acknowledgements (one per batch).
_MAX_ACK_MAP = 65536

LastMark = Callable[[], Awaitable[LoggedMark | None]]


class _Stall:
    """One bound that withholds the write lease: whether it holds now, the
    reason ``/status`` gives, and one log line per change (not per renewal)."""

    def __init__(self, reason: str, resumed: str) -> None:
        self.reason = reason
        self.resumed = resumed
        self.on = False

    def update(self, stalled: bool) -> bool:
        if stalled != self.on:
            self.on = stalled
            if stalled:
                log.error("mount capture: %s: no more write lease until it moves; the mount "
                          "turns read-only and waiting fsyncs fail with EIO", self.reason)
            else:
                log.warning("%s", self.resumed)
        return stalled


class MountCapture:
    """Capture of one mirror tree served by ``mirrorkit-mountd`` on ``socket_path``.

    ``lease_left()`` is how long this member may still write (the writable
    primary's own lease; 0 when it may not): every ``renew_seconds`` mountd
    is given the same deadline on the shared CLOCK_BOOTTIME, so the mount is
    never writable after the member's lease ran out, even if the agent
    stalls or dies. :meth:`fence_now` (a step-down listener) closes it
    without waiting for the next renewal. ``backing`` is the tree
    (the mount's backing store) the full pass reads. ``resync_peers(why)``
    asks for a checksum resync of every peer (the "lost" start);
    ``stall_limit`` bounds how long a batch may wait for the log while the
    mount stays writable (the sender: 30 s, or 4 qos if longer).
    ``acked_lsn()`` is sync mode's acknowledger (the worker's
    ``sync_acked_lsn``); :meth:`on_acked` is its listener."""

    def __init__(self, socket_path: Path, backing: Path, exclude: list[str], host: str,
                 last_mark: LastMark, *, lease_left: Callable[[], float],
                 renew_seconds: float, resync_peers: Callable[[str], object] | None = None,
                 stall_limit: float = 30.0, acked_lsn: Callable[[], int] | None = None,
                 may_log: Callable[[], bool] = lambda: True) -> None:
        self.socket_path = socket_path
        self.backing = backing
        self.exclude = exclude
        self.host = host
        self.last_mark = last_mark
        self.lease_left = lease_left
        self.renew_seconds = renew_seconds
        self.resync_peers = resync_peers
        self.stall_limit = stall_limit
        self.acked_lsn = acked_lsn
        self.may_log = may_log
        self._writer: asyncio.StreamWriter | None = None
        self._emit: Emit | None = None
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._fenced_at: asyncio.Future[int] | None = None
        self._emit_since: float | None = None  # clock.now() when the pending emit began
        # The two bounds that withhold the write lease (module docstring).
        self._log_stall = _Stall(
            f"the mirror log has not taken the mount's changes for over {stall_limit:g} s",
            "mount capture: the mirror log takes changes again: the mount's write lease "
            "resumes")
        self._ack_stall = _Stall(
            f"logged changes have waited over {stall_limit:g} s for an acknowledgement "
            "(sync mode: the backup, or the arbiter's leave to run without it)",
            "mount capture: acknowledgements move again: the mount's write lease resumes")
        # (LSN of a batch's last record, the last mountd change in it, clock.now()
        # when it was logged), oldest first: what an acknowledged LSN means in
        # mountd's numbering, and how long the oldest unacknowledged batch waits.
        self._ack_map: collections.deque[tuple[int, int, float]] = collections.deque()
        self._ack_moved_at = 0.0  # clock.now() when acknowledgements last covered a batch
        self._acked_seq = 0
        self.session = ""
        self.emitted_seq = 0
        self.how = ""  # the start's decision: resume | initial | lost

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
        self._emit = emit
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

    def _decide(self, last: LoggedMark | None, session: str, first_held: int,
                next_seq: int) -> tuple[str, int, str]:
        """(how, resume after, why): see the module docstring."""
        holds = first_held < next_seq
        if last is None:
            return "initial", 0, "no mount mark in the log: the initial full pass"
        m = last.mark
        ours = m.host == self.host
        if ours and m.session == session:
            if not first_held - 1 <= last.after <= next_seq - 1:
                return "lost", 0, (f"the log holds changes up to {last.after} of this mountd "
                                   f"session, but mountd holds {first_held}..{next_seq - 1}")
            torn = f" (the log kept {m.first}..{last.after} of a torn batch "\
                   f"{m.first}..{m.last})" if last.torn else ""
            return "resume", last.after, f"resuming after change {last.after}{torn}"
        if not holds and (m.fenced or not ours):
            whose = "our clean stop" if ours else f"{m.host}'s (we applied it as a replica)"
            return "resume", next_seq - 1, f"the newest mark is {whose} and mountd holds " \
                "nothing: the backing store is what the log says"
        if ours and not m.fenced:
            return "lost", 0, (f"mountd restarted (session {m.session} -> {session}) while "
                               "this member was primary: changes it made but never handed "
                               "over may be missing from the log")
        return "lost", 0, f"mountd holds changes {first_held}..{next_seq - 1} that no mark " \
            "of this member explains"

    async def _run(self, reader: asyncio.StreamReader, emit: Emit) -> None:
        kind, payload = await wait_for(self._frame(reader), _CONNECT_TIMEOUT)
        if kind is not wire.Kind.HELLO:
            raise wire.WireError(f"expected HELLO from mountd, got {kind.name}")
        session, first_held, next_seq = wire.parse_hello(payload)
        self.session = session
        try:
            last = await self.last_mark()
        except UnreadableMark as exc:
            # Not a first start (that would only send files whole): what the
            # log says of the mount cannot be read, so the peers are compared
            # with the backing store itself.
            last, decided = None, ("lost", 0, f"{exc}: cannot tell what the log holds")
        else:
            decided = self._decide(last, session, first_held, next_seq)
        how, after, why = decided
        self.how = how
        (log.info if how == "resume" else log.warning)(
            "mount capture: mountd session %s, newest mark %s: %s%s", session,
            "none" if last is None else last.mark.op().target, why,
            "" if how == "resume" else "; fencing the mount first")
        await self._send(wire.resume(session if how == "resume" else "", after))
        if how != "resume":
            # Fence first: nothing may change while we make the log whole.
            after = await self._fence_for_start(reader)
            if how == "initial":
                await self._full_pass(emit)
            if how == "lost" and self.resync_peers is not None:
                # Persisted by the sender before anything is released: a
                # restart after this start resumes exactly and would not know.
                self.resync_peers(why)
            await emit([MountMark(self.host, session, after + 1, after).op(),
                        Op(OpKind.MARK, 0, "", target="scan-complete")])
            # Only now is what mountd held covered in the log (by the pass,
            # or by the peers' resync against the backing store): release it.
            await self._send(wire.seq_frame(wire.Kind.DURABLE, after))
        else:
            start_lsn = await emit([MountMark(self.host, session, after + 1, after).op(),
                                    Op(OpKind.MARK, 0, "", target="scan-complete")])
            # Changes up to `after` are in the log already, and a sync fsync
            # may still wait for them (mountd keeps its ACKED across agent
            # connections, and this capture has not told it anything yet).
            if isinstance(start_lsn, int):
                self._ack_map.append((start_lsn, after, clock.now()))
        self.emitted_seq = after
        self._acked_seq = 0
        if self.acked_lsn is not None:
            self.on_acked(self.acked_lsn())
        renew = asyncio.create_task(self._renew())
        try:
            await self._stream(reader, emit)
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew

    async def _fence_for_start(self, reader: asyncio.StreamReader) -> int:
        await self._send(wire.mode(False, 0.0))
        while True:
            kind, payload = await wait_for(self._frame(reader), _FENCE_TIMEOUT)
            if kind is wire.Kind.FENCED:
                return wire.parse_seq(payload)
            if kind is not wire.Kind.OPS:
                raise wire.WireError(f"unexpected {kind.name} from mountd")

    async def _full_pass(self, emit: Emit) -> None:
        loop = asyncio.get_running_loop()
        ops_iter = scan_full([self.backing], self.exclude)

        def next_batch() -> list[Op]:
            return [op for _, op in zip(range(_MAX_BATCH), ops_iter, strict=False)]

        while batch := await loop.run_in_executor(None, next_batch):
            await emit(batch)

    async def _renew(self) -> None:
        writable_sent = False
        while not self._stopping.is_set():
            left = self.lease_left()
            if left > 0 and (self._emit_stalled() or self._ack_stalled()):
                left = 0.0
            if left > 0:
                await self._send(wire.mode(True, clock.now() + left))
                writable_sent = True
            elif writable_sent:
                await self._send(wire.mode(False, 0.0))
                writable_sent = False
            await asyncio.sleep(self.renew_seconds)

    def _emit_stalled(self) -> bool:
        since = self._emit_since
        return self._log_stall.update(since is not None
                                      and clock.now() - since > self.stall_limit)

    def lease_withheld(self) -> str | None:
        """Why no write lease is granted although the member may write (the
        mount is read-only for that reason), or None. For ``/status``."""
        return next((s.reason for s in (self._log_stall, self._ack_stall) if s.on), None)

    def _ack_stalled(self) -> bool:
        """A logged batch waits for its acknowledgement (sync mode: the active
        backup, or the arbiter's leave to run without it) and none has moved
        for longer than ``stall_limit``. Sync mode pauses commits up to the
        QoS timeout and then either runs without the backup or, when the
        arbiter does not allow that (it may have told the backup the primary
        is gone), would pause for ever while this primary keeps its lease:
        past the limit the mount turns read-only and the waiting fsyncs fail
        with EIO (never acknowledged), until the acknowledgements move again."""
        # Waiting since the oldest batch was logged or, if later, since the
        # acknowledgements last moved: a backup that is slow but moving is
        # waited for (fsync is slow then, not failed).
        waiting = max(self._ack_map[0][2], self._ack_moved_at) \
            if self._ack_map and self.acked_lsn is not None else None
        return self._ack_stall.update(waiting is not None
                                      and clock.now() - waiting > self.stall_limit)

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

    async def _emit_frame(self, payload: bytes, emit: Emit) -> None:
        records = self._records(payload)
        if not records:
            return
        expected = self.emitted_seq + 1
        first_seq, last_seq = records[0][0], records[-1][0]
        if first_seq != expected:
            raise wire.WireError(f"mountd sent change {first_seq}, expected {expected}")
        if last_seq - first_seq + 1 != len(records):
            raise wire.WireError("mountd's changes are not consecutive")
        self._emit_since = clock.now()
        try:
            lsn = await emit([MountMark(self.host, self.session, first_seq, last_seq).op(),
                              *(op for _, op in records)])
        finally:
            self._emit_since = None
        self.emitted_seq = last_seq
        if isinstance(lsn, int):
            if len(self._ack_map) >= _MAX_ACK_MAP:
                self._ack_map.popleft()  # bounded; an older entry only delays an ACKED
            self._ack_map.append((lsn, last_seq, clock.now()))
        await self._send(wire.seq_frame(wire.Kind.DURABLE, last_seq))
        if self.acked_lsn is not None:
            # The acknowledger may already be past this batch (listeners fire
            # only when the value moves): never leave a sync fsync waiting.
            self.on_acked(self.acked_lsn())

    def on_acked(self, lsn: int) -> None:
        """The active backup (sync mode's acknowledger) has everything up to
        ``lsn``: tell mountd which of its changes that covers (a sync fsync
        waits for it). Called on the loop; never blocks."""
        seq = self._acked_seq
        covered = bool(self._ack_map) and self._ack_map[0][0] <= lsn
        while self._ack_map and self._ack_map[0][0] <= lsn:
            seq = max(seq, self._ack_map.popleft()[1])
        if covered:
            self._ack_moved_at = clock.now()
        if not self._ack_map and self._ack_stall.on:
            self._ack_stalled()  # says the lease resumes; the next renewal grants it
        if seq > self._acked_seq and self._writer is not None and not self._stopped.is_set():
            self._acked_seq = seq
            with contextlib.suppress(Exception):
                self._writer.write(wire.seq_frame(wire.Kind.ACKED, seq))

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
        """Fence the mount, emit what it made up to the fence, mark the clean
        stop in the log (``mount-fenced``, only while ``may_log()``: a member
        that stepped down — a switchover, a higher term — must not add a
        record after its last one, which would be a divergent tail), and end
        ``run``."""
        self._stopping.set()  # _renew grants nothing more from here on
        fenced = await self.fence()
        if fenced is not None:
            deadline = asyncio.get_running_loop().time() + _FENCE_TIMEOUT
            while self.emitted_seq < fenced and not self._stopped.is_set() \
                    and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            if self.emitted_seq >= fenced and self._emit is not None \
                    and not self._stopped.is_set() and self.may_log():
                # Every batch up to the fence is logged and none can follow it.
                with contextlib.suppress(Exception):
                    await wait_for(self._emit([MountMark(self.host, self.session, fenced + 1,
                                                         fenced, fenced=True).op()]),
                                   _FENCE_TIMEOUT)
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        with contextlib.suppress(TimeoutError):
            await wait_for(self._stopped.wait(), _FENCE_TIMEOUT)

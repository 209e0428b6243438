"""A real ``mirrorkit-mountd`` for tests: a FUSE mount in tmp_path (needs root
and /dev/fuse) and an asyncio :class:`MountCapture` driving it, whose
``emit`` keeps the ops (the "log") and applies them to a replica with the
real :class:`Applier`, as a backup would."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrorkit.agent.apply.applier import Applier
from mirrorkit.agent.capture.mount.capture import MountCapture
from mirrorkit.agent.capture.mount.marks import LoggedMark, find_last_mark
from mirrorkit.agent.log.records import Op, OpKind, Record

__all__ = ["Harness", "Mountd", "needs_fuse"]

needs_fuse = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"),
    reason="the mount capture needs root and /dev/fuse (FUSE)")


def _mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == str(path) for line in mounts)


class Mountd:
    """One mountd process serving ``mnt`` over ``backing``."""

    def __init__(self, tmp: Path, *, sync: bool = False, queue_mib: int = 64,
                 backing: Path | None = None) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.backing = backing or tmp / "backing"
        self.mnt = tmp / "mnt"
        self.socket = tmp / "mountd.sock"
        self.logfile = tmp / "mountd.log"
        self.backing.mkdir(exist_ok=True)
        self.mnt.mkdir(exist_ok=True)
        self.sync = sync
        self.queue_mib = queue_mib
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [sys.executable, "-m", "mirrorkit.agent.capture.mount.mountd", "--mirror", "t",
                "--backing", str(self.backing), "--mountpoint", str(self.mnt),
                "--socket", str(self.socket), "--queue-mib", str(self.queue_mib)]
        if self.sync:
            args.append("--sync")
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        log = open(self.logfile, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while not (self.socket.exists() and _mounted(self.mnt)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("mountd did not come up:\n" + self.logfile.read_text())
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the mount stays, dead (ENOTCONN), as after a crash."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if _mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False,
                           timeout=30)


class ListLog:
    """A list of ops as a log for find_last_mark (LSN = position + 1)."""

    def __init__(self, ops: list[Op]) -> None:
        self.ops = ops

    @property
    def first_lsn(self) -> int:
        return 1

    @property
    def last_lsn(self) -> int:
        return len(self.ops)

    def read(self, from_lsn: int, max_bytes: int = 0) -> list[Record]:
        return [Record(i + 1, 1, op) for i, op in enumerate(self.ops[from_lsn - 1:],
                                                          start=from_lsn - 1)]


class Harness:
    """A MountCapture in a thread of its own (its own event loop), emitting
    into ``log`` and applying to ``replica``; ``writable`` drives the lease."""

    def __init__(self, mountd: Mountd, replica: Path, *, host: str = "node1",
                 lease: float = 1.0, stall_limit: float = 30.0,
                 renew_seconds: float = 0.1) -> None:
        self.mountd = mountd
        self.replica = replica
        replica.mkdir(exist_ok=True)
        self.host = host
        self.lease = lease
        self.log: list[Op] = []
        self.stall_limit = stall_limit
        self.renew_seconds = renew_seconds
        # Sync mode's acknowledger: everything logged, or at most this LSN.
        self.acked_upto: int | None = None
        self.gate = threading.Event()  # cleared: the "log" stalls (a full disk)
        self.gate.set()
        self.resyncs: list[str] = []  # why the capture asked for a resync of the peers
        self.writable = True
        self.applier = Applier([replica], label="test-apply")
        self.loop = asyncio.new_event_loop()
        self.capture: MountCapture | None = None
        self.task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def _emit(self, ops: list[Op]) -> int:
        while not self.gate.is_set():
            await asyncio.sleep(0.01)
        first = len(self.log) + 1
        records = [Record(first + i, 1, op) for i, op in enumerate(ops)]
        await asyncio.to_thread(self.applier.apply_batch, records)
        # Logged once applied: a test that sees an op in ``log`` (barrier())
        # finds it on the replica too (appending first raced the apply).
        self.log.extend(ops)
        return len(self.log)

    def _acked_lsn(self) -> int:
        return len(self.log) if self.acked_upto is None else min(len(self.log), self.acked_upto)

    async def _last_mark(self) -> LoggedMark | None:
        # As the primary's worker asks it (stream/sender.py): strict.
        return find_last_mark(ListLog(self.log), strict=True)

    def start(self) -> None:
        self.error = None
        self.task = None

        async def go() -> None:
            self.capture = MountCapture(
                self.mountd.socket, self.mountd.backing, [], self.host, self._last_mark,
                lease_left=lambda: self.lease if self.writable else 0.0,
                renew_seconds=self.renew_seconds,
                resync_peers=self.resyncs.append, stall_limit=self.stall_limit,
                acked_lsn=self._acked_lsn)
            self.task = asyncio.current_task()
            try:
                await self.capture.run(self._emit)
            except BaseException as exc:
                self.error = exc
                raise
        asyncio.run_coroutine_threadsafe(go(), self.loop)
        deadline = time.monotonic() + 20
        while self.task is None:
            assert time.monotonic() < deadline, "capture did not start"
            time.sleep(0.01)

    def call(self, coro_fn, timeout: float = 30):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro_fn(), self.loop).result(timeout)

    def stop(self) -> None:
        if self.capture is not None and self.task is not None and not self.task.done():
            self.call(self.capture.stop)

    def crash(self) -> None:
        """The agent dies: its task is cancelled, no fence, no goodbye."""
        if self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
            deadline = time.monotonic() + 10
            while not self.task.done():
                assert time.monotonic() < deadline
                time.sleep(0.01)
            if self.capture is not None and self.capture._writer is not None:
                self.loop.call_soon_threadsafe(self.capture._writer.close)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.crash()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        with contextlib.suppress(OSError):  # a cancelled apply may still hold it
            self.applier.close()

    def wait_writable(self, timeout: float = 20) -> None:
        probe = self.mountd.mnt / ".probe"
        deadline = time.monotonic() + timeout
        while True:
            try:
                probe.write_bytes(b"")
                probe.unlink()
                return
            except OSError:
                assert time.monotonic() < deadline, "the mount never became writable"
                time.sleep(0.05)

    def barrier(self, timeout: float = 30) -> None:
        """Until everything done on the mount so far is emitted: a marker
        file's creation and removal are the last ops, and the log is in order."""
        self._barriers = getattr(self, "_barriers", 0) + 1
        name = f".barrier-{self._barriers}"
        (self.mountd.mnt / name).write_bytes(b"")
        (self.mountd.mnt / name).unlink()
        deadline = time.monotonic() + timeout
        while not any(op.kind is OpKind.UNLINK and op.path == name for op in list(self.log)):
            assert time.monotonic() < deadline, f"{name} never reached the log"
            assert self.error is None, f"capture failed: {self.error!r}"
            time.sleep(0.02)


@contextlib.contextmanager
def running(tmp: Path, sync: bool = False, **kw: object) -> Iterator[tuple[Mountd, Harness]]:
    mountd = Mountd(tmp, sync=sync)
    mountd.start()
    harness = Harness(mountd, tmp / "replica", **kw)  # type: ignore[arg-type]
    try:
        yield mountd, harness
    finally:
        try:
            harness.close()
        finally:
            mountd.stop()

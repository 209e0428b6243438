"""The ``mount`` capture on a real FUSE mount (issue 9): mirrorkit-mountd as
its own process, the agent's MountCapture on its socket, a replica applied
from what it emits with the real Applier.

Nothing asserts speed; every wait is a poll with a generous deadline.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from mountd_proc import Mountd, needs_fuse, running  # type: ignore[import-not-found]

from mirrorkit.agent.log.records import Op, OpKind

pytestmark = [pytest.mark.integration, needs_fuse]


def tree(root: Path) -> dict[str, tuple[int, int, int, int, bytes | str]]:
    """path -> (type+mode, uid, gid, mtime ns, contents or link target)."""
    out: dict[str, tuple[int, int, int, int, bytes | str]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            full = Path(dirpath, name)
            st = full.lstat()
            rel = str(full.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                body: bytes | str = os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                body = full.read_bytes()
            else:
                body = b""
            mtime = 0 if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns  # dir mtimes: not kept
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, mtime, body)
    return out


def test_the_mount_is_read_only_until_the_agent_grants_it(tmp_path: Path) -> None:
    mountd = Mountd(tmp_path)
    mountd.start()
    try:
        with pytest.raises(OSError) as err:
            (mountd.mnt / "f").write_bytes(b"x")
        assert err.value.errno == errno.EROFS
        assert not (mountd.backing / "f").exists()
    finally:
        mountd.stop()


def test_changes_reach_the_replica_in_order_with_their_metadata(tmp_path: Path) -> None:
    with running(tmp_path) as (mountd, h):
        h.start()
        h.wait_writable()
        m = mountd.mnt
        (m / "d").mkdir(mode=0o750)
        (m / "d" / "a").write_bytes(b"hello")
        os.chmod(m / "d" / "a", 0o640)
        os.chown(m / "d" / "a", 1000, 1001)
        (m / "d" / "a").rename(m / "b")
        os.symlink("b", m / "s")
        with open(m / "big", "wb") as f:
            f.truncate(3 * 1024 * 1024)
            f.seek(1024 * 1024)
            f.write(b"z" * 100_000)
            os.fsync(f.fileno())
        os.utime(m / "b", ns=(1_000_000_000, 2_000_000_000))
        h.barrier()
        assert tree(h.replica) == tree(mountd.backing)
        assert (h.replica / "b").stat().st_uid == 1000
        seen = [(op.kind, op.path) for op in h.log]
        assert (seen.index((OpKind.MKDIR, "d")) < seen.index((OpKind.CREATE, "d/a"))
                < seen.index((OpKind.WRITE, "d/a")) < seen.index((OpKind.CHOWN, "d/a"))
                < seen.index((OpKind.RENAME, "d/a")) < seen.index((OpKind.SYMLINK, "s")))


def test_concurrent_writers_leave_a_replica_equal_to_the_primary(tmp_path: Path) -> None:
    with running(tmp_path) as (mountd, h):
        h.start()
        h.wait_writable()

        def writer(n: int) -> None:
            fd = os.open(mountd.mnt / f"w{n}", os.O_CREAT | os.O_WRONLY, 0o644)
            try:
                for i in range(200):
                    os.pwrite(fd, bytes([n]) * 512, (i * 7919 % 256) * 512)
                    if i % 50 == 0:
                        os.fdatasync(fd)
            finally:
                os.close(fd)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        h.barrier()
        assert tree(h.replica) == tree(mountd.backing)


def test_fence_makes_writes_fail_at_once_and_nothing_after_it_changes(tmp_path: Path) -> None:
    with running(tmp_path) as (mountd, h):
        h.start()
        h.wait_writable()
        (mountd.mnt / "before").write_bytes(b"1")
        h.writable = False  # the agent stops renewing...
        assert h.capture is not None
        last = h.call(h.capture.fence)  # ...and fences (a demotion)
        assert last is not None and last >= 1
        with pytest.raises(OSError) as err:
            (mountd.mnt / "after").write_bytes(b"2")
        assert err.value.errno == errno.EROFS
        assert not (mountd.backing / "after").exists()
        assert (mountd.mnt / "before").read_bytes() == b"1"  # reads go on


def test_writes_fail_once_the_agent_is_gone_longer_than_its_lease(tmp_path: Path) -> None:
    with running(tmp_path, lease=0.5) as (mountd, h):
        h.start()
        h.wait_writable()
        h.crash()
        deadline_ok = False
        for _ in range(200):
            try:
                (mountd.mnt / "x").write_bytes(b"x")
            except OSError as exc:
                assert exc.errno == errno.EROFS
                deadline_ok = True
                break
            threading.Event().wait(0.05)
        assert deadline_ok, "writes still succeed long after the agent's lease ran out"


def test_a_restarted_agent_resumes_exactly_where_the_log_ends(tmp_path: Path) -> None:
    with running(tmp_path, lease=30) as (mountd, h):
        h.start()
        h.wait_writable()
        for i in range(20):
            (mountd.mnt / f"f{i}").write_bytes(bytes([i]) * 100)
        h.barrier()
        h.crash()  # the lease (30 s) still runs: writes go on into mountd's journal
        for i in range(20, 40):
            (mountd.mnt / f"f{i}").write_bytes(bytes([i]) * 100)
        before = len(h.log)
        h.start()  # a new agent: the same log, the same mountd session
        h.barrier()
        new = [op for op in h.log[before:] if op.kind is not OpKind.MARK]
        created = [op.path for op in new if op.kind is OpKind.CREATE
                   and not op.path.startswith(".")]
        assert created == [f"f{i}" for i in range(20, 40)]  # nothing twice, nothing lost
        assert tree(h.replica) == tree(mountd.backing)


def test_a_dead_mountd_is_enotconn_then_the_peers_are_resynced(tmp_path: Path) -> None:
    with running(tmp_path, lease=30) as (mountd, h):
        h.start()
        h.wait_writable()
        (mountd.mnt / "kept").write_bytes(b"k")
        h.barrier()
        mountd.kill()
        with pytest.raises(OSError) as err:
            (mountd.mnt / "kept").read_bytes()
        assert err.value.errno == errno.ENOTCONN
        # What the dead mountd made but never handed over lives only on the
        # backing store: stand-in, a file written there behind its back.
        (mountd.backing / "unlogged").write_bytes(b"u")
        h.crash()
        mountd.start()  # clears the dead mount first
        h.start()
        h.wait_writable()
        h.barrier()
        # The log cannot say what the dead mountd changed: not a pass of
        # writes (it would miss deletes, renames, owners), a checksum resync
        # of every peer against the backing store (real agents:
        # test_mount_agents.py).
        assert len(h.resyncs) == 1 and "mountd restarted" in h.resyncs[0]
        assert not (h.replica / "unlogged").exists()
        (mountd.mnt / "after").write_bytes(b"a")  # and the mount works on
        h.barrier()
        assert (h.replica / "after").read_bytes() == b"a"
        assert any(op.kind is OpKind.MARK and op.target == "scan-complete" for op in h.log)


def test_a_mark_this_version_cannot_read_is_a_lost_start_not_a_first_one(
        tmp_path: Path) -> None:
    """Review finding 13: the newest mount mark in the log is in a format this
    version does not read (another release, damage). Taking it for "no mark"
    would make a first start, which only sends files whole (no deletes,
    renames, owners); it is a "lost" start: the peers are resynced against
    the backing store, and the mount works on."""
    with running(tmp_path, lease=30) as (mountd, h):
        h.log.append(Op(OpKind.MARK, 0, "", target="mount node1 s-old 9"))  # an older format
        h.start()
        h.wait_writable()
        assert h.capture is not None and h.capture.how == "lost"
        assert len(h.resyncs) == 1 and "is not one this version reads" in h.resyncs[0]
        (mountd.mnt / "after").write_bytes(b"a")
        h.barrier()
        assert (h.replica / "after").read_bytes() == b"a"


def test_links_xattrs_and_holes_reach_the_replica(tmp_path: Path) -> None:
    with running(tmp_path) as (mountd, h):
        h.start()
        h.wait_writable()
        m = mountd.mnt
        (m / "f").write_bytes(b"x" * 200_000)
        os.link(m / "f", m / "g")
        os.setxattr(m / "f", "user.note", b"kept")
        os.setxattr(m / "f", "user.gone", b"soon")
        os.removexattr(m / "f", "user.gone")
        fd = os.open(m / "f", os.O_WRONLY)
        try:
            # punch a hole (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
            assert os.system(f"fallocate -p -o 4096 -l 65536 {m / 'f'}") == 0
        finally:
            os.close(fd)
        h.barrier()
        assert tree(h.replica) == tree(mountd.backing)
        r = h.replica
        assert (r / "f").stat().st_ino == (r / "g").stat().st_ino  # one file, two names
        assert os.getxattr(r / "f", "user.note") == b"kept"
        assert "user.gone" not in os.listxattr(r / "f")
        assert (r / "f").read_bytes()[4096:4096 + 65536] == bytes(65536)
        assert any(op.kind is OpKind.FALLOCATE for op in h.log)


def test_touch_sets_the_time_now_not_1970(tmp_path: Path) -> None:
    with running(tmp_path) as (mountd, h):
        h.start()
        h.wait_writable()
        (mountd.mnt / "t").write_bytes(b"t")
        os.utime(mountd.mnt / "t", ns=(10**9, 10**9))
        assert os.system(f"touch {mountd.mnt / 't'}") == 0  # utimensat(UTIME_NOW)
        h.barrier()
        assert (mountd.backing / "t").stat().st_mtime_ns > 10**18  # 2001 or later
        assert tree(h.replica) == tree(mountd.backing)


def test_a_rejoining_member_quarantines_what_its_mount_never_logged(tmp_path: Path) -> None:
    """The agent dies within its lease; the application's writes go on into
    mountd's journal and the backing store. Starting as a replica, the
    member takes them (fencing the mount), writes them to quarantine with a
    report, and only then has mountd drop them (stream/mount_rejoin.py)."""
    import asyncio

    from mirrorkit.agent.stream.mount_rejoin import MountRejoin

    with running(tmp_path, lease=30) as (mountd, h):
        h.start()
        h.wait_writable()
        m = mountd.mnt
        (m / "a").write_bytes(b"a")
        h.barrier()
        h.crash()
        (m / "late").write_bytes(b"written after the agent died")
        (m / "a").rename(m / "a2")
        last = h.call(h._last_mark)
        found: list[str] = []
        rejoin = MountRejoin(mountd.socket, "t", "node1", tmp_path / "quarantine",
                             lambda: last, found.append)
        asyncio.run(rejoin.check())
        assert len(found) == 1 and "never reached the log" in found[0], found
        assert rejoin.report is not None
        report = (rejoin.report / "REPORT.txt").read_text()
        assert "'late'" in report and "RENAME tree 0 'a' -> a2" in report
        assert b"written after the agent died" in (rejoin.report / "changes.log").read_bytes()
        with pytest.raises(OSError) as err:  # fenced: the dead agent's lease no longer counts
            (m / "more").write_bytes(b"m")
        assert err.value.errno == errno.EROFS
        # A restart before the primary's resync completed: mountd dropped
        # them (taken once), but the resync is still owed and asked again.
        again: list[str] = []
        second = MountRejoin(mountd.socket, "t", "node1", tmp_path / "quarantine",
                             lambda: last, again.append)
        asyncio.run(second.check())
        assert len(again) == 1 and "owed since an earlier start" in again[0], again
        second.resync_done()  # the receiver calls it when the checksum resync ends
        third: list[str] = []
        asyncio.run(MountRejoin(mountd.socket, "t", "node1", tmp_path / "quarantine",
                                lambda: last, third.append).check())
        assert third == []  # nothing held, nothing owed


def write_and_fsync_in_a_thread(path: Path) -> tuple[dict[str, int], threading.Thread]:
    """Writes "a row" to ``path`` and fsyncs it in a thread, joined within
    60 s: {"ok": 1} or {"errno": N}, and the thread (alive: it hung)."""
    result: dict[str, int] = {}

    def write_and_fsync() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"a row")
            os.fsync(fd)
            result["ok"] = 1
        except OSError as exc:
            result["errno"] = exc.errno or 0
        finally:
            os.close(fd)

    t = threading.Thread(target=write_and_fsync, daemon=True)
    t.start()
    t.join(60)
    return result, t


def test_a_stalled_log_closes_the_mount_and_fails_the_waiting_fsync(tmp_path: Path) -> None:
    """The log stops taking batches (say, a full disk): past the stall limit
    no lease is granted, the mount turns read-only when the current one ends
    and the fsync waiting for its change fails with EIO instead of hanging."""
    with running(tmp_path, lease=1.0, stall_limit=0.5) as (mountd, h):
        h.start()
        h.wait_writable()
        h.gate.clear()
        result, t = write_and_fsync_in_a_thread(mountd.mnt / "db")
        assert not t.is_alive(), "the fsync hung on a stalled log"
        assert result == {"errno": errno.EIO}
        with pytest.raises(OSError) as err:
            (mountd.mnt / "more").write_bytes(b"m")
        assert err.value.errno == errno.EROFS
        h.gate.set()  # the log takes changes again: so does the mount
        h.wait_writable()
        h.barrier()
        assert (h.replica / "db").read_bytes() == b"a row"


def test_an_acknowledgement_that_never_comes_closes_the_mount_and_fails_the_fsync(
        tmp_path: Path) -> None:
    """mountd --sync, the acknowledger stuck (no backup, and no leave from
    the arbiter to run without it: review finding 9, where the primary kept
    its lease and the fsync waited for ever): past the stall limit no lease
    is granted, the waiting fsync fails with EIO (never acknowledged), new
    writes get EROFS; once acknowledgements move, the mount is writable
    again and what was written is in the log."""
    with running(tmp_path, sync=True, lease=1.0, stall_limit=0.5) as (mountd, h):
        h.start()
        h.wait_writable()
        h.acked_upto = len(h.log)  # nothing more is acknowledged
        result, t = write_and_fsync_in_a_thread(mountd.mnt / "db")
        assert not t.is_alive(), "the fsync hung on an acknowledgement that never came"
        assert result == {"errno": errno.EIO}
        assert h.capture is not None  # what /status shows as capture.write_lease_withheld
        assert "waited over 0.5 s for an acknowledgement" in (h.capture.lease_withheld() or "")
        with pytest.raises(OSError) as err:
            (mountd.mnt / "more").write_bytes(b"m")
        assert err.value.errno == errno.EROFS
        h.acked_upto = None  # the backup is back (or the arbiter allowed running alone)
        assert h.capture is not None
        h.loop.call_soon_threadsafe(h.capture.on_acked, 10**9)
        h.wait_writable()
        assert h.capture.lease_withheld() is None
        h.barrier()
        assert (h.replica / "db").read_bytes() == b"a row"


def test_step_down_fences_at_once_not_at_the_next_renewal(tmp_path: Path) -> None:
    """fence_now (the sender's step-down listener) closes the mount the
    moment the member stops being the writable primary: the lease mountd
    holds (minutes here) and the next renewal (a minute away) do not count."""
    with running(tmp_path, lease=120, renew_seconds=60) as (mountd, h):
        h.start()
        h.wait_writable()
        h.writable = False
        assert h.capture is not None
        h.loop.call_soon_threadsafe(h.capture.fence_now)
        deadline = time.monotonic() + 20
        while True:
            try:
                (mountd.mnt / "x").write_bytes(b"x")
            except OSError as exc:
                assert exc.errno == errno.EROFS
                break
            assert time.monotonic() < deadline, "the mount stayed writable after step-down"
            time.sleep(0.05)


def test_drain_returns_once_everything_made_on_the_mount_is_logged(tmp_path: Path) -> None:
    """A switchover's drain (sender.drain_capture): fence, then every change
    made before the fence is in the log when drain returns — no barrier."""
    with running(tmp_path, lease=30) as (mountd, h):
        h.start()
        h.wait_writable()
        for i in range(50):
            (mountd.mnt / f"d{i}").write_bytes(b"d" * i)
        assert h.capture is not None
        h.writable = False  # the switchover holds writes (lease_left is 0), then drains
        assert h.call(h.capture.drain) is True
        created = {op.path for op in h.log if op.kind is OpKind.CREATE}
        assert {f"d{i}" for i in range(50)} <= created
        with pytest.raises(OSError) as err:
            (mountd.mnt / "late").write_bytes(b"l")
        assert err.value.errno == errno.EROFS


def test_a_sync_fsync_waiting_across_a_capture_restart_returns(tmp_path: Path) -> None:
    """mountd --sync: a change is logged but not yet acknowledged when the
    capture restarts (same mountd session, lease still running). The new
    capture tells mountd what the acknowledger covers at once; the fsync
    does not wait for some later write."""
    with running(tmp_path, sync=True, lease=30) as (mountd, h):
        h.start()
        h.wait_writable()
        h.acked_upto = len(h.log)  # the backup stops acknowledging
        done = threading.Event()

        def write_and_fsync() -> None:
            with open(mountd.mnt / "db", "wb") as f:
                f.write(b"committed")
                f.flush()
                os.fsync(f.fileno())
            done.set()

        t = threading.Thread(target=write_and_fsync, daemon=True)
        t.start()
        deadline = time.monotonic() + 30
        while not any(op.kind is OpKind.WRITE and op.path == "db" for op in list(h.log)):
            assert time.monotonic() < deadline, "the write never reached the log"
            time.sleep(0.02)
        assert not done.wait(0.5), "a sync fsync returned before it was acknowledged"
        h.crash()
        h.acked_upto = None  # acknowledged now (the backup caught up meanwhile)
        h.start()
        assert done.wait(30), "the fsync still waits after the restart"
        t.join(10)

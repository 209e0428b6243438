"""Minimal passthrough file systems for ``bench/fuse_binding.py`` (issue 9).

One per binding, each serving a backing directory and appending every
mutating op, as a :class:`mirrorkit.agent.log.records.Op`, to a bounded
in-memory queue that a consumer thread drains and encodes as mirror-log
records (``encode_record``: the CRC and copy a real logger pays). ``fsync``
also waits until the consumer has taken everything queued before it: the
hand-off a ``mode: sync`` mount pays before it asks the backup (no network
here). This is a measurement prototype, not the mount capture: no lookup
counting, paths of an open file are those at open time (a rename of a parent
directory while a file is open is rewritten by prefix, nothing smarter), no
ownership of created files from the caller's credentials.

Run as ``python bench/_fuse_fs.py BINDING BACKING MOUNTPOINT STATS_JSON
[--single] [--option O ...]``; it serves until unmounted, then writes its
counters to STATS_JSON. BINDING: pyfuse3, pyfuse3-asyncio, llfuse, mfusepy.

Op kinds the record format has no kind for yet (link, chown, xattr,
fallocate) are logged as ``MARK`` ops whose ``target`` names them, so their
cost is counted; the mount capture needs real kinds for them.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import queue
import stat
import sys
import threading
import time
from collections import Counter
from typing import Any

from mirrorkit.agent.log.records import Op, OpKind, Record, encode_record

_STRIP = os.O_APPEND | getattr(os, "O_DIRECT", 0)  # the kernel resolves both


class OpLog:
    """A bounded queue of ops and a consumer that encodes them (the logger)."""

    def __init__(self, maxsize: int = 4096, ack_s: float = 0.0) -> None:
        self.ack_s = ack_s  # a stand-in for the backup's acknowledgement in mode: sync
        self.q: queue.Queue[tuple[int, Op] | None] = queue.Queue(maxsize)
        self.lock = threading.Lock()
        self.cond = threading.Condition()
        self.lsn = 0
        self.done = 0
        self.kinds: Counter[str] = Counter()
        self.bytes = 0
        self.max_write = 0
        self.writes = 0
        self.barriers = 0
        self.thread = threading.Thread(target=self._consume, daemon=True)
        self.thread.start()

    def put(self, op: Op) -> None:
        with self.lock:  # LSN order == queue order, as the real log needs
            self.lsn += 1
            self.q.put((self.lsn, op))  # blocks when full: back-pressure
        if op.kind is OpKind.WRITE:
            self.writes += 1
            self.max_write = max(self.max_write, len(op.data))

    def mark(self, what: str, path: str) -> None:
        self.put(Op(OpKind.MARK, 0, path, target=what))

    def barrier(self) -> None:
        """Wait until the logger has everything queued so far (fsync's hand-off)."""
        self.barriers += 1
        with self.lock:
            want = self.lsn
        with self.cond:
            self.cond.wait_for(lambda: self.done >= want)
        if self.ack_s:
            time.sleep(self.ack_s)  # blocks this handler's thread, as a blocking wait would

    def _consume(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            lsn, op = item
            self.bytes += len(encode_record(Record(lsn, 1, op)))
            self.kinds[op.kind.name if op.kind is not OpKind.MARK else op.target] += 1
            with self.cond:
                self.done = lsn
                self.cond.notify_all()

    def close(self) -> dict[str, Any]:
        self.q.put(None)
        self.thread.join()
        return {"ops": self.lsn, "encoded_bytes": self.bytes, "kinds": dict(self.kinds),
                "writes": self.writes, "max_write": self.max_write, "fsyncs": self.barriers}


_libc = ctypes.CDLL(None, use_errno=True)


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, ctypes.c_int64(offset), ctypes.c_int64(length)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


# -- low level (inode) API: pyfuse3 and llfuse ------------------------------------


class LowLevelCore:
    """The passthrough logic shared by the pyfuse3 and llfuse adapters."""

    def __init__(self, backing: str, log: OpLog, mod: Any) -> None:
        self.root = os.path.realpath(backing)
        self.log = log
        self.mod = mod
        self.root_ino = os.lstat(self.root).st_ino
        self.paths: dict[int, str] = {mod.ROOT_INODE: ""}
        self.fhs: dict[int, str] = {}  # fd -> relative path (at open)
        self.dirs: dict[int, list[tuple[bytes, int]]] = {}
        self.next_dir = 1
        self.glock = threading.Lock()  # llfuse workers share the tables

    def err(self, exc: OSError) -> Exception:
        return self.mod.FUSEError(exc.errno or errno.EIO)

    def full(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def rel(self, parent: int, name: bytes) -> str:
        base = self.paths[parent]
        n = os.fsdecode(name)
        return f"{base}/{n}" if base else n

    def ino(self, st: os.stat_result) -> int:
        return int(self.mod.ROOT_INODE) if st.st_ino == self.root_ino else st.st_ino

    def attr(self, st: os.stat_result) -> Any:
        a = self.mod.EntryAttributes()
        a.st_ino = self.ino(st)
        a.generation = 0
        a.entry_timeout = 1.0
        a.attr_timeout = 1.0
        for f in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
                  "st_blksize", "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
            setattr(a, f, getattr(st, f))
        return a

    def entry(self, rel: str) -> Any:
        try:
            st = os.lstat(self.full(rel))
        except OSError as e:
            raise self.err(e) from None
        with self.glock:
            self.paths[self.ino(st)] = rel
        return self.attr(st)

    def lookup(self, parent: int, name: bytes) -> Any:
        if name == b".":
            return self.getattr(parent)
        if name == b"..":
            return self.entry(os.path.dirname(self.paths[parent]))
        return self.entry(self.rel(parent, name))

    def getattr(self, inode: int) -> Any:
        try:
            return self.attr(os.lstat(self.full(self.paths[inode])))
        except OSError as e:
            raise self.err(e) from None

    def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None) -> Any:
        rel = self.paths[inode]
        p = self.full(rel)
        try:
            if fields.update_size:
                if fh is not None:
                    os.ftruncate(fh, attr.st_size)
                else:
                    os.truncate(p, attr.st_size)
                self.log.put(Op(OpKind.TRUNCATE, 0, rel, value=attr.st_size))
            if fields.update_mode:
                os.chmod(p, stat.S_IMODE(attr.st_mode))
                self.log.put(Op(OpKind.CHMOD, 0, rel, value=stat.S_IMODE(attr.st_mode)))
            if fields.update_uid or fields.update_gid:
                os.chown(p, attr.st_uid if fields.update_uid else -1,
                         attr.st_gid if fields.update_gid else -1, follow_symlinks=False)
                self.log.mark("chown", rel)
            if fields.update_atime or fields.update_mtime:
                st = os.lstat(p)
                at = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
                mt = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
                os.utime(p, ns=(at, mt), follow_symlinks=False)
                self.log.put(Op(OpKind.UTIME, 0, rel, value=mt))
        except OSError as e:
            raise self.err(e) from None
        return self.getattr(inode)

    def readlink(self, inode: int) -> bytes:
        try:
            return os.fsencode(os.readlink(self.full(self.paths[inode])))
        except OSError as e:
            raise self.err(e) from None

    def mkdir(self, parent: int, name: bytes, mode: int) -> Any:
        rel = self.rel(parent, name)
        try:
            os.mkdir(self.full(rel), mode)
        except OSError as e:
            raise self.err(e) from None
        self.log.put(Op(OpKind.MKDIR, 0, rel, value=stat.S_IMODE(mode)))
        return self.entry(rel)

    def unlink(self, parent: int, name: bytes) -> None:
        rel = self.rel(parent, name)
        try:
            os.unlink(self.full(rel))
        except OSError as e:
            raise self.err(e) from None
        self.log.put(Op(OpKind.UNLINK, 0, rel))

    def rmdir(self, parent: int, name: bytes) -> None:
        rel = self.rel(parent, name)
        try:
            os.rmdir(self.full(rel))
        except OSError as e:
            raise self.err(e) from None
        self.log.put(Op(OpKind.RMDIR, 0, rel))

    def symlink(self, parent: int, name: bytes, target: bytes) -> Any:
        rel = self.rel(parent, name)
        try:
            os.symlink(target, self.full(rel))
        except OSError as e:
            raise self.err(e) from None
        self.log.put(Op(OpKind.SYMLINK, 0, rel, target=os.fsdecode(target)))
        return self.entry(rel)

    def rename(self, pold: int, nold: bytes, pnew: int, nnew: bytes, flags: int = 0) -> None:
        if flags:
            raise self.mod.FUSEError(errno.EINVAL)  # RENAME_EXCHANGE/NOREPLACE: not here
        old, new = self.rel(pold, nold), self.rel(pnew, nnew)
        try:
            os.rename(self.full(old), self.full(new))
            st = os.lstat(self.full(new))
        except OSError as e:
            raise self.err(e) from None
        self.log.put(Op(OpKind.RENAME, 0, old, target=new))
        with self.glock:
            self.paths[self.ino(st)] = new
            if stat.S_ISDIR(st.st_mode):
                pre = old + "/"
                for k, v in list(self.paths.items()):
                    if v.startswith(pre):
                        self.paths[k] = new + v[len(old):]

    def link(self, inode: int, pnew: int, nnew: bytes) -> Any:
        rel = self.rel(pnew, nnew)
        try:
            os.link(self.full(self.paths[inode]), self.full(rel))
        except OSError as e:
            raise self.err(e) from None
        self.log.mark("link", rel)
        return self.getattr(inode)

    def open(self, inode: int, flags: int) -> int:
        rel = self.paths[inode]
        try:
            fd = os.open(self.full(rel), flags & ~_STRIP)
        except OSError as e:
            raise self.err(e) from None
        if flags & os.O_TRUNC:  # atomic_o_trunc: the kernel sends O_TRUNC here
            self.log.put(Op(OpKind.TRUNCATE, 0, rel, value=0))
        self.fhs[fd] = rel
        return fd

    def create(self, parent: int, name: bytes, mode: int, flags: int) -> tuple[int, Any]:
        rel = self.rel(parent, name)
        try:
            fd = os.open(self.full(rel), (flags & ~_STRIP) | os.O_CREAT, mode)
            st = os.fstat(fd)
        except OSError as e:
            raise self.err(e) from None
        self.log.put(Op(OpKind.CREATE, 0, rel, value=stat.S_IMODE(mode)))
        self.fhs[fd] = rel
        with self.glock:
            self.paths[self.ino(st)] = rel
        return fd, self.attr(st)

    def read(self, fh: int, off: int, size: int) -> bytes:
        try:
            return os.pread(fh, size, off)
        except OSError as e:
            raise self.err(e) from None

    def write(self, fh: int, off: int, buf: bytes) -> int:
        try:
            n = os.pwrite(fh, buf, off)
        except OSError as e:
            raise self.err(e) from None
        self.log.put(Op(OpKind.WRITE, 0, self.fhs[fh], value=off, data=bytes(buf[:n])))
        return n

    def release(self, fh: int) -> None:
        self.fhs.pop(fh, None)
        os.close(fh)

    def fsync(self, fh: int, datasync: bool) -> None:
        try:
            (os.fdatasync if datasync else os.fsync)(fh)
        except OSError as e:
            raise self.err(e) from None
        self.log.barrier()

    def opendir(self, inode: int) -> int:
        p = self.full(self.paths[inode])
        try:
            names = sorted(os.listdir(p))
        except OSError as e:
            raise self.err(e) from None
        with self.glock:
            fh = self.next_dir
            self.next_dir += 1
            self.dirs[fh] = [(os.fsencode(n), inode) for n in names]
        return fh

    def readdir_entries(self, fh: int, off: int) -> list[tuple[bytes, Any, int]]:
        out = []
        for i, (name, parent) in enumerate(self.dirs[fh][off:], off + 1):
            try:
                a = self.lookup(parent, name)
            except self.mod.FUSEError:
                continue  # removed meanwhile
            out.append((name, a, i))
        return out

    def releasedir(self, fh: int) -> None:
        with self.glock:
            self.dirs.pop(fh, None)

    def statfs(self) -> Any:
        s = os.statvfs(self.root)
        d = self.mod.StatvfsData()
        for f in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                  "f_ffree", "f_favail", "f_namemax"):
            setattr(d, f, getattr(s, f))
        return d

    def setxattr(self, inode: int, name: bytes, value: bytes) -> None:
        rel = self.paths[inode]
        try:
            os.setxattr(self.full(rel), name, value, follow_symlinks=False)
        except OSError as e:
            raise self.err(e) from None
        self.log.mark("setxattr", rel)

    def getxattr(self, inode: int, name: bytes) -> bytes:
        try:
            return os.getxattr(self.full(self.paths[inode]), name, follow_symlinks=False)
        except OSError as e:
            raise self.mod.FUSEError(self.mod.ENOATTR if e.errno == errno.ENODATA
                                     else e.errno) from None

    def listxattr(self, inode: int) -> list[bytes]:
        try:
            names = os.listxattr(self.full(self.paths[inode]), follow_symlinks=False)
        except OSError as e:
            raise self.err(e) from None
        return [os.fsencode(n) for n in names]

    def removexattr(self, inode: int, name: bytes) -> None:
        rel = self.paths[inode]
        try:
            os.removexattr(self.full(rel), name, follow_symlinks=False)
        except OSError as e:
            raise self.mod.FUSEError(self.mod.ENOATTR if e.errno == errno.ENODATA
                                     else e.errno) from None
        self.log.mark("removexattr", rel)


def serve_pyfuse3(backing: str, mnt: str, log: OpLog, options: list[str], single: bool,
                  on_asyncio: bool = False) -> None:
    import pyfuse3
    import trio

    core = LowLevelCore(backing, log, pyfuse3)
    # "thread_fsync" (ours, not a FUSE option): fsync in a worker thread, as a
    # sync-mode fsync waiting for the backup would be an await.
    thread_fsync = "thread_fsync" in options
    options = [o for o in options if o != "thread_fsync"]

    class Ops(pyfuse3.Operations):  # type: ignore[misc]
        # Every handler calls blocking os.* directly: one request at a time on
        # trio's single thread, which is how a naive pyfuse3 file system runs.
        enable_writeback_cache = False

        async def lookup(self, parent, name, ctx):  # type: ignore[no-untyped-def]
            return core.lookup(parent, name)

        async def getattr(self, inode, ctx):  # type: ignore[no-untyped-def]
            return core.getattr(inode)

        async def setattr(self, inode, attr, fields, fh, ctx):  # type: ignore[no-untyped-def]
            return core.setattr(inode, attr, fields, fh)

        async def readlink(self, inode, ctx):  # type: ignore[no-untyped-def]
            return core.readlink(inode)

        async def mkdir(self, parent, name, mode, ctx):  # type: ignore[no-untyped-def]
            return core.mkdir(parent, name, mode)

        async def unlink(self, parent, name, ctx):  # type: ignore[no-untyped-def]
            core.unlink(parent, name)

        async def rmdir(self, parent, name, ctx):  # type: ignore[no-untyped-def]
            core.rmdir(parent, name)

        async def symlink(self, parent, name, target, ctx):  # type: ignore[no-untyped-def]
            return core.symlink(parent, name, target)

        async def rename(self, po, no, pn, nn, flags, ctx):  # type: ignore[no-untyped-def]
            core.rename(po, no, pn, nn, flags)

        async def link(self, inode, pn, nn, ctx):  # type: ignore[no-untyped-def]
            return core.link(inode, pn, nn)

        async def open(self, inode, flags, ctx):  # type: ignore[no-untyped-def]
            return pyfuse3.FileInfo(fh=core.open(inode, flags))

        async def create(self, parent, name, mode, flags, ctx):  # type: ignore[no-untyped-def]
            fd, a = core.create(parent, name, mode, flags)
            return pyfuse3.FileInfo(fh=fd), a

        async def read(self, fh, off, size):  # type: ignore[no-untyped-def]
            return core.read(fh, off, size)

        async def write(self, fh, off, buf):  # type: ignore[no-untyped-def]
            return core.write(fh, off, buf)

        async def release(self, fh):  # type: ignore[no-untyped-def]
            core.release(fh)

        async def fsync(self, fh, datasync):  # type: ignore[no-untyped-def]
            if thread_fsync:  # other requests go on while this one waits
                await trio.to_thread.run_sync(core.fsync, fh, datasync)
            else:
                core.fsync(fh, datasync)

        async def opendir(self, inode, ctx):  # type: ignore[no-untyped-def]
            return core.opendir(inode)

        async def readdir(self, fh, off, token):  # type: ignore[no-untyped-def]
            for name, a, nxt in core.readdir_entries(fh, off):
                if not pyfuse3.readdir_reply(token, name, a, nxt):
                    break

        async def releasedir(self, fh):  # type: ignore[no-untyped-def]
            core.releasedir(fh)

        async def statfs(self, ctx):  # type: ignore[no-untyped-def]
            return core.statfs()

        async def setxattr(self, inode, name, value, ctx):  # type: ignore[no-untyped-def]
            core.setxattr(inode, name, value)

        async def getxattr(self, inode, name, ctx):  # type: ignore[no-untyped-def]
            return core.getxattr(inode, name)

        async def listxattr(self, inode, ctx):  # type: ignore[no-untyped-def]
            return core.listxattr(inode)

        async def removexattr(self, inode, name, ctx):  # type: ignore[no-untyped-def]
            core.removexattr(inode, name)

    opts = set(pyfuse3.default_options) | {"fsname=mkbench"} | set(options)
    pyfuse3.init(Ops(), mnt, opts)
    try:
        if on_asyncio:  # pyfuse3's own adapter: the same handlers on an asyncio loop
            import asyncio

            import pyfuse3.asyncio as pa

            pa.enable()
            asyncio.run(pyfuse3.main(*((1, 1) if single else ())))
        else:
            trio.run(pyfuse3.main, *((1, 1) if single else ()))
    finally:
        pyfuse3.close(unmount=False)


def serve_llfuse(backing: str, mnt: str, log: OpLog, options: list[str], single: bool) -> None:
    import llfuse

    core = LowLevelCore(backing, log, llfuse)

    class Ops(llfuse.Operations):  # type: ignore[misc]
        def lookup(self, parent, name, ctx):  # type: ignore[no-untyped-def]
            return core.lookup(parent, name)

        def getattr(self, inode, ctx):  # type: ignore[no-untyped-def]
            return core.getattr(inode)

        def setattr(self, inode, attr, fields, fh, ctx):  # type: ignore[no-untyped-def]
            return core.setattr(inode, attr, fields, fh)

        def readlink(self, inode, ctx):  # type: ignore[no-untyped-def]
            return core.readlink(inode)

        def mkdir(self, parent, name, mode, ctx):  # type: ignore[no-untyped-def]
            return core.mkdir(parent, name, mode)

        def unlink(self, parent, name, ctx):  # type: ignore[no-untyped-def]
            core.unlink(parent, name)

        def rmdir(self, parent, name, ctx):  # type: ignore[no-untyped-def]
            core.rmdir(parent, name)

        def symlink(self, parent, name, target, ctx):  # type: ignore[no-untyped-def]
            return core.symlink(parent, name, target)

        def rename(self, po, no, pn, nn, ctx):  # type: ignore[no-untyped-def]
            core.rename(po, no, pn, nn)

        def link(self, inode, pn, nn, ctx):  # type: ignore[no-untyped-def]
            return core.link(inode, pn, nn)

        def open(self, inode, flags, ctx):  # type: ignore[no-untyped-def]
            return core.open(inode, flags)

        def create(self, parent, name, mode, flags, ctx):  # type: ignore[no-untyped-def]
            return core.create(parent, name, mode, flags)

        def read(self, fh, off, size):  # type: ignore[no-untyped-def]
            return core.read(fh, off, size)

        def write(self, fh, off, buf):  # type: ignore[no-untyped-def]
            return core.write(fh, off, buf)

        def release(self, fh):  # type: ignore[no-untyped-def]
            core.release(fh)

        def fsync(self, fh, datasync):  # type: ignore[no-untyped-def]
            core.fsync(fh, datasync)

        def opendir(self, inode, ctx):  # type: ignore[no-untyped-def]
            return core.opendir(inode)

        def readdir(self, fh, off):  # type: ignore[no-untyped-def]
            yield from core.readdir_entries(fh, off)

        def releasedir(self, fh):  # type: ignore[no-untyped-def]
            core.releasedir(fh)

        def statfs(self, ctx):  # type: ignore[no-untyped-def]
            return core.statfs()

        def setxattr(self, inode, name, value, ctx):  # type: ignore[no-untyped-def]
            core.setxattr(inode, name, value)

        def getxattr(self, inode, name, ctx):  # type: ignore[no-untyped-def]
            return core.getxattr(inode, name)

        def listxattr(self, inode, ctx):  # type: ignore[no-untyped-def]
            return core.listxattr(inode)

        def removexattr(self, inode, name, ctx):  # type: ignore[no-untyped-def]
            core.removexattr(inode, name)

    base = set(llfuse.default_options)
    if "no_big_writes" in options:  # libfuse 2 writes in 4 KiB pieces without it
        base.discard("big_writes")
    opts = base | {"fsname=mkbench"} | {o for o in options if o != "no_big_writes"}
    llfuse.init(Ops(), mnt, opts)
    try:
        llfuse.main(workers=1 if single else None)
    finally:
        llfuse.close(unmount=False)


# -- high level (path) API: mfusepy -----------------------------------------------


def serve_mfusepy(backing: str, mnt: str, log: OpLog, options: list[str], single: bool) -> None:
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")  # it prefers libfuse 2 if found
    import mfusepy

    root = os.path.realpath(backing)
    fhs: dict[int, str] = {}
    # "no_getxattr" (ours, not a FUSE option): answer getxattr with ENOSYS,
    # to measure what the kernel's per-write security.capability probe costs.
    no_getxattr = "no_getxattr" in options
    options = [o for o in options if o != "no_getxattr"]

    def wrap(fn: Any) -> Any:
        def inner(*a: Any) -> Any:
            try:
                return fn(*a)
            except OSError as e:
                raise mfusepy.FuseOSError(e.errno or errno.EIO) from None
        return inner

    class Ops(mfusepy.Operations):  # type: ignore[misc]
        use_ns = True

        def f(self, path: str) -> str:
            return root + path

        @wrap
        def getattr(self, path, fh=None):  # type: ignore[no-untyped-def]
            st = os.fstat(fh) if fh is not None else os.lstat(self.f(path))
            d = {k: getattr(st, k) for k in ("st_mode", "st_ino", "st_nlink", "st_uid",
                                             "st_gid", "st_size", "st_blocks", "st_rdev")}
            d.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
            return d

        @wrap
        def readdir(self, path, fh):  # type: ignore[no-untyped-def]
            return [".", "..", *os.listdir(self.f(path))]

        @wrap
        def readlink(self, path):  # type: ignore[no-untyped-def]
            return os.readlink(self.f(path))

        @wrap
        def open(self, path, flags):  # type: ignore[no-untyped-def]
            fd = os.open(self.f(path), flags & ~_STRIP)
            if flags & os.O_TRUNC:
                log.put(Op(OpKind.TRUNCATE, 0, path[1:], value=0))
            fhs[fd] = path[1:]
            return fd

        @wrap
        def create(self, path, mode, flags):  # type: ignore[no-untyped-def]
            fd = os.open(self.f(path), (flags & ~_STRIP) | os.O_CREAT, mode)
            log.put(Op(OpKind.CREATE, 0, path[1:], value=stat.S_IMODE(mode)))
            fhs[fd] = path[1:]
            return fd

        @wrap
        def read(self, path, size, offset, fh):  # type: ignore[no-untyped-def]
            return os.pread(fh, size, offset)

        @wrap
        def write(self, path, data, offset, fh):  # type: ignore[no-untyped-def]
            n = os.pwrite(fh, data, offset)
            log.put(Op(OpKind.WRITE, 0, fhs.get(fh, path[1:]), value=offset, data=data[:n]))
            return n

        @wrap
        def truncate(self, path, length, fh=None):  # type: ignore[no-untyped-def]
            if fh is not None:
                os.ftruncate(fh, length)
            else:
                os.truncate(self.f(path), length)
            log.put(Op(OpKind.TRUNCATE, 0, path[1:], value=length))
            return 0

        @wrap
        def fallocate(self, path, mode, offset, size, fh):  # type: ignore[no-untyped-def]
            _fallocate(fh, mode, offset, size)
            log.mark("fallocate", path[1:])
            return 0

        @wrap
        def fsync(self, path, datasync, fh):  # type: ignore[no-untyped-def]
            (os.fdatasync if datasync else os.fsync)(fh)
            log.barrier()
            return 0

        def flush(self, path, fh):  # type: ignore[no-untyped-def]
            return 0

        def release(self, path, fh):  # type: ignore[no-untyped-def]
            fhs.pop(fh, None)
            os.close(fh)
            return 0

        @wrap
        def unlink(self, path):  # type: ignore[no-untyped-def]
            os.unlink(self.f(path))
            log.put(Op(OpKind.UNLINK, 0, path[1:]))
            return 0

        @wrap
        def rmdir(self, path):  # type: ignore[no-untyped-def]
            os.rmdir(self.f(path))
            log.put(Op(OpKind.RMDIR, 0, path[1:]))
            return 0

        @wrap
        def mkdir(self, path, mode):  # type: ignore[no-untyped-def]
            os.mkdir(self.f(path), mode)
            log.put(Op(OpKind.MKDIR, 0, path[1:], value=stat.S_IMODE(mode)))
            return 0

        @wrap
        def rename(self, old, new):  # type: ignore[no-untyped-def]
            os.rename(self.f(old), self.f(new))
            log.put(Op(OpKind.RENAME, 0, old[1:], target=new[1:]))
            return 0

        @wrap
        def symlink(self, target, source):  # type: ignore[no-untyped-def]
            os.symlink(source, self.f(target))
            log.put(Op(OpKind.SYMLINK, 0, target[1:], target=source))
            return 0

        @wrap
        def link(self, target, source):  # type: ignore[no-untyped-def]
            os.link(self.f(source), self.f(target))
            log.mark("link", target[1:])
            return 0

        @wrap
        def chmod(self, path, mode):  # type: ignore[no-untyped-def]
            os.chmod(self.f(path), stat.S_IMODE(mode))
            log.put(Op(OpKind.CHMOD, 0, path[1:], value=stat.S_IMODE(mode)))
            return 0

        @wrap
        def chown(self, path, uid, gid):  # type: ignore[no-untyped-def]
            os.chown(self.f(path), uid, gid, follow_symlinks=False)
            log.mark("chown", path[1:])
            return 0

        @wrap
        def utimens(self, path, times=None):  # type: ignore[no-untyped-def]
            if times is None:
                os.utime(self.f(path), follow_symlinks=False)
            else:
                os.utime(self.f(path), ns=times, follow_symlinks=False)
            log.put(Op(OpKind.UTIME, 0, path[1:], value=os.lstat(self.f(path)).st_mtime_ns))
            return 0

        @wrap
        def statfs(self, path):  # type: ignore[no-untyped-def]
            s = os.statvfs(root)
            return {k: getattr(s, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree",
                                                "f_bavail", "f_files", "f_ffree", "f_favail",
                                                "f_namemax")}

        @wrap
        def setxattr(self, path, name, value, options, position=0):  # type: ignore[no-untyped-def]
            os.setxattr(self.f(path), name, value, options, follow_symlinks=False)
            log.mark("setxattr", path[1:])
            return 0

        @wrap
        def getxattr(self, path, name, position=0):  # type: ignore[no-untyped-def]
            if no_getxattr:  # the kernel then stops asking (security.capability per write)
                raise OSError(errno.ENOSYS, "getxattr off")
            return os.getxattr(self.f(path), name, follow_symlinks=False)

        @wrap
        def listxattr(self, path):  # type: ignore[no-untyped-def]
            return os.listxattr(self.f(path), follow_symlinks=False)

        @wrap
        def removexattr(self, path, name):  # type: ignore[no-untyped-def]
            os.removexattr(self.f(path), name, follow_symlinks=False)
            log.mark("removexattr", path[1:])
            return 0

    kw: dict[str, Any] = {o.split("=", 1)[0]: (o.split("=", 1)[1] if "=" in o else True)
                          for o in options}
    kw.setdefault("default_permissions", True)
    mfusepy.FUSE(Ops(), mnt, foreground=True, nothreads=single, fsname="mkbench", **kw)


def serve_pyfuse3_asyncio(backing: str, mnt: str, log: OpLog, options: list[str],
                          single: bool) -> None:
    serve_pyfuse3(backing, mnt, log, options, single, on_asyncio=True)


SERVERS = {"pyfuse3": serve_pyfuse3, "pyfuse3-asyncio": serve_pyfuse3_asyncio,
           "llfuse": serve_llfuse, "mfusepy": serve_mfusepy}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binding", choices=sorted(SERVERS))
    ap.add_argument("backing")
    ap.add_argument("mountpoint")
    ap.add_argument("stats")
    ap.add_argument("--single", action="store_true", help="one request at a time")
    ap.add_argument("--option", action="append", default=[], help="FUSE -o option")
    ap.add_argument("--ack-ms", type=float, default=0.0,
                    help="fsync also waits this long (a sync-mode backup ack stand-in)")
    a = ap.parse_args()
    log = OpLog(ack_s=a.ack_ms / 1000)
    try:
        SERVERS[a.binding](a.backing, a.mountpoint, log, a.option, a.single)
    finally:
        with open(a.stats, "w") as f:
            json.dump(log.close(), f)
    return 0


if __name__ == "__main__":
    sys.exit(main())

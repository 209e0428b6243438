"""The mount's file system: a passthrough over the backing directory that
journals every change (mfusepy's path API; libfuse 3, multithreaded).

Every path libfuse hands us (``/a/b``, current after renames) is resolved
from a descriptor of the backing root one component at a time with
``O_NOFOLLOW`` (mountd runs as root: a component swapped for a symlink
between the kernel's lookup and our syscall must not lead outside the
tree), and every call acts on the final name through its directory's
descriptor, never following a final symlink.

A change is made inside :meth:`Journal.mutation` (fence checked, backing
store changed, record numbered: one step), so the journal's order is the
order the backing store changed in. What each handler journals:

=================  ==========================================================
application call   records
=================  ==========================================================
create / mkdir /   CREATE / MKDIR / SYMLINK, then CHOWN to the caller (the
symlink            backing entry is made by root)
open(O_TRUNC)      TRUNCATE 0
write              WRITE (the bytes the backing store took, at the kernel's
                   offset; O_APPEND: at the backing file's end)
truncate           TRUNCATE
fallocate          FALLOCATE (modes the replica can replay: allocate, keep
                   size, punch hole, zero range; others EOPNOTSUPP)
unlink / rmdir     UNLINK / RMDIR
rename             RENAME (RENAME_NOREPLACE honoured; RENAME_EXCHANGE EINVAL)
link               LINK
chmod / chown      CHMOD / CHOWN (+ CHMOD: the kernel clears set-ID bits)
utimens            UTIME (the resulting mtime)
setxattr /         SETXATTR / REMOVEXATTR
removexattr
=================  ==========================================================

A change to a file already unlinked (open descriptor, ``hard_remove``: libfuse
passes no path) is made and not journalled: that file is gone from the tree.
``fsync``/``fdatasync``/``fsyncdir`` and writes on an ``O_SYNC``/``O_DSYNC``
descriptor sync the backing store, then wait until everything journalled so
far is durable in the primary's log (``async``) or on the active backup
(``sync``). FIFOs, sockets and device nodes cannot be mirrored: mknod is
refused with EPERM. Every open of a backing file is ``O_NONBLOCK`` and
anything but a regular file is refused (ESTALE): a FIFO put on the backing
store behind the mount's back must not block a handler for ever, least of all
one holding the journal's op lock (every writer would wait).

**Permissions: the handlers run as root; the kernel checks.** The mount has
``default_permissions``: the kernel checks modes, owners, the sticky bit and
set-id rules against the attributes we return, exactly as for a local file
system (tests/integration/test_mount_posix.py runs the EACCES/EPERM cases as
uid 1000 on the mount and on a plain directory: the same answers). That is
only as good as those attributes are fresh, and libfuse's path API gives each
hard link a node of its own, so the kernel's cached attributes of one name go
stale when the file changes through another (a read stopped at the old size;
the mode the kernel checks is cached the same way): attribute caching is off
(:meth:`MirrorFS.init_with_config`, ``attr_timeout=0``; stat() through the
mount costs a GETATTR each time, 5-8x fewer stats/s, creates about 20% slower;
writes through a descriptor are unaffected). Running each handler with the
caller's fsuid/fsgid was measured and not taken: the switch and its undo
(setfsuid/setfsgid, plus the raw setgroups syscall: glibc's setgroups is
process-wide) cost ~20 µs in Python and the caller's supplementary groups
another ~30 µs (read from /proc/<pid>/status, racy when the caller exits),
25-35% more per path operation, and with fresh attributes it would change
nothing the kernel does not already refuse. What it would add is POSIX ACLs
on the backing store, which the kernel does not evaluate on this mount (no
FUSE_POSIX_ACL): ACLs are not supported on mount-captured trees.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

# mfusepy loads libfuse when imported and prefers libfuse 2 when both are
# installed: the capture is written for libfuse 3 (rename flags, fallocate).
os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
import mfusepy

from mirrorkit.agent.capture.mount.journal import Journal
from mirrorkit.agent.log.records import FALLOCATE_MODES, Op, OpKind, pack_fallocate, pack_owner
from mirrorkit.agent.util.fs import fallocate, rename_noreplace

__all__ = ["MirrorFS", "MirrorFUSE"]

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Flags the backing open must not get: creation is create()'s job; O_APPEND
# is resolved by the kernel, which passes the offset to write.
_OPEN_STRIP = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_APPEND
_SYNC_FLAGS = os.O_SYNC | os.O_DSYNC
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2


F = TypeVar("F", bound=Callable[..., Any])


def _errno_of(func: F) -> F:
    """OSError from a handler becomes the errno libfuse returns to the caller."""
    @functools.wraps(func)
    def inner(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OSError as exc:
            raise mfusepy.FuseOSError(exc.errno or errno.EIO) from None
        except mfusepy.FuseOSError:
            raise
        except Exception:  # a bug must not take the mount down: EIO, logged
            log.exception("mount handler %s failed", func.__name__)
            raise mfusepy.FuseOSError(errno.EIO) from None
    return inner  # type: ignore[return-value]


class MirrorFS(mfusepy.Operations):  # type: ignore[misc]
    """The mount of one mirror tree over ``backing``; changes go to ``journal``
    (tree 0); ``sync``: fsync waits for the backup's acknowledgement."""

    use_ns = True

    def __init__(self, backing: str, journal: Journal, *, sync: bool = False,
                 tree: int = 0) -> None:
        self.backing = os.path.realpath(backing)
        self.root_fd = os.open(self.backing, _DIR)
        self.journal = journal
        self.sync = sync
        self.tree = tree
        self._fh_flags: dict[int, int] = {}
        # Descriptors written since their file's mtime was last journalled:
        # the mtime goes out as one UTIME at flush (close) or fsync, not per write.
        self._dirty: set[int] = set()
        self._fh_lock = threading.Lock()

    def init_with_config(self, conn: Any, config: Any) -> None:
        # Every hard link is a node of its own in libfuse's path API, so the
        # kernel caches each name's attributes apart: with the default 1 s,
        # a chmod, a write or a truncate through one name leaves the other
        # names' size, nlink and mode stale for a second (a read stops at
        # the old size, a permission check passes on the old mode). No
        # attribute caching: the kernel asks (GETATTR) whenever it needs
        # them; a write or fsync through an open descriptor does not.
        if config is not None:
            config.attr_timeout = 0.0
            config.ac_attr_timeout_set = 0

    # -- resolution ------------------------------------------------------------

    @contextmanager
    def _parent(self, path: str) -> Iterator[tuple[int, str]]:
        """(descriptor of the parent directory, final name) of ``path``; the
        root itself is (root, ".")."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            yield self.root_fd, "."
            return
        fds: list[int] = []
        fd = self.root_fd
        try:
            for part in parts[:-1]:
                fd = os.open(part, _DIR, dir_fd=fd)
                fds.append(fd)
            yield fd, parts[-1]
        finally:
            for opened in fds:
                os.close(opened)

    @contextmanager
    def _node(self, path: str) -> Iterator[int]:
        """An O_PATH descriptor of ``path`` itself (a symlink is not followed)."""
        with self._parent(path) as (d, name):
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
        try:
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _rel(path: str) -> str:
        return path.strip("/")

    def _op(self, kind: OpKind, path: str, **fields: Any) -> Op:
        return Op(kind, self.tree, self._rel(path), **fields)

    def _caller_owner(self, d: int) -> tuple[int, int]:
        uid, gid, _pid = mfusepy.fuse_get_context()
        parent = os.fstat(d)
        if parent.st_mode & stat.S_ISGID:
            gid = parent.st_gid
        return uid, gid

    def _owned(self, m: Any, path: str, d: int, name: str, owner: tuple[int, int]) -> None:
        """Give a new entry to its creator and journal that (root: nothing to do)."""
        st = os.lstat(name, dir_fd=d)
        if (st.st_uid, st.st_gid) != owner:
            os.chown(name, *owner, dir_fd=d, follow_symlinks=False)
        if owner != (0, 0):
            m.log(self._op(OpKind.CHOWN, path, value=pack_owner(*owner)))

    # -- reads -----------------------------------------------------------------

    @staticmethod
    def _attrs(st: os.stat_result) -> dict[str, int]:
        attrs = {k: getattr(st, k) for k in ("st_mode", "st_ino", "st_nlink", "st_uid",
                                             "st_gid", "st_size", "st_blocks", "st_rdev")}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return attrs

    @_errno_of
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, int]:
        if fh is not None:
            return self._attrs(os.fstat(fh))
        assert path is not None
        with self._parent(path) as (d, name):
            return self._attrs(os.lstat(name, dir_fd=d))

    @_errno_of
    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        # With use_ino an entry needs its inode number: one of 0 is skipped
        # by readdir(3) (glibc), and the directory would look empty.
        with self._parent(path) as (d, name):
            fd = os.open(name, _DIR, dir_fd=d)
            up = os.fstat(d).st_ino if name != "." else os.fstat(fd).st_ino
        try:
            here = os.fstat(fd).st_ino
            out = [(".", {"st_ino": here, "st_mode": stat.S_IFDIR}, 0),
                   ("..", {"st_ino": up, "st_mode": stat.S_IFDIR}, 0)]
            with os.scandir(fd) as entries:
                for entry in entries:
                    st = entry.stat(follow_symlinks=False)
                    out.append((entry.name, {"st_ino": st.st_ino,
                                             "st_mode": stat.S_IFMT(st.st_mode)}, 0))
            return out
        finally:
            os.close(fd)

    @_errno_of
    def readlink(self, path: str) -> str:
        with self._parent(path) as (d, name):
            return os.readlink(name, dir_fd=d)

    @_errno_of
    def statfs(self, path: str) -> dict[str, int]:
        s = os.statvfs(self.root_fd)
        return {k: getattr(s, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree",
                                            "f_bavail", "f_files", "f_ffree", "f_favail",
                                            "f_namemax")}

    @_errno_of
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    @_errno_of
    def lseek(self, path: str | None, offset: int, whence: int, fh: int) -> int:
        # Only SEEK_DATA/SEEK_HOLE reach us (the kernel does the rest): the
        # backing store's extents, so sparse files look sparse on the mount.
        return os.lseek(fh, offset, whence)

    @_errno_of
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        with self._parent(path) as (d, final):
            return os.getxattr(f"/proc/self/fd/{d}/{final}", name, follow_symlinks=False)

    @_errno_of
    def listxattr(self, path: str) -> list[str]:
        with self._parent(path) as (d, final):
            return os.listxattr(f"/proc/self/fd/{d}/{final}", follow_symlinks=False)

    @staticmethod
    def _is_link(fd: int) -> bool:
        return stat.S_ISLNK(os.fstat(fd).st_mode)

    # -- descriptors -----------------------------------------------------------

    @staticmethod
    def _open_file(name: str, flags: int, d: int, mode: int = 0o600) -> int:
        """The backing file ``name`` of ``d``, never blocking: the kernel sends
        opens of files it knows as regular; one replaced by a FIFO (or a
        device) on the backing store behind the mount's back would block
        this thread for ever, and a writing open holds the journal's op
        lock, so every writer on the mount would wait with it. O_NONBLOCK
        makes such an open return; anything but a regular file is then
        refused with ESTALE (the kernel looks the name up again once and
        finds what is really there)."""
        try:
            fd = os.open(name, flags | os.O_NONBLOCK, mode, dir_fd=d)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # a FIFO with no reader (a regular file never)
                raise OSError(errno.ESTALE, "not a regular file on the backing store") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.ESTALE, "not a regular file on the backing store")
            if not flags & os.O_NONBLOCK:
                os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _remember(self, fd: int, flags: int) -> int:
        with self._fh_lock:
            self._fh_flags[fd] = flags
        return fd

    @_errno_of
    def open(self, path: str, flags: int) -> int:
        writing = flags & os.O_ACCMODE != os.O_RDONLY
        backing_flags = (flags & ~_OPEN_STRIP) | os.O_NOFOLLOW | os.O_CLOEXEC
        if not writing and not flags & os.O_TRUNC:
            with self._parent(path) as (d, name):
                return self._remember(self._open_file(name, backing_flags, d), flags)
        with self.journal.mutation() as m, self._parent(path) as (d, name):
            fd = self._open_file(name, backing_flags, d)
            if flags & os.O_TRUNC:
                m.log(self._op(OpKind.TRUNCATE, path, value=0))
                self._touch(fd)
        return self._remember(fd, flags)

    @_errno_of
    def create(self, path: str, mode: int, flags: int) -> int:
        # O_EXCL: two creates that both saw "no such file" must not both set
        # owner and mode (the second caller would take the first one's file),
        # nor journal a CREATE that would empty it on the replicas.
        backing_flags = ((flags & ~(os.O_NOCTTY | os.O_APPEND)) | os.O_CREAT | os.O_EXCL
                         | os.O_NOFOLLOW | os.O_CLOEXEC)
        perm = stat.S_IMODE(mode)
        with self.journal.mutation() as m, self._parent(path) as (d, name):
            owner = self._caller_owner(d)
            # Lost a race with another create (both saw "no such file"): EEXIST,
            # never an open of that file as root, which would skip the
            # kernel's permission check on it (rare; the caller may retry).
            fd = os.open(name, backing_flags, perm, dir_fd=d)
            try:
                m.log(self._op(OpKind.CREATE, path, value=perm))
                self._owned(m, path, d, name, owner)  # chown first: it clears set-id bits
                os.fchmod(fd, perm)  # exactly what was asked (the umask is the kernel's)
                if perm & (stat.S_ISUID | stat.S_ISGID) and owner != (0, 0):
                    m.log(self._op(OpKind.CHMOD, path, value=perm))
                self._touch(fd)
            except BaseException:
                os.close(fd)
                raise
        return self._remember(fd, flags)

    @_errno_of
    def write(self, path: str | None, data: bytes, offset: int, fh: int,
              writepage: bool = False) -> int:
        with self._fh_lock:
            flags = self._fh_flags.get(fh, 0)
        with self.journal.mutation(len(data)) as m:
            if flags & os.O_APPEND and not writepage:
                # The kernel's offset is its cached size of this name's node;
                # another hard link's node does not see writes through this
                # one, so two appenders on two names would overwrite each
                # other. The backing file's size is the end (writes are
                # serialised by the op lock). A page written back from a
                # mapping (writepage) keeps its offset whatever descriptor
                # the kernel sends it on.
                offset = os.fstat(fh).st_size
            n = os.pwrite(fh, data, offset)
            if path is not None and n:
                m.log(self._op(OpKind.WRITE, path, value=offset, data=bytes(data[:n])))
                self._touch(fh)
        if flags & _SYNC_FLAGS and m.seq:
            self.journal.wait(m.seq, acked=self.sync)  # the backing fd is O_SYNC itself
        return n

    @_errno_of
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        with self.journal.mutation() as m:
            if fh is not None:
                os.ftruncate(fh, length)
                if path is not None:
                    m.log(self._op(OpKind.TRUNCATE, path, value=length))
                    self._touch(fh)
            else:
                assert path is not None
                with self._parent(path) as (d, name):
                    try:
                        fd = self._open_file(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                             d)
                    except OSError as exc:
                        if exc.errno == errno.ESTALE:
                            raise OSError(errno.EINVAL, "not a regular file") from None
                        raise
                    try:
                        os.ftruncate(fd, length)
                        m.log(self._op(OpKind.TRUNCATE, path, value=length))
                        m.log(self._op(OpKind.UTIME, path, value=os.fstat(fd).st_mtime_ns))
                    finally:
                        os.close(fd)
        return 0

    @_errno_of
    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        if mode not in FALLOCATE_MODES:
            raise OSError(errno.EOPNOTSUPP, "this fallocate mode cannot be mirrored")
        with self.journal.mutation() as m:
            fallocate(fh, mode, offset, size)
            if path is not None:
                m.log(self._op(OpKind.FALLOCATE, path, value=offset,
                               data=pack_fallocate(size, mode)))
                self._touch(fh)
        return 0

    def _wait_all(self) -> None:
        seq = self.journal.last_seq()
        if seq:
            self.journal.wait(seq, acked=self.sync)

    def _touch(self, fh: int) -> None:
        with self._fh_lock:
            self._dirty.add(fh)

    def _journal_mtime(self, path: str | None, fh: int) -> None:
        """One UTIME for everything written through ``fh`` since the last one."""
        with self._fh_lock:
            if fh not in self._dirty:
                return
            self._dirty.discard(fh)
        if path is None:
            return
        try:
            with self.journal.mutation() as m:
                m.log(self._op(OpKind.UTIME, path, value=os.fstat(fh).st_mtime_ns))
        except OSError as exc:
            if exc.errno != errno.EROFS:  # fenced: the mtime is not ours to ship now
                raise

    @_errno_of
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        (os.fdatasync if datasync else os.fsync)(fh)
        self._journal_mtime(path, fh)
        self._wait_all()
        return 0

    @_errno_of
    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        with self._parent(path) as (d, name):
            fd = os.open(name, _DIR, dir_fd=d)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._wait_all()
        return 0

    @_errno_of
    def flush(self, path: str | None, fh: int) -> int:
        self._journal_mtime(path, fh)  # close(2): the file's mtime reaches the log
        return 0

    def release(self, path: str | None, fh: int) -> int:
        with self._fh_lock:
            self._fh_flags.pop(fh, None)
            self._dirty.discard(fh)
        os.close(fh)
        return 0

    # -- namespace -------------------------------------------------------------

    @_errno_of
    def mkdir(self, path: str, mode: int) -> int:
        perm = stat.S_IMODE(mode)
        with self.journal.mutation() as m, self._parent(path) as (d, name):
            owner = self._caller_owner(d)
            os.mkdir(name, perm, dir_fd=d)
            fd = os.open(name, _DIR, dir_fd=d)
            try:
                os.fchmod(fd, perm | (os.fstat(d).st_mode & stat.S_ISGID))
                m.log(self._op(OpKind.MKDIR, path, value=stat.S_IMODE(os.fstat(fd).st_mode)))
            finally:
                os.close(fd)
            self._owned(m, path, d, name, owner)
        return 0

    @_errno_of
    def symlink(self, target: str, source: str) -> int:
        # mfusepy's names: ``target`` is the new link, ``source`` its contents.
        with self.journal.mutation() as m, self._parent(target) as (d, name):
            owner = self._caller_owner(d)
            os.symlink(source, name, dir_fd=d)
            m.log(self._op(OpKind.SYMLINK, target, target=source))
            self._owned(m, target, d, name, owner)
            m.log(self._op(OpKind.UTIME, target,
                           value=os.lstat(name, dir_fd=d).st_mtime_ns))
        return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        raise mfusepy.FuseOSError(errno.EPERM)  # FIFOs, sockets, devices: not mirrored

    @_errno_of
    def unlink(self, path: str) -> int:
        with self.journal.mutation() as m, self._parent(path) as (d, name):
            os.unlink(name, dir_fd=d)
            m.log(self._op(OpKind.UNLINK, path))
        return 0

    @_errno_of
    def rmdir(self, path: str) -> int:
        with self.journal.mutation() as m, self._parent(path) as (d, name):
            os.rmdir(name, dir_fd=d)
            m.log(self._op(OpKind.RMDIR, path))
        return 0

    @_errno_of
    def rename(self, old: str, new: str, flags: int = 0) -> int:
        if flags & RENAME_EXCHANGE or flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise OSError(errno.EINVAL, "RENAME_EXCHANGE cannot be mirrored")
        with self.journal.mutation() as m, self._parent(old) as (d1, n1), \
                self._parent(new) as (d2, n2):
            if flags & RENAME_NOREPLACE:
                rename_noreplace(d1, n1, d2, n2)
            else:
                os.rename(n1, n2, src_dir_fd=d1, dst_dir_fd=d2)
            m.log(self._op(OpKind.RENAME, old, target=self._rel(new)))
        return 0

    @_errno_of
    def link(self, target: str, source: str) -> int:
        # mfusepy's names: ``target`` is the new name, ``source`` the existing file.
        with self.journal.mutation() as m, self._parent(source) as (d1, n1), \
                self._parent(target) as (d2, n2):
            if not stat.S_ISREG(os.lstat(n1, dir_fd=d1).st_mode):
                # Replicas hard-link regular files only (apply refuses the rest).
                raise OSError(errno.EPERM, "only regular files can be hard-linked here")
            os.link(n1, n2, src_dir_fd=d1, dst_dir_fd=d2, follow_symlinks=False)
            m.log(self._op(OpKind.LINK, target, target=self._rel(source)))
        return 0

    # -- metadata --------------------------------------------------------------

    @_errno_of
    def chmod(self, path: str, mode: int) -> int:
        perm = stat.S_IMODE(mode)
        with self.journal.mutation() as m, self._node(path) as fd:
            if self._is_link(fd):
                raise OSError(errno.EOPNOTSUPP, "a symlink has no mode of its own")
            os.chmod(f"/proc/self/fd/{fd}", perm)
            m.log(self._op(OpKind.CHMOD, path, value=perm))
        return 0

    @_errno_of
    def chown(self, path: str, uid: int, gid: int) -> int:
        with self.journal.mutation() as m, self._parent(path) as (d, name):
            os.chown(name, uid, gid, dir_fd=d, follow_symlinks=False)
            st = os.lstat(name, dir_fd=d)
            m.log(self._op(OpKind.CHOWN, path, value=pack_owner(st.st_uid, st.st_gid)))
            if not stat.S_ISLNK(st.st_mode):  # a chown clears set-ID bits
                m.log(self._op(OpKind.CHMOD, path, value=stat.S_IMODE(st.st_mode)))
        return 0

    @_errno_of
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        with self.journal.mutation() as m, self._parent(path) as (d, name):
            if times is None:
                os.utime(name, dir_fd=d, follow_symlinks=False)
            else:
                st = os.lstat(name, dir_fd=d)
                now = time.time_ns()
                pair = []
                for value, current in zip(times, (st.st_atime_ns, st.st_mtime_ns), strict=True):
                    # mfusepy hands tv_sec * 1e9 + tv_nsec; libfuse passes
                    # UTIME_NOW / UTIME_OMIT as tv_sec 0 with that tv_nsec.
                    pair.append(now if value == _UTIME_NOW else
                                current if value == _UTIME_OMIT else value)
                os.utime(name, ns=(pair[0], pair[1]), dir_fd=d, follow_symlinks=False)
            mtime = os.lstat(name, dir_fd=d).st_mtime_ns
            m.log(self._op(OpKind.UTIME, path, value=mtime))
        return 0

    @_errno_of
    def setxattr(self, path: str, name: str, value: bytes, options: int,
                 position: int = 0) -> int:
        with self.journal.mutation(len(value)) as m, self._parent(path) as (d, final):
            os.setxattr(f"/proc/self/fd/{d}/{final}", name, value, options,
                        follow_symlinks=False)
            m.log(self._op(OpKind.SETXATTR, path, target=name, data=bytes(value)))
        return 0

    @_errno_of
    def removexattr(self, path: str, name: str) -> int:
        with self.journal.mutation() as m, self._parent(path) as (d, final):
            os.removexattr(f"/proc/self/fd/{d}/{final}", name, follow_symlinks=False)
            m.log(self._op(OpKind.REMOVEXATTR, path, target=name))
        return 0

    def destroy(self, path: str) -> None:
        os.close(self.root_fd)


class MirrorFUSE(mfusepy.FUSE):  # type: ignore[misc]
    """mfusepy's FUSE, passing on what mfusepy 3.1 drops: rename's flags (which
    would turn RENAME_NOREPLACE into a silent replace), ftruncate's
    descriptor, and lseek (SEEK_DATA/SEEK_HOLE)."""

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        return int(self.operations.rename(old.decode(self.encoding, self.errors),
                                          new.decode(self.encoding, self.errors), flags))

    def write(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        # As mfusepy's, plus whether the kernel writes back a page (mmap).
        return int(self.operations.write(
            None if path is None else path.decode(self.encoding, self.errors),
            ctypes.string_at(buf, size), offset, fip.contents.fh,
            writepage=bool(fip.contents.writepage)))

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        # mfusepy 3.1 drops the descriptor of ftruncate(2): without it an
        # ftruncate of an open, unlinked file (no path) could not be made.
        return int(self.operations.truncate(
            None if path is None else path.decode(self.encoding, self.errors), length,
            fip.contents.fh if fip else None))

    def lseek(self, path: bytes | None, offset: int, whence: int, fip: Any) -> int:
        # mfusepy 3.1 declares libfuse's lseek but has no wrapper for it.
        return int(self.operations.lseek(
            None if path is None else path.decode(self.encoding, self.errors),
            offset, whence, fip.contents.fh))

"""Apply log records to a replica, safely and durably.

Confinement: each op's ``path`` (and a RENAME's ``target``) is resolved
component by component from an open descriptor of the replica root
(``targets[tree]``), openat-style, with ``O_NOFOLLOW`` on every directory
component. A record is **refused** if its path fails the one path sanitiser
(:func:`~mirrorkit.agent.util.fs.safe_parts`: absolute, ``..`` or ``.``, NUL,
an empty component, longer than PATH_MAX or a name longer than NAME_MAX),
names a tree the mirror does not have, or passes through *any*
symlink (inside or outside the root: capture never follows symlinks, so a
legitimate record never goes through one, and refusing them all closes
rename races that a realpath-then-open check would leave open). The final
component is never followed either: ops act on the symlink itself or replace
it. Symlink *targets* are stored verbatim and never followed by apply.

A record is applied or the batch stops at it, never skipped: a refused
record raises :class:`RecordFailed` with ``refused`` set (counted in
``refused``), and so does a record that is legal but conflicts with the
replica's state (an ``OSError`` such as renaming a directory into itself,
``EPERM`` on an immutable file; counted in ``conflicts``). The records
before it are durable when the exception arrives; what the receiver does
next (stop, or ask for a resync) is its decision (``stream/receiver.py``).
Resource errors (disk full, I/O error, read-only file system) raise
:class:`ApplyError`: nothing is acknowledged and the batch is retried after
reconnecting.

Durability: :meth:`Applier.apply_batch` returns only after every file and
directory it touched is durable. That is one durability point per batch, not
an fsync per entry: ``syncfs(2)`` once per file system touched (Linux >= 5.8,
where syncfs reports writeback errors; it is called on a descriptor held open
since the applier started, so an error since the previous sync is never
missed). An entry on a file system the applier holds no such descriptor for
(a mount point inside a replica root), or every entry when syncfs is not
available, is fsynced on its own as before. ``apply_batch(stage=...)`` lets
the receiver add its staged ``applied.json`` temp file to the same point.
Replaying a batch after a crash is harmless because every op sets state
absolutely, except RENAME; so after a RENAME the applier flushes and calls
``checkpoint(lsn)`` (the receiver persists its applied LSN), and a RENAME is
never replayed.

The agent runs as root; CHMOD/UTIME open the file with ``O_NOFOLLOW`` and act
on the descriptor.

Ownership: the ``watch`` capture does not replicate it; the ``mount``
capture sends CHOWN (and xattrs, LINK, FALLOCATE), applied on backups and DR
copies so a failover target equals the primary.

Reporting copies (``read_only=True``, async members of kind ``reporting``):
nothing in the replica may be writable by a local user other than the agent.
Apply never chowns there (CHOWN records are skipped) and sets only ``user.*``
xattrs (not ``security.*``: file capabilities; not ``trusted.*``; not POSIX
ACLs, which could grant another user write), so what it creates belongs
to the agent's user (root); in addition every mode it sets has the group and
other write bits cleared, and set-user/group-ID cleared on files (a setuid
file owned by root would be a privilege escalation); an entry it opens that
belongs to someone else (left in the target before it became a replica) is
handed to the agent's user first. Root itself ignores mode bits: this stops
every unprivileged local user, not root (docs/architecture.md, "Reporting
copies").
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from mirrorkit.agent.apply.held_modes import HeldModes, withheld
from mirrorkit.agent.log.records import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    FALLOCATE_MODES,
    Op,
    OpKind,
    Record,
    RecordCorrupt,
    unpack_fallocate,
    unpack_owner,
)
from mirrorkit.agent.util.fs import (
    UnsafePath,
    fallocate,
    safe_parts,
    show_path,
    syncfs,
    syncfs_supported,
)
from mirrorkit.agent.util.walk import remove_tree

__all__ = ["Applier", "ApplyError", "PathRefused", "RecordFailed"]

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Mode bits a reporting copy never has: group/other write; setuid/setgid on files.
_RO_DIR_MASK = ~(stat.S_IWGRP | stat.S_IWOTH) & 0o7777
_RO_FILE_MASK = _RO_DIR_MASK & ~(stat.S_ISUID | stat.S_ISGID)


def reporting_mode(mode: int, is_dir: bool) -> int:
    """The mode a reporting copy stores for the primary's ``mode`` (verify
    compares a reporting copy against this, not against the primary's bits)."""
    return mode & (_RO_DIR_MASK if is_dir else _RO_FILE_MASK)
# Descriptors one batch keeps open until its durability point, per cache: a
# batch of 50,000 records into as many directories or files must not run
# out of descriptors; what falls out is settled (``Applier._settle``).
_MAX_CACHED_DIRS = 64
_MAX_OPEN_FILES = 256
_XATTR_NAMESPACES = ("user.", "trusted.", "security.", "system.posix_acl_access",
                     "system.posix_acl_default")
_XATTR_SIZE_MAX = 65536
_FATAL = {errno.ENOSPC, errno.EIO, errno.EROFS, errno.EDQUOT, errno.ENOMEM, errno.EMFILE,
          errno.ENFILE}


def _what(op: Op) -> str:
    """The record, as messages name it (long paths shortened)."""
    what = f"{op.kind.name} {show_path(op.path)}"
    return what + (f" -> {show_path(op.target)}" if op.kind is OpKind.RENAME else "")


class PathRefused(Exception):
    """The record's path would leave the replica root."""


class ApplyError(Exception):
    """A resource error: the batch is not durable and must not be acknowledged."""


class RecordFailed(Exception):
    """Record ``lsn`` (0: a resync record) was not applied: ``refused`` (its
    path would leave the replica root) or a conflict with the replica. Every
    record before it in the batch is applied and durable."""

    def __init__(self, lsn: int, what: str, reason: str, refused: bool) -> None:
        self.lsn, self.what, self.reason, self.refused = lsn, what, reason, refused
        label = "REFUSED record" if refused else "cannot apply record"
        super().__init__(f"{label} LSN {lsn} ({what}): {reason}")


class Applier:
    """Applies records into ``roots`` (one per mirror tree)."""

    def __init__(self, roots: Sequence[Path], checkpoint: Callable[[int], None] | None = None,
                 label: str = "apply", *, read_only: bool = False,
                 sync_dirs: Sequence[Path] = (), held: HeldModes | None = None) -> None:
        self.roots = list(roots)
        # Non-primary members (not reporting copies, which strip more):
        # files never get setuid/setgid here; their logical modes are kept.
        self.held = held
        self.checkpoint = checkpoint
        self.label = label
        self.read_only = read_only
        self.refused = 0
        self.conflicts = 0
        self._root_fds: list[int] = []
        for root in self.roots:
            root.mkdir(parents=True, exist_ok=True)
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._root_fds.append(fd)
            if read_only:
                self._lock_down(fd, os.fstat(fd).st_mode)
                os.fsync(fd)
        self._dirs: dict[tuple[int, tuple[str, ...]], int] = {}  # LRU order
        self._dirty_dirs: set[int] = set()
        self._dirty_devs: set[int] = set()  # dirty entries already closed, by st_dev
        self._files: dict[tuple[int, tuple[str, ...]], int] = {}
        self._pending: list[int] = []  # metadata-only fds to fsync and close
        # st_dev -> a descriptor open since now, to syncfs that file system with
        # (the roots', and ``sync_dirs``': the receiver's state directory).
        self._sync_fds: dict[int, int] = {}
        self._own_sync_fds: list[int] = []
        if syncfs_supported():
            for fd in self._root_fds:
                self._sync_fds.setdefault(os.fstat(fd).st_dev, fd)
            for path in sync_dirs:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                dev = os.fstat(fd).st_dev
                if dev in self._sync_fds:
                    os.close(fd)
                else:
                    self._sync_fds[dev] = fd
                    self._own_sync_fds.append(fd)

    def close(self) -> None:
        self.flush()
        for fd in [*self._root_fds, *self._own_sync_fds]:
            os.close(fd)
        self._root_fds, self._own_sync_fds = [], []
        self._sync_fds.clear()

    # -- batch --------------------------------------------------------------

    def apply_batch(self, records: Sequence[Record],
                    stage: Callable[[], int] | None = None) -> None:
        """Apply in order; durable on return. Raises :class:`ApplyError`, or
        :class:`RecordFailed` at the first record it cannot apply (the ones
        before it durable, ``stage`` not called).

        ``stage``, called after the last record, returns an open descriptor
        of a file written but not yet synced; it is made durable at the same
        durability point as the batch, then closed."""
        try:
            for record in records:
                self._apply_one(record)
            if stage is not None:
                self._pending.append(stage())
        finally:
            self.flush()

    def _apply_one(self, record: Record) -> None:
        op = record.op
        try:
            self._dispatch(op)
        except (PathRefused, UnsafePath) as exc:
            self.refused += 1
            failed = RecordFailed(record.lsn, _what(op), str(exc), refused=True)
            log.error("%s: %s", self.label, failed)
            raise failed from None
        except OSError as exc:
            if exc.errno in _FATAL:
                raise ApplyError(f"LSN {record.lsn} {op.kind.name} {op.path!r}: {exc}") from exc
            self.conflicts += 1
            failed = RecordFailed(record.lsn, _what(op), str(exc), refused=False)
            log.error("%s: %s", self.label, failed)
            raise failed from exc
        if op.kind in (OpKind.RENAME, OpKind.LINK) and self.checkpoint is not None:
            # RENAME is not idempotent, and LINK replayed after its source was
            # renamed away would fail: never replay either.
            self.flush()
            self.checkpoint(record.lsn)

    def flush(self) -> None:
        """Make everything touched so far durable, then drop the descriptor caches."""
        opened = [*self._files.values(), *self._pending]
        try:
            self._sync([*opened, *self._dirty_dirs])
        finally:
            for fd in [*opened, *self._dirs.values()]:
                os.close(fd)
            self._files.clear()
            self._pending.clear()
            self._dirty_dirs.clear()
            self._dirty_devs.clear()
            self._dirs.clear()

    def _sync(self, fds: list[int]) -> None:
        """One syncfs per file system we hold a sync descriptor for; fsync the rest."""
        if not fds and not self._dirty_devs:
            return
        if self._sync_fds:
            devs: set[int] = set(self._dirty_devs)
            rest: list[int] = []
            for fd in fds:
                dev = os.fstat(fd).st_dev
                if dev in self._sync_fds:
                    devs.add(dev)
                else:
                    rest.append(fd)
            for dev in devs:
                try:
                    syncfs(self._sync_fds[dev])
                except OSError as exc:
                    if exc.errno not in (errno.ENOSYS, errno.EINVAL, errno.EBADF):
                        raise  # a writeback error: the batch is not durable
                    log.warning("%s: syncfs failed (%s); fsyncing each entry from now on",
                                self.label, exc)
                    self._sync_fds.clear()
                    rest = fds
                    if self._dirty_devs:
                        os.sync()  # entries closed already: sync(2) waits for them
                    break
            fds = rest
        for fd in fds:
            os.fsync(fd)

    # -- resolution ---------------------------------------------------------

    def _root(self, tree: int) -> int:
        if not 0 <= tree < len(self._root_fds):
            raise PathRefused(f"tree {tree} does not exist (mirror has {len(self.roots)})")
        return self._root_fds[tree]

    def _dir(self, tree: int, parts: tuple[str, ...], create: bool) -> int | None:
        """Descriptor of directory ``parts`` under the root (never a symlink);
        ``None`` if absent and not ``create``.

        Iterative, one ``openat`` per component from the deepest cached
        ancestor: a path thousands of levels deep (deeper than an absolute
        path may be) needs no recursion and holds at most two descriptors of
        its own on the way; only the result is cached (at most
        :data:`_MAX_CACHED_DIRS`, least recently used first out)."""
        if not parts:
            return self._root(tree)
        key = (tree, parts)
        fd = self._dirs.pop(key, None)
        if fd is not None:
            self._dirs[key] = fd  # most recently used last
            return fd
        start, fd = 0, self._root(tree)
        for (t, p), cached in self._dirs.items():
            if t == tree and start < len(p) < len(parts) and parts[:len(p)] == p:
                start, fd = len(p), cached
        owned: int | None = None  # opened on the way, neither cached nor a root
        try:
            for depth in range(start, len(parts)):
                child = self._open_child(tree, parts, depth, fd, create)
                if owned is not None:
                    self._settle(owned, owned in self._dirty_dirs)
                owned = child
                if child is None:
                    return None
                fd = child
        except BaseException:
            if owned is not None:
                self._settle(owned, owned in self._dirty_dirs)
            raise
        assert owned is not None
        while len(self._dirs) >= _MAX_CACHED_DIRS:
            oldest = next(iter(self._dirs))
            evicted = self._dirs.pop(oldest)
            self._settle(evicted, evicted in self._dirty_dirs)
        self._dirs[key] = owned
        return owned

    def _open_child(self, tree: int, parts: tuple[str, ...], depth: int, parent: int,
                    create: bool) -> int | None:
        """Directory ``parts[depth]`` of ``parent`` opened without following a
        symlink (created, or replacing a non-directory, with ``create``)."""
        name = parts[depth]
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                return None
            os.mkdir(name, 0o755, dir_fd=parent)
            self._dirty_dirs.add(parent)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            here = parts[:depth + 1]
            if stat.S_ISLNK(st.st_mode):
                raise PathRefused(f"path passes through symlink {show_path('/'.join(here))}") \
                    from exc
            if not create:
                return None
            # The primary has a directory where we have a file: follow it.
            log.warning("%s: replacing non-directory %s by a directory", self.label,
                        show_path("/".join(here)))
            self._forget(tree, here)
            self.forget_held(tree, "/".join(here))
            os.unlink(name, dir_fd=parent)
            os.mkdir(name, 0o755, dir_fd=parent)
            self._dirty_dirs.add(parent)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        if self.read_only:
            try:
                self._lock_down(fd, os.fstat(fd).st_mode)
            except BaseException:
                os.close(fd)
                raise
            self._dirty_dirs.add(fd)
        return fd

    def _settle(self, fd: int, dirty: bool) -> None:
        """Close ``fd`` before the batch's durability point without losing
        it: a dirty entry on a file system syncfs covers is remembered by
        device (synced at :meth:`flush`), any other is fsynced now."""
        self._dirty_dirs.discard(fd)
        try:
            if dirty:
                dev = os.fstat(fd).st_dev
                if dev in self._sync_fds:
                    self._dirty_devs.add(dev)
                else:
                    os.fsync(fd)
        finally:
            os.close(fd)

    def _entry(self, tree: int, path: str, create: bool) -> tuple[int | None, str,
                                                                  tuple[str, ...]]:
        parts = safe_parts(path, allow_root=True)
        if not parts:
            return self._root(tree), ".", parts
        return self._dir(tree, parts[:-1], create), parts[-1], parts

    @staticmethod
    def _lstat(d: int, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=d, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def logical_mode(self, tree: int, rel: str, mode: int) -> int:
        """The primary's mode of regular file ``rel`` whose mode here is
        ``mode`` (what manifests report: setuid/setgid held back count)."""
        return mode if self.held is None else self.held.logical(tree, rel, mode)

    def forget_held(self, tree: int, rel: str) -> None:
        """``rel`` (and what is below it) left the replica by other means
        (quarantine, a divergent tail undone): its held modes go too."""
        if self.held is not None:
            self.held.forget(tree, rel)

    def _remove(self, tree: int, parts: tuple[str, ...], d: int, name: str,
                st: os.stat_result | None) -> None:
        """Remove entry ``name`` (= ``parts``) of directory ``d``, any type."""
        self._forget(tree, parts)
        if st is None:
            return
        self.forget_held(tree, "/".join(parts))  # before: the table is never behind
        if stat.S_ISDIR(st.st_mode):
            remove_tree(d, name)  # fd-based, iterative: never follows symlinks
        else:
            os.unlink(name, dir_fd=d)
        self._dirty_dirs.add(d)

    def _forget(self, tree: int, parts: tuple[str, ...]) -> None:
        """Close cached descriptors of ``parts`` and everything below it."""
        n = len(parts)
        for cache in (self._files, self._dirs):
            for key in [k for k in cache if k[0] == tree and k[1][:n] == parts]:
                fd = cache.pop(key)
                self._dirty_dirs.discard(fd)
                os.close(fd)

    # -- ops ----------------------------------------------------------------

    def _dispatch(self, op: Op) -> None:
        kind = op.kind
        if kind is OpKind.MARK:
            return
        if kind is OpKind.RENAME:
            self._rename(op)
            return
        if kind is OpKind.LINK:
            self._link(op)
            return
        d, name, parts = self._entry(op.tree, op.path,
                                     create=kind not in (OpKind.UNLINK, OpKind.RMDIR,
                                                         OpKind.CHMOD, OpKind.UTIME,
                                                         OpKind.CHOWN, OpKind.SETXATTR,
                                                         OpKind.REMOVEXATTR))
        if name == "." and kind not in (OpKind.MKDIR, OpKind.CHMOD, OpKind.UTIME,
                                        OpKind.CHOWN, OpKind.SETXATTR, OpKind.REMOVEXATTR):
            raise PathRefused(f"{kind.name} on the replica root itself")
        if d is None:
            return  # parent absent: nothing to remove or change
        if kind is OpKind.MKDIR:
            self._mkdir(op.tree, parts, d, name, op.value)
        elif kind is OpKind.CREATE:
            fd = self._file(op.tree, parts, d, name)
            os.ftruncate(fd, 0)
            if self.held is not None:
                self.held.hold(op.tree, op.path, op.value)  # durable before the chmod
            os.fchmod(fd, self._mode(fd, op.value))
        elif kind is OpKind.WRITE:
            fd = self._file(op.tree, parts, d, name)
            view = memoryview(op.data)
            done = 0
            while done < len(view):
                done += os.pwrite(fd, view[done:], op.value + done)
        elif kind is OpKind.TRUNCATE:
            os.ftruncate(self._file(op.tree, parts, d, name), op.value)
        elif kind in (OpKind.UNLINK, OpKind.RMDIR):
            self._remove(op.tree, parts, d, name, self._lstat(d, name))
        elif kind is OpKind.SYMLINK:
            self._remove(op.tree, parts, d, name, self._lstat(d, name))
            os.symlink(op.target, name, dir_fd=d)
            self._dirty_dirs.add(d)
        elif kind in (OpKind.CHMOD, OpKind.UTIME):
            self._metadata(d, name, op)
        elif kind is OpKind.CHOWN:
            self._chown(d, name, op)
        elif kind in (OpKind.SETXATTR, OpKind.REMOVEXATTR):
            self._xattr(d, name, op)
        elif kind is OpKind.FALLOCATE:
            self._fallocate(self._file(op.tree, parts, d, name), op)
        else:
            raise PathRefused(f"record kind {kind.name} is not one this applier knows")

    # -- the mount capture's kinds (LINK, CHOWN, xattrs, FALLOCATE) -----------

    def _link(self, op: Op) -> None:
        self.flush()  # like RENAME: names change under cached descriptors
        dst_parts = safe_parts(op.path)
        src_parts = safe_parts(op.target)
        sd = self._dir(op.tree, src_parts[:-1], create=False)
        src_st = self._lstat(sd, src_parts[-1]) if sd is not None else None
        if sd is None or src_st is None:
            log.debug("%s: LINK source %r absent; nothing to do", self.label, op.target)
            return
        if not stat.S_ISREG(src_st.st_mode):
            raise OSError(errno.EPERM, f"LINK source {show_path(op.target)} is not a regular "
                          "file (only files are hard-linked)")
        dd = self._dir(op.tree, dst_parts[:-1], create=True)
        assert dd is not None
        dst_st = self._lstat(dd, dst_parts[-1])
        if dst_st is not None:
            if (dst_st.st_dev, dst_st.st_ino) == (src_st.st_dev, src_st.st_ino):
                return  # replayed: already that file
            self._remove(op.tree, dst_parts, dd, dst_parts[-1], dst_st)
            sd = self._dir(op.tree, src_parts[:-1], create=False)
            dd = self._dir(op.tree, dst_parts[:-1], create=True)
            assert sd is not None and dd is not None
        os.link(src_parts[-1], dst_parts[-1], src_dir_fd=sd, dst_dir_fd=dd,
                follow_symlinks=False)
        self._dirty_dirs.update((sd, dd))

    def _chown(self, d: int, name: str, op: Op) -> None:
        if self.read_only:
            return  # a reporting copy keeps everything the agent's (module docstring)
        uid, gid = unpack_owner(op.value)
        try:
            os.chown(name, uid, gid, dir_fd=d, follow_symlinks=False)
        except FileNotFoundError:
            return  # removed later on the primary; a later record says so
        self._dirty_dirs.add(d)

    def _xattr(self, d: int, name: str, op: Op) -> None:
        attr = op.target
        if not attr.startswith(_XATTR_NAMESPACES) or len(attr.encode()) > 255 \
                or len(op.data) > _XATTR_SIZE_MAX:
            raise PathRefused(f"extended attribute {attr[:64]!r} ({len(op.data)} bytes): "
                              "not a user./trusted./security./POSIX ACL name of at most "
                              f"255 bytes with a value of at most {_XATTR_SIZE_MAX}")
        if self.read_only and not attr.startswith("user."):
            return  # capabilities, ACLs, trusted.*: never on a reporting copy
        where = f"/proc/self/fd/{d}/{name}" if name != "." else f"/proc/self/fd/{d}"
        try:
            if op.kind is OpKind.SETXATTR:
                os.setxattr(where, attr, op.data, follow_symlinks=False)
            else:
                try:
                    os.removexattr(where, attr, follow_symlinks=False)
                except OSError as exc:
                    if exc.errno != errno.ENODATA:  # absent is fine
                        raise
        except FileNotFoundError:
            return
        self._dirty_dirs.add(d)

    def _fallocate(self, fd: int, op: Op) -> None:
        try:
            length, mode = unpack_fallocate(op.data)
        except RecordCorrupt as exc:
            raise PathRefused(str(exc)) from None
        if mode not in FALLOCATE_MODES or op.value < 0:
            raise PathRefused(f"fallocate mode {mode:#x} at {op.value} cannot be replayed")
        try:
            fallocate(fd, mode, op.value, length)
            return
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                raise
        # This file system lacks the mode: the same bytes and size another way.
        log.debug("%s: fallocate mode %#x unsupported here; emulated", self.label, mode)
        end = op.value + length
        if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            size = os.fstat(fd).st_size
            stop = min(end, size) if mode & FALLOC_FL_KEEP_SIZE else end
            pos = op.value
            zeros = bytes(1 << 20)
            while pos < stop:
                pos += os.pwrite(fd, zeros[: min(len(zeros), stop - pos)], pos)
        elif not mode & FALLOC_FL_KEEP_SIZE and os.fstat(fd).st_size < end:
            os.ftruncate(fd, end)

    def _file(self, tree: int, parts: tuple[str, ...], d: int, name: str) -> int:
        key = (tree, parts)
        fd = self._files.get(key)
        if fd is not None:
            return fd
        # O_NONBLOCK: a fifo left where the primary has a file fails (ENXIO, a
        # conflict) instead of blocking the applier for ever; no effect on files.
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, 0o600, dir_fd=d)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.EISDIR):
                raise
            # A symlink or directory where the primary has a file: replace it.
            self._remove(tree, parts, d, name, self._lstat(d, name))
            fd = os.open(name, flags, 0o600, dir_fd=d)
        if self.read_only:
            self._lock_down(fd, os.fstat(fd).st_mode)
        self._dirty_dirs.add(d)
        if len(self._files) >= _MAX_OPEN_FILES:
            self._settle(self._files.pop(next(iter(self._files))), True)
        self._files[key] = fd
        return fd

    def _mode(self, fd: int, mode: int) -> int:
        """``mode`` as this replica stores it (reporting: never user-writable;
        any other non-primary member: files without setuid/setgid)."""
        if not self.read_only:
            if self.held is not None and stat.S_ISREG(os.fstat(fd).st_mode):
                return withheld(mode)
            return mode & 0o7777
        st = os.fstat(fd)
        return reporting_mode(mode, stat.S_ISDIR(st.st_mode))

    def _lock_down(self, fd: int, current: int) -> None:
        """Reporting: make an entry the agent's own and not writable by others."""
        st = os.fstat(fd)
        uid, gid = os.geteuid(), os.getegid()
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)  # clears setuid/setgid, so re-set the mode below
        mode = self._mode(fd, current)
        if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
            os.fchmod(fd, mode)

    def _mkdir(self, tree: int, parts: tuple[str, ...], d: int, name: str,
               mode: int) -> None:
        if name != ".":
            st = self._lstat(d, name)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                self._remove(tree, parts, d, name, st)
                st = None
            if st is None:
                os.mkdir(name, 0o700, dir_fd=d)
                self._dirty_dirs.add(d)
        self._metadata(d, name, Op(OpKind.CHMOD, 0, name, value=mode))

    def _metadata(self, d: int, name: str, op: Op) -> None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=d)
        except FileNotFoundError:
            return  # removed later on the primary; a later record says so
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            if op.kind is OpKind.UTIME:  # symlink: set its own time, never the target's
                st = os.stat(name, dir_fd=d, follow_symlinks=False)
                os.utime(name, ns=(st.st_atime_ns, op.value), dir_fd=d, follow_symlinks=False)
                self._dirty_dirs.add(d)
            return
        if len(self._pending) >= _MAX_OPEN_FILES:
            self._settle(self._pending.pop(0), True)
        self._pending.append(fd)
        if self.read_only:
            self._lock_down(fd, os.fstat(fd).st_mode)
        if op.kind is OpKind.CHMOD:
            if self.held is not None and name != "." and stat.S_ISREG(os.fstat(fd).st_mode):
                self.held.hold(op.tree, op.path, op.value)  # durable before the chmod
            os.fchmod(fd, self._mode(fd, op.value))
        else:
            os.utime(fd, ns=(os.fstat(fd).st_atime_ns, op.value))

    def _rename(self, op: Op) -> None:
        self.flush()  # paths change: cached descriptors would point elsewhere
        src_parts = safe_parts(op.path, allow_root=True)
        dst_parts = safe_parts(op.target, allow_root=True)
        if not src_parts or not dst_parts:
            raise PathRefused("RENAME of or onto the replica root")
        sd = self._dir(op.tree, src_parts[:-1], create=False)
        src_st = self._lstat(sd, src_parts[-1]) if sd is not None else None
        if sd is None or src_st is None:
            log.debug("%s: RENAME source %r absent; nothing to do", self.label, op.path)
            return
        dd = self._dir(op.tree, dst_parts[:-1], create=True)
        assert dd is not None
        dst_st = self._lstat(dd, dst_parts[-1])
        if dst_st is not None and (stat.S_ISDIR(dst_st.st_mode) or
                                   stat.S_ISDIR(src_st.st_mode)):
            if (dst_st.st_dev, dst_st.st_ino) == (src_st.st_dev, src_st.st_ino):
                return
            self._remove(op.tree, dst_parts, dd, dst_parts[-1], dst_st)
            # The removal may have closed cached descriptors: resolve again.
            sd = self._dir(op.tree, src_parts[:-1], create=False)
            dd = self._dir(op.tree, dst_parts[:-1], create=True)
            assert sd is not None and dd is not None
        if self.held is not None:
            self.held.rename(op.tree, op.path, op.target)  # before: never behind
        os.rename(src_parts[-1], dst_parts[-1], src_dir_fd=sd, dst_dir_fd=dd)
        self._dirty_dirs.update((sd, dd))

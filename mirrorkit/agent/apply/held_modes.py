"""Replica privilege: the set-user-ID and set-group-ID bits a non-primary
member holds back from its files (:class:`HeldModes`), and the two steps of a
role change that move them (:func:`restore_held` on promotion,
:meth:`HeldModes.sweep` when a member starts as a receiver).

Policy (docs/architecture.md, "Replica privilege"): on every member that is
not the primary (backup, DR and reporting copies) a regular file never has
setuid or setgid set, so a local user there cannot run a replicated
set-user-ID program with privilege the primary's administrator never meant
that host to grant. The primary's mode (the *logical* mode) is kept here,
durably, so that

* verify and resync manifests report the logical mode: no false difference
  and no CHMOD of every such file at every resync;
* a promoted member gets the bits back *before* it becomes writable
  (:func:`restore_held`, called by ``ha.supervisor`` as a step of
  promotion, before the primary's worker starts).

Storage: ``<state_dir>/<mirror>/held_modes.db`` (sqlite, 0600, rollback
journal with ``synchronous=FULL``: each change is durable when its call
returns). Write-ahead: the applier records a mode *before* it chmods the
file and forgets a path *before* it removes or renames it, so after a crash
the table is never behind the replica; a record replayed from the log
repeats both steps. An entry counts only while the file's actual mode is
the logical one without the two bits (:meth:`logical`): a stale entry (a
file replaced by other means) never hands privilege to another file.
Directories keep their bits: setgid on a directory only sets the group of
new entries, and Linux ignores setuid on directories.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from mirrorkit.agent.util.fs import UnsafePath, private_file, safe_parts
from mirrorkit.agent.util.walk import FILE, walk

__all__ = ["HELD_MODES_FILE", "PRIVILEGE_BITS", "HeldModes", "LogicalMode", "restore_held",
           "withheld"]

LogicalMode = Callable[[int, str, int], int]  # (tree, rel, mode here) -> the primary's mode

log = logging.getLogger(__name__)

HELD_MODES_FILE = "held_modes.db"
PRIVILEGE_BITS = stat.S_ISUID | stat.S_ISGID

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS held (
    tree INTEGER NOT NULL, path BLOB NOT NULL, mode INTEGER NOT NULL,
    PRIMARY KEY (tree, path)) WITHOUT ROWID;
"""


def withheld(mode: int) -> int:
    """The mode a non-primary member gives a regular file of logical ``mode``."""
    return mode & 0o7777 & ~PRIVILEGE_BITS


def _b(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def _s(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _subtree(path: str) -> tuple[str, tuple[bytes, ...]]:
    low, high = _b(path) + b"/", _b(path) + b"0"  # '0' sorts right after '/'
    return "(path = ? OR (path >= ? AND path < ?))", (_b(path), low, high)


class HeldModes:
    """The logical modes of the files whose setuid/setgid this member holds back."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        """``readonly``: for another process (verify's manifest) reading the
        table the agent keeps; the file must exist."""
        self.path = path
        if readonly:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        else:
            private_file(path)
            # Applied from a worker thread that may differ call to call (one
            # at a time: the applier's calls never overlap).
            self._db = sqlite3.connect(str(path), isolation_level="DEFERRED",
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=DELETE")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._db.commit()
        self.count = int(self._db.execute("SELECT count(*) FROM held").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def _commit_if(self, cursor: sqlite3.Cursor) -> None:
        if cursor.rowcount:
            self._db.commit()
            self.count = int(self._db.execute("SELECT count(*) FROM held").fetchone()[0])
        else:
            self._db.rollback()

    def hold(self, tree: int, path: str, mode: int) -> None:
        """Regular file ``path`` is to have logical ``mode``: remember it when
        it has bits held back, else forget what was remembered. Durable on
        return; call before the chmod."""
        if mode & PRIVILEGE_BITS:
            self._db.execute("INSERT OR REPLACE INTO held (tree, path, mode) VALUES (?, ?, ?)",
                             (tree, _b(path), mode & 0o7777))
            self._db.commit()
            self.count = int(self._db.execute("SELECT count(*) FROM held").fetchone()[0])
        elif self.count:
            self._commit_if(self._db.execute("DELETE FROM held WHERE tree = ? AND path = ?",
                                             (tree, _b(path))))

    def forget(self, tree: int, path: str) -> None:
        """``path`` and everything below it is removed or replaced (call before)."""
        if not self.count:
            return
        where, args = _subtree(path)
        self._commit_if(self._db.execute(f"DELETE FROM held WHERE tree = ? AND {where}",
                                         (tree, *args)))

    def rename(self, tree: int, src: str, dst: str) -> None:
        """``src`` and everything below it moves to ``dst`` (call before)."""
        if not self.count:
            return
        where, args = _subtree(src)
        rows = self._db.execute(f"SELECT path, mode FROM held WHERE tree = ? AND {where}",
                                (tree, *args)).fetchall()
        dwhere, dargs = _subtree(dst)
        self._db.execute(f"DELETE FROM held WHERE tree = ? AND {dwhere}", (tree, *dargs))
        self._db.execute(f"DELETE FROM held WHERE tree = ? AND {where}", (tree, *args))
        for raw, mode in rows:
            self._db.execute("INSERT OR REPLACE INTO held (tree, path, mode) VALUES (?, ?, ?)",
                             (tree, _b(dst + _s(raw)[len(src):]), mode))
        self._db.commit()
        self.count = int(self._db.execute("SELECT count(*) FROM held").fetchone()[0])

    def logical(self, tree: int, path: str, actual: int) -> int:
        """The logical mode of regular file ``path`` whose mode is ``actual``:
        the held one when ``actual`` is it without the held bits, else
        ``actual`` (a stale entry grants nothing)."""
        if not self.count:
            return actual
        row = self._db.execute("SELECT mode FROM held WHERE tree = ? AND path = ?",
                               (tree, _b(path))).fetchone()
        if row is None or withheld(int(row[0])) != actual & 0o7777:
            return actual
        return int(row[0])

    def entries(self) -> Iterator[tuple[int, str, int]]:
        for tree, raw, mode in self._db.execute("SELECT tree, path, mode FROM held").fetchall():
            yield int(tree), _s(raw), int(mode)

    @property
    def swept(self) -> bool:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'swept'").fetchone()
        return row is not None and row[0] == "1"

    def clear(self) -> None:
        """Forget every entry (a primary holds nothing back); a later start
        as a receiver sweeps again."""
        self._db.execute("DELETE FROM held")
        self.count = 0
        self._set_swept(False)

    def mark_unswept(self) -> None:
        """The next start as a receiver sweeps the tree again (durable)."""
        self._set_swept(False)

    def _set_swept(self, value: bool) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('swept', ?)",
                         ("1" if value else "0",))
        self._db.commit()

    def sweep(self, roots: Sequence[Path]) -> int:
        """Once per receiver term of office (first start, after a demotion or
        an upgrade): hold back the bits of every regular file that still has
        them (a former primary's tree). Returns how many files it changed."""
        if self.swept:
            return 0
        changed = 0
        for tree, root in enumerate(roots):
            if not root.is_dir():
                continue
            for entry in walk(root, tree=tree):
                if entry.kind != FILE or entry.st is None or \
                        not entry.st.st_mode & PRIVILEGE_BITS:
                    continue
                mode = stat.S_IMODE(entry.st.st_mode)
                self.hold(tree, entry.rel, mode)  # before the chmod
                fd = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                             | os.O_CLOEXEC, dir_fd=entry.dir_fd)
                try:
                    os.fchmod(fd, withheld(mode))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                changed += 1
        self._set_swept(True)
        if changed:
            log.warning("%d file(s) of %s held back their setuid/setgid bits (this member is "
                        "not the primary); the primary's modes are kept in %s", changed,
                        ", ".join(map(str, roots)), self.path)
        return changed


def _open_parent(root: Path, parts: tuple[str, ...]) -> int | None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    for part in parts:
        try:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = child
    return fd


def _restore_one(dfd: int, name: str, mode: int) -> int:
    """Give file ``name`` of ``dfd`` logical ``mode`` if it is still the file
    the entry describes (1), else leave it (0). Other errors raise: a member
    that cannot restore its files must not become primary with them wrong."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dfd)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            return 0  # a symlink or a fifo there now: not the held file
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != withheld(mode):
            return 0
        os.fchmod(fd, mode)
        os.fsync(fd)
        return 1
    finally:
        os.close(fd)


def restore_held(mirror_dir: Path, roots: Sequence[Path]) -> int:
    """Promotion step: give every held file its logical mode back, durably,
    then forget the table (a primary holds nothing back). Idempotent: a crash
    in the middle repeats it at the next start as primary. Returns how many
    files got their bits back. Run before the member becomes writable."""
    path = mirror_dir / HELD_MODES_FILE
    if not path.exists():
        return 0
    held = HeldModes(path)
    restored = 0
    try:
        # Durably "not swept" before the first bit comes back: a crash in the
        # middle followed by a start as a receiver (a higher term superseded
        # the promotion) sweeps again instead of keeping restored bits.
        held.mark_unswept()
        for tree, rel, mode in list(held.entries()):
            if not 0 <= tree < len(roots):
                continue
            try:
                parts = safe_parts(rel)
            except UnsafePath:
                continue
            dfd = _open_parent(roots[tree], parts[:-1])
            if dfd is None:
                continue  # gone since: the primary's capture finds what is there
            try:
                restored += _restore_one(dfd, parts[-1], mode)
            finally:
                os.close(dfd)
        held.clear()
    finally:
        held.close()
    if restored:
        log.warning("%s: promotion gave %d file(s) their setuid/setgid bits back",
                    mirror_dir.name, restored)
    return restored

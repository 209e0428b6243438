"""A receiver's manifest: what its replica holds, streamed to the primary for
a difference resync (see :mod:`mirrorkit.agent.resync.compare`).

One item per directory, regular file and symlink below each replica root:
tree, relative path, kind, mode, size, mtime, symlink target, and (``checksum``
mode only) the file's block hashes, computed with the primary's block size
and :func:`~mirrorkit.agent.util.hashing.block_digest` (the one block hash of
the product). The walk never follows a symlink and holds one directory
listing per level plus one file's hashes, so memory does not grow with the
tree. A big file's hashes are split into several items (``first_block``
> 0 continues the previous item of the same path), so no frame exceeds
:data:`MAX_HASHES_PER_ITEM` hashes.

Wire encoding of one item (big-endian), concatenated in a ``MANIFEST`` frame::

    u16 tree, u8 kind ('f'|'d'|'l'), u32 mode, u64 size, i64 mtime_ns,
    u16 len(path), path, u16 len(target), target, u32 first_block,
    u32 n_hashes, n_hashes * DIGEST_SIZE bytes
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from mirrorkit.agent.capture.filespec import is_excluded
from mirrorkit.agent.capture.index import DIR, FILE, LINK
from mirrorkit.agent.transport.manifest_items import MAX_HASHES_PER_ITEM, ManifestItem
from mirrorkit.agent.util.hashing import DIGEST_SIZE, block_digest

__all__ = ["MAX_HASHES_PER_ITEM", "ManifestItem", "walk_replica"]













def _file_hashes(dir_fd: int, name: str, block_size: int) -> Iterator[bytes]:
    """Block hashes of one file, in chunks of at most MAX_HASHES_PER_ITEM."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError:
        return  # unreadable here: no hashes, so the primary sends every block
    with os.fdopen(fd, "rb") as f:
        chunk = bytearray()
        while block := f.read(block_size):
            chunk += block_digest(block)
            if len(chunk) >= MAX_HASHES_PER_ITEM * DIGEST_SIZE:
                yield bytes(chunk)
                chunk.clear()
        if chunk:
            yield bytes(chunk)


def walk_replica(roots: list[Path], block_size: int, with_hashes: bool,
                 exclude: Sequence[str] = ()) -> Iterator[ManifestItem]:
    """Every directory, regular file and symlink below ``roots`` (not the roots
    themselves), parents before children, except what ``exclude`` leaves out
    (the mirror's patterns, as capture applies them). Other kinds (fifos,
    sockets, device nodes) are not mirrored and not listed."""
    for tree, root in enumerate(roots):
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            path = os.path.join(root, rel_dir) if rel_dir else str(root)
            try:
                dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    continue
                raise
            try:
                for name in sorted(os.listdir(dfd)):
                    rel = f"{rel_dir}/{name}" if rel_dir else name
                    if exclude and is_excluded(rel, exclude):
                        continue
                    try:
                        st = os.lstat(name, dir_fd=dfd)
                    except FileNotFoundError:
                        continue
                    mode = stat.S_IMODE(st.st_mode)
                    if stat.S_ISDIR(st.st_mode):
                        yield ManifestItem(tree, rel, DIR, mode)
                        stack.append(rel)
                    elif stat.S_ISLNK(st.st_mode):
                        yield ManifestItem(tree, rel, LINK, target=os.readlink(name, dir_fd=dfd))
                    elif stat.S_ISREG(st.st_mode):
                        first = 0
                        chunks = _file_hashes(dfd, name, block_size) if with_hashes else iter(())
                        head = next(chunks, b"")
                        yield ManifestItem(tree, rel, FILE, mode, st.st_size, st.st_mtime_ns,
                                           hashes=head)
                        first = len(head) // DIGEST_SIZE
                        for more in chunks:
                            yield ManifestItem(tree, rel, FILE, mode, st.st_size,
                                               st.st_mtime_ns, first_block=first, hashes=more)
                            first += len(more) // DIGEST_SIZE
            finally:
                os.close(dfd)

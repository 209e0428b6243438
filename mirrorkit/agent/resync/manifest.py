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

import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from mirrorkit.agent.apply.held_modes import LogicalMode
from mirrorkit.agent.capture.filespec import excluder
from mirrorkit.agent.capture.index import DIR, FILE, LINK
from mirrorkit.agent.transport.manifest_items import MAX_HASHES_PER_ITEM, ManifestItem
from mirrorkit.agent.util.fs import open_file_nofollow
from mirrorkit.agent.util.hashing import DIGEST_SIZE, read_blocks
from mirrorkit.agent.util.walk import WalkEntry, walk

__all__ = ["MAX_HASHES_PER_ITEM", "ManifestItem", "walk_replica"]

def _file_hashes(dir_fd: int, name: str, block_size: int) -> Iterator[bytes]:
    """Block hashes of one file, in chunks of at most MAX_HASHES_PER_ITEM."""
    try:
        opened = open_file_nofollow(name, dir_fd)
    except OSError:
        opened = None
    if opened is None:
        return  # unreadable here: no hashes, so the primary sends every block
    fd = opened[0]
    try:
        chunk = bytearray()
        for _, _, digest in read_blocks(fd, block_size):
            chunk += digest
            if len(chunk) >= MAX_HASHES_PER_ITEM * DIGEST_SIZE:
                yield bytes(chunk)
                chunk.clear()
        if chunk:
            yield bytes(chunk)
    finally:
        os.close(fd)


def _file_items(entry: WalkEntry, block_size: int, with_hashes: bool,
                logical: LogicalMode | None) -> Iterator[ManifestItem]:
    assert entry.st is not None
    st = entry.st
    mode = stat.S_IMODE(st.st_mode)
    if logical is not None:
        mode = logical(entry.tree, entry.rel, mode)
    chunks = _file_hashes(entry.dir_fd, entry.name, block_size) if with_hashes else iter(())
    head = next(chunks, b"")
    yield ManifestItem(entry.tree, entry.rel, FILE, mode, st.st_size, st.st_mtime_ns, hashes=head)
    first = len(head) // DIGEST_SIZE
    for more in chunks:
        yield ManifestItem(entry.tree, entry.rel, FILE, mode, st.st_size, st.st_mtime_ns,
                           first_block=first, hashes=more)
        first += len(more) // DIGEST_SIZE


def walk_replica(roots: list[Path], block_size: int, with_hashes: bool,
                 exclude: Sequence[str] = (),
                 logical: LogicalMode | None = None) -> Iterator[ManifestItem]:
    """Every directory, regular file and symlink below ``roots`` (not the roots
    themselves), in the one walker's order (parents before children), except
    what ``exclude`` leaves out (the mirror's patterns, as capture applies
    them). Other kinds (fifos, sockets, device nodes) are not mirrored and
    not listed; a missing root lists nothing. ``logical(tree, rel, mode)``
    gives a file's mode as the primary has it (setuid/setgid this member
    holds back: ``apply.held_modes``), so a resync sends no CHMOD for them."""
    for tree, root in enumerate(roots):
        for entry in walk(root, tree=tree, skip=excluder(exclude)):
            assert entry.st is not None
            if entry.kind == DIR:
                yield ManifestItem(tree, entry.rel, DIR, stat.S_IMODE(entry.st.st_mode))
            elif entry.kind == LINK:
                try:
                    target = os.readlink(entry.name, dir_fd=entry.dir_fd)
                except OSError:
                    continue  # replaced while we looked
                yield ManifestItem(tree, entry.rel, LINK, target=target)
            else:
                yield from _file_items(entry, block_size, with_hashes, logical)

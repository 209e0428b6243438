"""The block hash and the one loop that hashes a file block by block, used by
capture, the index, resync and verify."""

from __future__ import annotations

import os
from collections.abc import Iterator

import xxhash

__all__ = ["DIGEST_SIZE", "HASH_NAME", "block_digest", "read_blocks"]

# The block hash (one function, used by capture, resync and the index):
# xxh3-128, chosen by measurement (docs/architecture.md, "Block hash"): 16 B
# per block, ~14x faster than blake2b-128 here. HASH_NAME is stored in the
# index; an index written with another hash is rehashed, never misread.
DIGEST_SIZE = 16


HASH_NAME = "xxh3_128"


def block_digest(block: bytes | memoryview) -> bytes:
    return xxhash.xxh3_128_digest(block)


def _fill(fd: int, view: memoryview, offset: int) -> int:
    """Read into ``view`` from ``offset`` until it is full or the file ends."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


def read_blocks(fd: int, block_size: int) -> Iterator[tuple[int, memoryview, bytes]]:
    """``(offset, data, digest)`` of each ``block_size`` block of the open
    file ``fd``, from offset 0 to the end of the file as it was when each
    block was read; the last block may be short, and a short block ends the
    file (a file growing meanwhile is read again at its next change, so block
    boundaries always stay at multiples of ``block_size``).

    ``data`` is a view into one buffer reused for every block: valid until the
    next block is read; ``bytes(data)`` to keep it."""
    buf = memoryview(bytearray(block_size))
    offset = 0
    while True:
        n = _fill(fd, buf, offset)
        if n == 0:
            return
        data = buf[:n]
        yield offset, data, block_digest(data)
        offset += n
        if n < block_size:
            return

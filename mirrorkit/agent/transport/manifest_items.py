"""The wire form of a replica manifest's items (``MANIFEST`` frames)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from mirrorkit.agent.util.hashing import DIGEST_SIZE

__all__ = ["MAX_HASHES_PER_ITEM", "MAX_ITEMS_PER_FRAME", "ManifestCorrupt", "ManifestItem",
           "decode_items", "encode_item"]

MAX_HASHES_PER_ITEM = 1 << 16  # 1 MiB of hashes per item
# Items per MANIFEST frame: decoding costs per item, so a frame of 1 MiB of
# 35-byte items (30,000) would be ~10x the work of one at this bound. The
# receiver (resync/receiver) cuts its frames here; more is refused.
MAX_ITEMS_PER_FRAME = 4096


_HEAD = struct.Struct(">HBIQq")


_TAIL = struct.Struct(">II")


_KINDS = {"f": ord("f"), "d": ord("d"), "l": ord("l")}  # file, directory, symlink


_KIND_OF = {v: k for k, v in _KINDS.items()}


class ManifestCorrupt(ValueError):
    """A manifest item does not parse."""


@dataclass(frozen=True, slots=True)
class ManifestItem:
    tree: int
    path: str
    kind: str
    mode: int = 0
    size: int = 0
    mtime_ns: int = 0
    target: str = ""
    first_block: int = 0
    hashes: bytes = b""


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def encode_item(item: ManifestItem) -> bytes:
    path, target = _enc(item.path), _enc(item.target)
    return b"".join((
        _HEAD.pack(item.tree, _KINDS[item.kind], item.mode, item.size, item.mtime_ns),
        _LEN16.pack(len(path)), path, _LEN16.pack(len(target)), target,
        _TAIL.pack(item.first_block, len(item.hashes) // DIGEST_SIZE), item.hashes,
    ))


def decode_items(buf: bytes, max_items: int | None = None) -> list[ManifestItem]:
    """The items in ``buf``; :class:`ManifestCorrupt` for anything else,
    including more than ``max_items`` items or one with more than
    :data:`MAX_HASHES_PER_ITEM` hashes."""
    items: list[ManifestItem] = []
    pos = 0
    try:
        while pos < len(buf):
            if max_items is not None and len(items) >= max_items:
                raise ManifestCorrupt(f"more than {max_items} manifest items in one frame")
            tree, kind, mode, size, mtime_ns = _HEAD.unpack_from(buf, pos)
            pos += _HEAD.size
            (plen,) = _LEN16.unpack_from(buf, pos)
            path = buf[pos + 2 : pos + 2 + plen].decode("utf-8", "surrogateescape")
            pos += 2 + plen
            (tlen,) = _LEN16.unpack_from(buf, pos)
            target = buf[pos + 2 : pos + 2 + tlen].decode("utf-8", "surrogateescape")
            pos += 2 + tlen
            first, count = _TAIL.unpack_from(buf, pos)
            pos += _TAIL.size
            if count > MAX_HASHES_PER_ITEM:
                raise ManifestCorrupt(f"item with {count} block hashes (at most "
                                      f"{MAX_HASHES_PER_ITEM})")
            hashes = bytes(buf[pos : pos + count * DIGEST_SIZE])
            pos += count * DIGEST_SIZE
            if pos > len(buf) or kind not in _KIND_OF:
                raise ManifestCorrupt("truncated item or unknown kind")
            items.append(ManifestItem(tree, path, _KIND_OF[kind], mode, size, mtime_ns,
                                      target, first, hashes))
    except struct.error as exc:
        raise ManifestCorrupt(f"malformed manifest item: {exc}") from None
    return items


_LEN16 = struct.Struct(">H")

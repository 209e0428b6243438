"""The watch capture's map of its inotify watches (:class:`WatchMap`): which
watch descriptor watches which directory of the trees, and back.

Kept by descriptor as well as by path: a renamed directory keeps its
descriptor while its path changes, and a directory replaced under the same
name gets a new one. Bookkeeping only: adding and removing the kernel's
watches is :class:`~mirrorkit.agent.capture.watch.WatchCapture`'s, and so is
the threading (the map is touched like the rest of its state).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Key", "Move", "WatchMap", "under"]

Key = tuple[int, str]  # (tree index, path relative to the tree's root)


def under(path: str, top: str) -> bool:
    return not top or path == top or path.startswith(top + "/")


@dataclass(frozen=True)
class Move:
    """An IN_MOVED_FROM waiting for its IN_MOVED_TO."""

    tree: int
    rel: str
    wds: frozenset[int]  # watches under the moved directory at IN_MOVED_FROM time
    deadline: float
    seq: int  # WatchMap.seq then: a watch (re)added later was re-verified since


class WatchMap:
    def __init__(self) -> None:
        self.by_wd: dict[int, Key] = {}
        self.by_path: dict[Key, int] = {}
        self._added: dict[int, int] = {}  # when each watch was last (re)added
        self.seq = 0
        self.seen: set[int] | None = None  # during a full scan: the watches it (re)added

    def __len__(self) -> int:
        return len(self.by_wd)

    def get(self, wd: int) -> Key | None:
        return self.by_wd.get(wd)

    def add(self, wd: int, key: Key) -> None:
        """Watch ``wd`` was (re)added on ``key``'s directory."""
        old = self.by_wd.get(wd)
        if old is not None and old != key and self.by_path.get(old) == wd:
            del self.by_path[old]  # the same inode, known under a stale path
        self.by_wd[wd] = key
        self.by_path[key] = wd
        self.seq += 1
        self._added[wd] = self.seq
        if self.seen is not None:
            self.seen.add(wd)

    def forget(self, wd: int) -> None:
        key = self.by_wd.pop(wd, None)
        self._added.pop(wd, None)
        if key is not None and self.by_path.get(key) == wd:
            del self.by_path[key]

    def under(self, tree: int, rel: str) -> frozenset[int]:
        return frozenset(wd for (t, p), wd in self.by_path.items() if t == tree and under(p, rel))

    def moved(self, move: Move) -> list[int]:
        """The watches that still belong to the moved directory's old place:
        not re-added (and so re-located) by a scan since IN_MOVED_FROM."""
        out = []
        for wd in move.wds:
            where = self.by_wd.get(wd)
            if (
                where is not None and where[0] == move.tree and under(where[1], move.rel)
                and self._added.get(wd, 0) <= move.seq
            ):
                out.append(wd)
        return out

    def remap(self, move: Move, dst: str) -> None:
        """After a rename, the watches under the source are ``dst``'s."""
        tree, src = move.tree, move.rel
        for wd in self.moved(move):
            where = self.by_wd[wd]
            if self.by_path.get(where) == wd:
                del self.by_path[where]
            new = (tree, dst + where[1][len(src) :])
            self.by_wd[wd] = new
            self.by_path[new] = wd

    def clear(self) -> None:
        """Forget every watch (their inotify instance is closed)."""
        self.by_wd.clear()
        self.by_path.clear()

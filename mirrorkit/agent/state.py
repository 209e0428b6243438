"""Per-mirror runtime state: ``<state_dir>/<mirror>/state.json``.

``state.json`` holds ``{term, role, primary}``: who this member *is* now. It
outranks the config's ``role``, which is only the initial layout (so a
re-applied config never forces the inventory's primary over a newer one).
``applied.json`` holds the last LSN a receiver made durable in its replica.

Every write is atomic and durable: temp file in the same directory, fsync,
rename, fsync of the directory. A crash leaves either the old or the new file.

The receiver's per-batch ``applied.json`` takes a cheaper path with the same
result (:meth:`StateStore.stage_applied` / :meth:`StateStore.commit_applied`):
the temp file is written but not fsynced; the applier's durability point for
the batch (``syncfs`` of every file system it touched, the state directory's
included, or an fsync of the temp file where ``syncfs`` cannot be trusted)
makes its contents durable together with the replica data; only then is it
renamed over ``applied.json`` and the directory fsynced. So ``applied.json``
never names contents that are not durable, and never an LSN whose replica data
is not durable.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mirrorkit.atomicfile import atomic_write, fsync_dir, temp_path, write_all

__all__ = ["MirrorState", "StateStore", "atomic_write_json"]

log = logging.getLogger(__name__)










@dataclass(frozen=True, slots=True)
class MirrorState:
    term: int
    role: str
    primary: str | None



def _encode(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode() + b"\n"


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write(path, _encode(value))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        # A damaged state file is reported, not guessed around silently: the
        # caller falls back to the config and says so.
        log.error("state file %s unreadable (%s); ignoring it", path, exc)
        return None
    return value if isinstance(value, dict) else None


class StateStore:
    """The state files of one mirror on this host."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.state_path = directory / "state.json"
        self.applied_path = directory / "applied.json"

    def load(self, default_role: str, default_primary: str | None) -> MirrorState:
        """Return the persisted state, creating it from the config on first start."""
        raw = _read_json(self.state_path)
        if raw is not None:
            try:
                term, role, primary = raw["term"], raw["role"], raw.get("primary")
                if isinstance(term, int) and term >= 1 and isinstance(role, str) and (
                    primary is None or isinstance(primary, str)
                ):
                    return MirrorState(term, role, primary)
            except KeyError:
                pass
            log.error("state file %s malformed: %r; using the config role", self.state_path, raw)
        state = MirrorState(1, default_role, default_primary)
        self.save(state)
        log.info("no state for %s: starting as %s, term 1", self.directory.name, default_role)
        return state

    def save(self, state: MirrorState) -> None:
        atomic_write_json(self.state_path, asdict(state))

    def load_applied(self) -> int:
        raw = _read_json(self.applied_path)
        lsn = raw.get("lsn") if raw else 0
        return lsn if isinstance(lsn, int) and lsn >= 0 else 0

    def save_applied(self, lsn: int) -> None:
        atomic_write_json(self.applied_path, {"lsn": lsn})

    def stage_applied(self, lsn: int) -> int:
        """Write ``lsn`` into the temp file, *not* fsynced, and return its open
        descriptor: the caller makes it durable (fsync or syncfs), closes it,
        then calls :meth:`commit_applied`."""
        fd = os.open(temp_path(self.applied_path),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, _encode({"lsn": lsn}))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def commit_applied(self) -> None:
        """Rename the durable temp file over ``applied.json``; fsync the directory."""
        os.replace(temp_path(self.applied_path), self.applied_path)
        fsync_dir(self.directory)

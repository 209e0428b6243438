"""A mirror's event history on this host (``GET /events``): :class:`EventLog`.

Every role change, failover decision (and decision *not* to fail over, when
it changes), hook run, maintenance change and switchover step is an event:
``{seq, time, mirror, kind, message, term, ...}``. The newest ``KEEP``
events are in memory; every event is also appended to
``<state_dir>/<mirror>/events.jsonl``, which is cut to its newest half when
it passes ``FILE_BYTES``, so the history survives restarts and costs
bounded disk. Sequence numbers are the agent's (one :class:`Sequence`
shared by all its mirrors) and grow across restarts (each file's last one is
read at start), so ``?since=SEQ`` polling, of one mirror or of all, never
misses or repeats.

Appends are small and unsynced (an event is a record of what happened, not
state anything depends on); they run on the event loop: one short write.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

__all__ = ["FILE_BYTES", "KEEP", "EventLog", "Sequence"]

log = logging.getLogger(__name__)

KEEP = 2000
FILE_BYTES = 4 << 20
MAX_MESSAGE = 2000
MAX_FIELD = 8 << 10  # an extra field's JSON (a hook's output tail is cut to this)


class Sequence:
    """The agent's event numbers: one counter for all its mirrors."""

    def __init__(self) -> None:
        self.value = 0

    def next(self) -> int:
        self.value += 1
        return self.value


class EventLog:
    def __init__(self, mirror: str, path: Path | None, sequence: Sequence | None = None) -> None:
        self.mirror = mirror
        self.path = path
        self.sequence = sequence if sequence is not None else Sequence()
        self._events: deque[dict[str, Any]] = deque(maxlen=KEEP)
        self.seq = 0  # this mirror's newest
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            data = path.read_bytes()[-FILE_BYTES:]
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("%s: event history %s unreadable (%s): starting a new one",
                        self.mirror, path, exc)
            return
        for line in data.splitlines()[-KEEP:]:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a torn last line after a crash
            if isinstance(event, dict) and isinstance(event.get("seq"), int):
                self._events.append(event)
                self.seq = max(self.seq, event["seq"])
        self.sequence.value = max(self.sequence.value, self.seq)

    def record(self, kind: str, message: str, term: int | None = None,
               **extra: Any) -> dict[str, Any]:
        self.seq = self.sequence.next()
        event: dict[str, Any] = {"seq": self.seq, "time": round(time.time(), 3),
                                 "mirror": self.mirror, "kind": kind,
                                 "message": message[:MAX_MESSAGE], "term": term}
        for key, value in extra.items():
            if isinstance(value, str) and len(value) > MAX_FIELD:
                value = value[-MAX_FIELD:]
            event[key] = value
        self._events.append(event)
        self._append(event)
        return event

    def _append(self, event: dict[str, Any]) -> None:
        if self.path is None:
            return
        line = json.dumps(event, sort_keys=True, default=str).encode() + b"\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, line)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if size > FILE_BYTES:
                self._compact()
        except OSError as exc:
            log.warning("%s: cannot append to %s: %s", self.mirror, self.path, exc)

    def _compact(self) -> None:
        assert self.path is not None
        keep = list(self._events)[-KEEP // 2:]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(b"".join(json.dumps(e, sort_keys=True, default=str).encode() + b"\n"
                                 for e in keep))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def since(self, seq: int, limit: int) -> list[dict[str, Any]]:
        return [e for e in self._events if e["seq"] > seq][:limit]

    def last(self, n: int) -> list[dict[str, Any]]:
        return list(self._events)[-n:]

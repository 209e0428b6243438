"""The primary file: "is this host M's writable primary?", without HTTP.

keepalived asks that every second, and a question that goes through the
status API can be delayed by any local user holding its connections (issue
7: 100 idle connections made 89 of 90 probes fail). So the agent answers
it ahead of time: every ``INTERVAL`` seconds it rewrites, per mirror, the
file ``<runtime dir>/<mirror>.primary`` (the runtime dir is the control
socket's directory, ``/run/mirrorkit``: tmpfs, root-only 0700), with one
line::

    mirrorkit-primary/1 OK TERM WRITTEN_AT REASON

``OK`` is ``1`` when ``GET /primary?mirror=M`` would answer 200 (the same
check, ``api/http.py`` ``check_primary``), else ``0``; ``TERM`` the
mirror's term (``-`` when unknown); ``WRITTEN_AT`` the ``CLOCK_BOOTTIME``
seconds at the write, with two decimals truncated, the clock and format of
``/proc/uptime`` so that a bash check can compare them; ``REASON`` the
rest of the line, for people.

A reader (``cli/probe.py``, the role's ``mirrorkit-primary-check``) says
"primary" only when the file is owned by root (or by the reader itself),
not writable by others, ``OK`` is ``1`` and it is at most
``STALE_SECONDS`` old: an agent that died, hangs, or whose event loop is
stalled stops rewriting it and the answer becomes "not primary" within
``STALE_SECONDS`` — fail safe. A write is a new file renamed over the old
one, so a reader never sees half a line.

Standard library only: the probe imports this.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from pathlib import Path

__all__ = ["INTERVAL", "MAGIC", "STALE_SECONDS", "boottime", "file_for", "read_verdict",
           "remove", "render", "write"]

MAGIC = "mirrorkit-primary/1"
INTERVAL = 0.5       # seconds between two writes
STALE_SECONDS = 1.5  # an older file means the agent is not answering: not primary
_MAX_FILE = 4096
_MIRROR = re.compile(r"[a-z][a-z0-9_-]{0,30}")  # the agent config's mirror names


def boottime() -> float:
    """Seconds on ``CLOCK_BOOTTIME`` (monotonic, counts suspend; ``/proc/uptime``)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def file_for(directory: Path, mirror: str) -> Path:
    return directory / f"{mirror}.primary"


def _centis(seconds: float) -> str:
    c = int(seconds * 100)  # truncated, as /proc/uptime is: never ahead of it
    return f"{c // 100}.{c % 100:02d}"


def render(ok: bool, term: object, reason: str, at: float) -> bytes:
    term_text = str(term) if isinstance(term, int) and not isinstance(term, bool) else "-"
    clean = "".join(ch if ch.isprintable() else "?" for ch in reason)[:300]
    return f"{MAGIC} {int(ok)} {term_text} {_centis(at)} {clean}\n".encode()


def write(directory: Path, mirror: str, ok: bool, term: object, reason: str) -> None:
    """Replace ``mirror``'s file atomically (mode 0600); raises OSError."""
    target = file_for(directory, mirror)
    tmp = directory / f".{mirror}.primary.tmp"
    data = render(ok, term, reason, boottime())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, target)


def remove(directory: Path, mirror: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        file_for(directory, mirror).unlink()


def read_verdict(directory: Path, mirror: str, now: float | None = None) -> tuple[bool, str]:
    """(is the writable primary, why) from ``mirror``'s file; every doubt is
    ``False``."""
    if not _MIRROR.fullmatch(mirror):
        return False, f"{mirror[:60]!r} is not a mirror name ([a-z][a-z0-9_-]{{0,30}})"
    path = file_for(directory, mirror)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        return False, f"no primary file {path}: {exc.strerror}"
    try:
        st = os.fstat(fd)
        data = os.read(fd, _MAX_FILE)
    except OSError as exc:
        return False, f"cannot read {path}: {exc.strerror}"
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid not in (0, os.geteuid()) \
            or st.st_mode & 0o022:
        return False, f"{path} is not a regular file of root's (or ours) writable by us alone"
    fields = data.decode("utf-8", "replace").rstrip("\n").split(" ", 4)
    if len(fields) < 4 or fields[0] != MAGIC or fields[1] not in ("0", "1"):
        return False, f"{path} is not a primary file ({MAGIC})"
    try:
        written = float(fields[3])
    except ValueError:
        return False, f"{path}: bad time {fields[3][:40]!r}"
    age = (boottime() if now is None else now) - written
    reason = fields[4] if len(fields) > 4 else ""
    if not 0 <= age <= STALE_SECONDS + 0.01:  # + the truncation to centiseconds
        return False, f"{path} is stale ({age:.2f} s old, at most {STALE_SECONDS}): " \
                      "the agent is not answering"
    if fields[1] != "1":
        return False, reason or "not the writable primary"
    return True, reason

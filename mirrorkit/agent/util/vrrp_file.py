"""The VRRP track file: keepalived's instant "is this host M's writable primary?".

keepalived's ``vrrp_script`` runs at most once a second (its ``interval`` is
whole seconds) and needs ``fall`` failures in a row, so a role change seen
only through the script moves the VIP seconds late. keepalived also tracks
files (``track_file``, read through inotify the moment they change): with
``weight 0`` a non-zero number in the file puts the instance in FAULT. So the
agent writes, per mirror, ``<runtime dir>/<mirror>.vrrp`` holding ``0\\n``
while this host is M's writable primary and ``1\\n`` otherwise — the same
verdict as the primary file (``primary_file.py``), written when it changes.

The two work together (roles/mirrorkit_vip, docs/architecture.md, "VIP
timing"): the file reacts at once to role changes the agent makes; the
script, which checks the primary file's age, catches an agent that died or
stalled and can no longer write anything. A track file alone cannot: its
last value stays in force when nobody writes it (keepalived keeps the last
value when the file is deleted and reads garbage as 0).

A write is a temp file renamed over the old one, in the same directory:
keepalived sees one ``IN_MOVED_TO`` and reads a whole value. The directory
must outlive the agent's restarts (``RuntimeDirectoryPreserve=yes``):
keepalived watches the directory, and loses its watch for good when the
directory is removed.

Standard library only.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["NOT_PRIMARY", "PRIMARY", "file_for", "read_value", "write"]

PRIMARY = "0"      # keepalived: OK, the instance may hold the VIP
NOT_PRIMARY = "1"  # keepalived (weight 0): FAULT, the instance releases the VIP


def file_for(directory: Path, mirror: str) -> Path:
    return directory / f"{mirror}.vrrp"


def write(directory: Path, mirror: str, primary: bool) -> None:
    """Replace ``mirror``'s track file atomically (mode 0600); raises OSError.

    No fsync: it lives on tmpfs (/run), and after a crash the agent writes it
    again at start.
    """
    tmp = directory / f".{mirror}.vrrp.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        os.write(fd, f"{PRIMARY if primary else NOT_PRIMARY}\n".encode())
    finally:
        os.close(fd)
    os.replace(tmp, file_for(directory, mirror))


def read_value(directory: Path, mirror: str) -> str | None:
    """The file's value (``"0"``, ``"1"``, anything else as read), None when absent."""
    try:
        return file_for(directory, mirror).read_text(errors="replace").strip()
    except FileNotFoundError:
        return None

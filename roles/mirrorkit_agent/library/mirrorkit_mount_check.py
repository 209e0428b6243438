#!/usr/bin/python
"""Is it safe to put a mirror's FUSE mount at its path on this member?"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mirrorkit_mount_check
short_description: Refuse a capture=mount mirror whose path holds data the mount would hide
description:
  - For each C(capture: mount) mirror of the member, looks at the mount point (the mirror's
    path) and the backing directory. Changes nothing; runs the same in check mode.
  - Fails, naming the manual step, when the mount point is a non-empty directory that is not
    the mirror's own mount (data written before the switch from C(watch), or written while
    mountd was down), when something else is mounted there, when both the mount point and the
    backing directory hold data, or when either is not a directory.
  - Never moves or deletes anything: moving live data is the operator's call (the
    application must be stopped first), see docs/operations.md.
options:
  mounts:
    description: The C(mirrorkit_mount_units) filter's output
      (C([{mirror, mountpoint, backing, socket}])).
    type: list
    elements: dict
    required: true
author: mirrorkit
"""

RETURN = r"""
mounts: {description: "Per mirror: mountpoint state (absent, empty, mounted, stale) and backing state (absent, empty, data).", type: dict, returned: always}
"""

import errno
import os
import shlex
import stat

from ansible.module_utils.basic import AnsibleModule

FSTYPE = "fuse.mirrorkit"  # mountd mounts with subtype=mirrorkit


def _unescape(field):
    """/proc/self/mounts writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mount_at(path, mounts_file="/proc/self/mounts"):
    """(source, fstype) of the topmost mount at `path`, or None."""
    found = None
    with open(mounts_file, encoding="utf-8", errors="surrogateescape") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) >= 3 and _unescape(parts[1]) == path:
                found = (_unescape(parts[0]), parts[2])  # the last line is the top one
    return found


def _listing(path):
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries)


def _backing_state(backing):
    if not os.path.lexists(backing):
        return "absent"
    if not os.path.isdir(backing):
        return "not a directory"
    return "data" if _listing(backing) else "empty"


def check_one(mirror, mountpoint, backing, mounts_file="/proc/self/mounts"):
    """(mountpoint state, backing state, problem or None)."""
    back = _backing_state(backing)
    if back not in ("absent", "empty", "data"):
        return "?", back, ("the backing directory %s is %s: it must be a directory (or absent: "
                           "apply creates it)" % (backing, back))
    try:
        st = os.lstat(mountpoint)
    except FileNotFoundError:
        return "absent", back, None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:  # a mount left by a killed mountd
            return "stale", back, None
        raise
    mounted = mount_at(mountpoint, mounts_file)
    if mounted is not None:
        source, fstype = mounted
        if fstype == FSTYPE and source == "mirrorkit-%s" % mirror:
            return "mounted", back, None
        return "mounted", back, (
            "%s is the mount point of %s (%s): mirrorkit-mountd would mount over it and hide "
            "it. Mount that file system at the backing directory %s instead (and keep the "
            "path an empty directory), or set the mirror's backing: to where its data is "
            "mounted, then apply again" % (mountpoint, source, fstype, backing))
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory", back, (
            "%s is not a directory: the mirror's path becomes the mount point of its FUSE "
            "mount; move it away and apply again" % mountpoint)
    names = _listing(mountpoint)
    if not names:
        return "empty", back, None
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    if back == "data":
        return "data", back, (
            "both %s (%d entries: %s) and its backing directory %s hold data, and %s is not "
            "mounted: decide which one is this member's copy of mirror %s, move the other "
            "away (nothing is deleted by apply), leave %s empty, and apply again"
            % (mountpoint, len(names), shown, backing, mountpoint, mirror, mountpoint))
    first = "rmdir %s && " % _quote(backing) if back == "empty" else ""
    return "data", back, (
        "%s holds data (%d entries: %s) and is not mounted: with capture: mount the data "
        "lives in the backing directory %s and the mount is put over %s, which would hide "
        "it. Move it once, by hand, on this member: stop what writes to %s (the application; "
        "on a replica nothing else writes there), then `systemctl stop mirrorkit-agent; "
        "%smv %s %s` (a rename on the same file system: nothing is copied), then apply "
        "again. Do it on every member that holds the mirror"
        % (mountpoint, len(names), shown, backing, mountpoint, mountpoint, first,
           _quote(mountpoint), _quote(backing)))


def _quote(path):
    return shlex.quote(path)


def main():
    module = AnsibleModule(
        argument_spec={"mounts": {"type": "list", "elements": "dict", "required": True}},
        supports_check_mode=True,
    )
    states = {}
    problems = []
    for unit in module.params["mounts"]:
        mirror = str(unit["mirror"])
        try:
            point, back, problem = check_one(mirror, str(unit["mountpoint"]),
                                             str(unit["backing"]))
        except OSError as exc:
            point, back = "?", "?"
            problem = "cannot examine %s: %s" % (unit["mountpoint"], exc)
        states[mirror] = {"mountpoint": point, "backing": back}
        if problem:
            problems.append("mirror %s: %s." % (mirror, problem))
    if problems:
        module.fail_json(msg=" ".join(problems), mounts=states)
    module.exit_json(changed=False, mounts=states)


if __name__ == "__main__":
    main()

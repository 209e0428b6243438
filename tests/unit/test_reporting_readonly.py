"""Reporting copies are not writable by local users: a real unprivileged user
(``nobody`` through ``runuser``) is refused every kind of write, can still
read, and the agent (root) keeps applying. Needs root; skipped otherwise."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrorkit.agent.apply.applier import Applier
from mirrorkit.agent.log.records import Op, OpKind, Record

USER = "nobody"
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None,
    reason="needs root (the agent's user) and runuser to act as an unprivileged user")


@pytest.fixture
def root() -> Iterator[Path]:
    """A replica root that ``nobody`` can reach (pytest's tmp_path is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="mk-reporting-"))
    base.chmod(0o755)
    yield base / "replica"
    shutil.rmtree(base)


def as_user(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", USER, "--", *argv], capture_output=True,
                          text=True, timeout=30)


def records(*ops: Op) -> list[Record]:
    return [Record(i + 1, 1, op) for i, op in enumerate(ops)]


# The primary's modes, deliberately permissive: group/other-writable, setuid.
PRIMARY = records(
    Op(OpKind.MKDIR, 0, "", value=0o777),
    Op(OpKind.MKDIR, 0, "shared", value=0o1777),
    Op(OpKind.CREATE, 0, "shared/open.txt", value=0o666),
    Op(OpKind.WRITE, 0, "shared/open.txt", data=b"report data\n"),
    Op(OpKind.CREATE, 0, "tool", value=0o4775),
    Op(OpKind.WRITE, 0, "tool", data=b"#!/bin/sh\n"),
    Op(OpKind.CHMOD, 0, "shared/open.txt", value=0o666),
)


def attempts(root: Path) -> dict[str, list[str]]:
    f = root / "shared" / "open.txt"
    return {
        "append": ["sh", "-c", f"echo x >> {f}"],
        "truncate": ["truncate", "-s", "0", str(f)],
        "create in dir": ["touch", str(root / "shared" / "new")],
        "create at top": ["touch", str(root / "new")],
        "delete": ["rm", "-f", str(f)],
        "rename": ["mv", str(f), str(root / "shared" / "moved")],
        "chmod": ["chmod", "666", str(root / "tool")],
    }


def test_reporting_copy_refuses_an_unprivileged_user(root: Path) -> None:
    applier = Applier([root], read_only=True)
    applier.apply_batch(PRIMARY)
    f = root / "shared" / "open.txt"
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert stat.S_IMODE((root / "shared").stat().st_mode) == 0o1755
    assert stat.S_IMODE((root / "tool").stat().st_mode) == 0o755  # no setuid root
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    # the user can read the report...
    got = as_user("cat", str(f))
    assert got.returncode == 0 and got.stdout == "report data\n", got.stderr
    # ...and no write of any kind succeeds
    for what, argv in attempts(root).items():
        got = as_user(*argv)
        assert got.returncode != 0, f"{what} succeeded for {USER}"
    assert f.read_bytes() == b"report data\n"
    assert sorted(os.listdir(root)) == ["shared", "tool"]
    assert os.listdir(root / "shared") == ["open.txt"]
    # the agent keeps replicating, including a later permissive chmod
    applier.apply_batch([Record(8, 1, Op(OpKind.WRITE, 0, "shared/open.txt", value=12,
                                         data=b"more\n")),
                         Record(9, 1, Op(OpKind.CHMOD, 0, "shared/open.txt", value=0o777))])
    applier.close()
    assert f.read_bytes() == b"report data\nmore\n"
    assert stat.S_IMODE(f.stat().st_mode) == 0o755
    assert as_user("sh", "-c", f"echo x >> {f}").returncode != 0


def test_entries_left_by_a_user_are_taken_over(root: Path) -> None:
    """A file a user owned in the target before it became a replica."""
    root.mkdir()
    mine = root / "mine.txt"
    mine.write_text("old")
    os.chown(mine, 65534, 65534)
    mine.chmod(0o600)
    applier = Applier([root], read_only=True)
    applier.apply_batch(records(Op(OpKind.WRITE, 0, "mine.txt", data=b"new")))
    applier.close()
    st = mine.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    assert as_user("sh", "-c", f"echo x >> {mine}").returncode != 0


def test_dr_copy_keeps_the_primarys_modes(root: Path) -> None:
    """Control: without read_only the same records leave a user-writable file,
    so the refusals above are the mechanism's doing."""
    applier = Applier([root])
    applier.apply_batch(PRIMARY)
    applier.close()
    f = root / "shared" / "open.txt"
    assert stat.S_IMODE(f.stat().st_mode) == 0o666
    assert as_user("sh", "-c", f"echo x >> {f}").returncode == 0

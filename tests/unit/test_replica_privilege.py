"""Replica privilege (docs/architecture.md, "Replica privilege"): a
non-primary member applies files without setuid/setgid and keeps the
primary's (logical) mode durably; manifests report the logical mode;
promotion gives the bits back; the block index and the quarantine are
root-only. A real ``nobody`` cannot gain privilege from a replicated
set-user-ID program."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrorkit.agent.apply.applier import Applier
from mirrorkit.agent.apply.held_modes import HeldModes, restore_held
from mirrorkit.agent.capture.index import BlockIndex, Entry
from mirrorkit.agent.log.records import Op, OpKind, Record
from mirrorkit.agent.resync.compare import quarantine_path
from mirrorkit.agent.resync.manifest import walk_replica
from mirrorkit.agent.verify.manifest import build_manifest


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


class Member:
    """A non-primary member's replica: its applier and held-modes table."""

    def __init__(self, base: Path) -> None:
        self.root = base / "replica"
        self.state = base / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.held = HeldModes(self.state / "held_modes.db")
        self.applier = Applier([self.root], held=self.held)
        self.lsn = 0

    def apply(self, *ops: Op) -> None:
        records = []
        for op in ops:
            self.lsn += 1
            records.append(Record(self.lsn, 1, op))
        self.applier.apply_batch(records)

    def close(self) -> None:
        self.applier.close()
        self.held.close()


@pytest.fixture
def member(tmp_path: Path) -> Iterator[Member]:
    m = Member(tmp_path)
    yield m
    m.close()


def test_setuid_and_setgid_are_held_back_and_kept_durably(member: Member,
                                                         tmp_path: Path) -> None:
    m = member
    m.apply(Op(OpKind.CREATE, 0, "bin/su", value=0o4755),
            Op(OpKind.WRITE, 0, "bin/su", data=b"#!/bin/sh\n"),
            Op(OpKind.CREATE, 0, "bin/sg", value=0o2711),
            Op(OpKind.MKDIR, 0, "shared", value=0o2775),  # a directory keeps setgid
            Op(OpKind.CREATE, 0, "plain", value=0o644))
    assert mode(m.root / "bin/su") == 0o755 and mode(m.root / "bin/sg") == 0o711
    assert mode(m.root / "shared") == 0o2775 and mode(m.root / "plain") == 0o644
    m.close()
    held = HeldModes(tmp_path / "state" / "held_modes.db")  # survives a restart
    try:
        assert held.logical(0, "bin/su", 0o755) == 0o4755
        assert held.logical(0, "bin/sg", 0o711) == 0o2711
        assert held.logical(0, "plain", 0o644) == 0o644
        assert held.logical(0, "bin/su", 0o700) == 0o700  # not what was held: no grant
    finally:
        held.close()
    m.__init__(tmp_path)  # type: ignore[misc]
    # CHMOD, RENAME (of the file's directory) and UNLINK move or drop the entry.
    m.apply(Op(OpKind.CHMOD, 0, "bin/sg", value=0o711),
            Op(OpKind.RENAME, 0, "bin", target="sbin"))
    assert m.applier.logical_mode(0, "bin/sg", 0o711) == 0o711
    assert m.applier.logical_mode(0, "sbin/su", 0o755) == 0o4755
    assert m.applier.logical_mode(0, "bin/su", 0o755) == 0o755
    m.apply(Op(OpKind.CHMOD, 0, "sbin/su", value=0o6755))
    assert mode(m.root / "sbin/su") == 0o755
    assert m.applier.logical_mode(0, "sbin/su", 0o755) == 0o6755
    m.apply(Op(OpKind.UNLINK, 0, "sbin/su"), Op(OpKind.CREATE, 0, "sbin/su", value=0o755))
    assert m.applier.logical_mode(0, "sbin/su", 0o755) == 0o755  # a new file grants nothing
    assert m.held.count == 0


def test_manifests_report_the_logical_mode(member: Member) -> None:
    m = member
    m.apply(Op(OpKind.CREATE, 0, "su", value=0o4755), Op(OpKind.WRITE, 0, "su", data=b"x"))
    items = list(walk_replica([m.root], 64 * 1024, True, (), m.applier.logical_mode))
    assert [(i.path, i.mode) for i in items] == [("su", 0o4755)]
    assert [i.mode for i in walk_replica([m.root], 64 * 1024, True)] == [0o755]
    entries = list(build_manifest([str(m.root)], [], logical=m.applier.logical_mode))
    assert [(e["path"], e["mode"]) for e in entries] == [("su", 0o4755)]


def test_promotion_restores_the_bits_and_empties_the_table(member: Member,
                                                          tmp_path: Path) -> None:
    m = member
    m.apply(Op(OpKind.CREATE, 0, "su", value=0o4755), Op(OpKind.CREATE, 0, "d/sg", value=0o2755),
            Op(OpKind.CREATE, 0, "stale", value=0o4755))
    m.close()
    os.chmod(m.root / "stale", 0o700)  # changed by other means: not the held file any more
    assert restore_held(tmp_path / "state", [m.root]) == 2
    assert mode(m.root / "su") == 0o4755 and mode(m.root / "d/sg") == 0o2755
    assert mode(m.root / "stale") == 0o700
    assert restore_held(tmp_path / "state", [m.root]) == 0  # idempotent
    held = HeldModes(tmp_path / "state" / "held_modes.db")
    try:
        assert held.count == 0 and not held.swept
        # Demoted again: the next start as a receiver sweeps the tree.
        assert held.sweep([m.root]) == 2
        assert mode(m.root / "su") == 0o755 and held.logical(0, "su", 0o755) == 0o4755
        assert held.sweep([m.root]) == 0  # once per term of office
    finally:
        held.close()


def test_block_index_and_held_modes_are_root_only(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    old.touch(mode=0o644)
    os.chmod(old, 0o644)  # an index from before: tightened on open
    for path in (tmp_path / "new" / "blockindex.db", old):
        index = BlockIndex(path)
        index.put(0, "f", Entry("f"))
        index.commit()
        assert mode(path) == 0o600
        for side in (f"{path}-wal", f"{path}-shm"):
            if os.path.exists(side):
                assert mode(Path(side)) == 0o600
        index.close()
    held = HeldModes(tmp_path / "held_modes.db")
    held.close()
    assert mode(tmp_path / "held_modes.db") == 0o600


def test_quarantine_is_root_only_and_strips_setuid(tmp_path: Path) -> None:
    root = tmp_path / "replica"
    (root / "d").mkdir(parents=True)
    (root / "su").write_bytes(b"x")
    os.chmod(root / "su", 0o4755)
    (root / "d" / "sg").write_bytes(b"y")
    os.chmod(root / "d" / "sg", 0o2755)
    q = tmp_path / "state" / "quarantine"
    q.mkdir(parents=True, mode=0o755)
    os.chmod(q, 0o755)  # a quarantine made before: tightened on use
    moved = quarantine_path(root, 0, "su", q / "resync-1")
    assert moved is not None and mode(moved) == 0o755
    moved = quarantine_path(root, 0, "d", q / "resync-1")
    assert moved is not None and mode(moved / "sg") == 0o755
    assert mode(q) == 0o700 and mode(q / "resync-1") == 0o700


def _nobody_runs(as_nobody: list[str], program: Path) -> str:
    got = subprocess.run(["runuser", "-u", as_nobody[2], "--", str(program), "-u"],
                         capture_output=True, text=True, timeout=60, check=False, cwd="/")
    return got.stdout.strip() + got.stderr.strip()


def test_nobody_cannot_run_a_replicated_setuid_program_with_privilege(
        as_nobody: list[str]) -> None:
    """A real set-user-ID-root program (a copy of id(1)): on the primary's
    side ``nobody`` runs it as root; its replica on a backup runs as nobody."""
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        os.chmod(base, 0o755)  # nobody may enter
        primary = base / "primary"
        primary.mkdir(mode=0o755)
        shutil.copy2("/usr/bin/id", primary / "id")
        os.chmod(primary / "id", 0o4755)
        if _nobody_runs(as_nobody, primary / "id") != "0":
            pytest.skip("setuid programs do not run with privilege here (nosuid /tmp?)")
        m = Member(base / "backup")
        os.chmod(base / "backup", 0o755)
        m.apply(Op(OpKind.CREATE, 0, "id", value=0o4755),
                Op(OpKind.WRITE, 0, "id", data=(primary / "id").read_bytes()))
        m.close()
        os.chmod(m.root, 0o755)
        assert mode(m.root / "id") == 0o755
        assert _nobody_runs(as_nobody, m.root / "id") == str(
            int(subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True,
                               check=True).stdout))
    finally:
        shutil.rmtree(base)


def test_a_crash_in_the_middle_of_a_restore_leaves_the_tree_to_be_swept_again(
        member: Member, tmp_path: Path) -> None:
    # Review: "swept" stayed true until the table was cleared at the end, so a
    # crash after the first restored bit, then a start as a receiver (a higher
    # term superseded the promotion), kept a setuid file on a non-primary.
    m = member
    m.apply(Op(OpKind.CREATE, 0, "a", value=0o4755), Op(OpKind.CREATE, 0, "b", value=0o4755))
    assert m.held.sweep([m.root]) == 0  # the receiver's start: marked swept
    m.close()
    crash_after_first = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from mirrorkit.agent.apply import held_modes\n"
        "real = held_modes._restore_one\n"
        "def once(*args):\n"
        "    real(*args)\n"
        "    os._exit(9)  # the agent dies right after one file got its bits back\n"
        "held_modes._restore_one = once\n"
        "held_modes.restore_held(Path(sys.argv[1]), [Path(sys.argv[2])])\n"
    )
    run = subprocess.run([sys.executable, "-c", crash_after_first, str(tmp_path / "state"),
                          str(m.root)], check=False)
    assert run.returncode == 9
    assert 0o4755 in (mode(m.root / "a"), mode(m.root / "b"))  # one came back
    held = HeldModes(tmp_path / "state" / "held_modes.db")
    try:
        assert not held.swept
        assert held.sweep([m.root]) == 1  # held back again at the start as a receiver
        assert mode(m.root / "a") == mode(m.root / "b") == 0o755
    finally:
        held.close()

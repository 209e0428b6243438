"""The mount capture under failover, with real agents (primary, backup,
arbiter, DR copy on loopback) and a real mirrorkit-mountd on each failover
member: the dead primary's mount is read-only before anyone else becomes
writable, and the writes it accepted within its last lease, which its agent
never logged, are quarantined when it rejoins — never kept beside the new
primary's data, never silently overwritten.

Deadlines are generous (the machine is shared); only the order of events is
checked.
"""

from __future__ import annotations

import errno
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from four_cluster import failed  # type: ignore[import-not-found]
from mountd_proc import Mountd, needs_fuse  # type: ignore[import-not-found]
from mounted_four import mounted_four as start_mounted_four  # type: ignore[import-not-found]
from test_loopback import MIRROR, Cluster, wait_for  # type: ignore[import-not-found]
from test_mount_capture import tree  # type: ignore[import-not-found]

pytestmark = [pytest.mark.integration, needs_fuse]


@pytest.fixture
def mounted_four(tmp_path: Path, request: pytest.FixtureRequest
                 ) -> Iterator[tuple[Cluster, dict[str, Mountd]]]:
    with start_mounted_four(tmp_path, show_logs=lambda: failed(request)) as cluster:
        yield cluster


def _writable(mnt: Path) -> bool:
    try:
        (mnt / ".w").write_bytes(b"")
        (mnt / ".w").unlink()
        return True
    except OSError:
        return False


def _kill_node1_amid_writes(c: Cluster, m1: Path, m2: Path) -> list[str]:
    """Kill node1's agent while the application writes on its mount; the
    names written after the kill (within the dead agent's last lease);
    returns once node2 is the writable primary."""
    c.stop("node1", sig=signal.SIGKILL)
    # The application goes on writing on node1 until its mount turns
    # read-only (the lease the dead agent granted runs out) ...
    late: list[str] = []
    refused: OSError | None = None
    node2_primary_seen: float | None = None
    deadline = time.monotonic() + 60
    while refused is None and time.monotonic() < deadline:
        name = f"late-{len(late)}"
        try:
            (m1 / name).write_bytes(b"written after the agent died")
            done = time.monotonic()
            late.append(name)
            # ... and never after node2 was seen writable: two writable primaries.
            assert node2_primary_seen is None or done < node2_primary_seen, \
                "node1's mount accepted a write after node2 was the writable primary"
        except OSError as exc:
            refused = exc
        if node2_primary_seen is None and c.code("node2", f"/primary?mirror={MIRROR}") == 200:
            node2_primary_seen = time.monotonic()
        time.sleep(0.01)
    assert refused is not None and refused.errno == errno.EROFS
    assert late, "no write landed within the dead agent's lease (the test proves nothing)"
    wait_for(lambda: c.code("node2", f"/primary?mirror={MIRROR}") == 200, "node2 promoted", 60)
    wait_for(lambda: _writable(m2), "node2's mount writable", 60)
    (m2 / "after-failover.txt").write_text("the new primary's\n")
    return late


def test_unlogged_writes_of_a_dead_primary_are_quarantined_when_it_rejoins(
        mounted_four: tuple[Cluster, dict[str, Mountd]]) -> None:
    c, mountds = mounted_four
    m1, m2 = mountds["node1"].mnt, mountds["node2"].mnt
    wait_for(lambda: _writable(m1), "node1's mount writable", 60)
    (m1 / "shared.txt").write_text("replicated\n")
    wait_for(lambda: (c.nodes["node2"].root / "shared.txt").exists(), "shared.txt on node2", 60)
    late = _kill_node1_amid_writes(c, m1, m2)
    c.start("node1")  # rejoins as backup
    # Its mountd still held the late writes. The restarted agent, still
    # primary of term 1 until it hears of term 2 (never writable: no one
    # echoes a term-1 lease any more), logs them first; they are then its
    # divergent tail, quarantined (stream/divergence.py). Had it started
    # as a backup, mountd would have handed them to the unlogged check
    # (stream/mount_rejoin.py; test_mount_capture.py). Either way each is
    # in quarantine, with a report.
    quarantine = c.nodes["node1"].state_dir / MIRROR / "quarantine"

    def quarantined(name: str) -> bool:
        return any(p.read_bytes() == b"written after the agent died"
                   for p in quarantine.rglob(name) if p.is_file())

    wait_for(lambda: all(quarantined(n) for n in late), "every late write in quarantine", 90)
    # The checksum resync brings node1 to the new primary's version (the
    # late files go to the resync's quarantine as orphans).
    wait_for(lambda: tree(c.nodes["node1"].root) == tree(c.nodes["node2"].root),
             "node1 equal to node2", 90)
    assert not (c.nodes["node1"].root / late[0]).exists()
    assert (c.nodes["node1"].root / "after-failover.txt").exists()
    assert not _writable(m1)  # a backup's mount stays read-only
    assert "diverged" in c.nodes["node1"].log_text() or any(quarantine.glob("unlogged-*"))


def test_a_member_restarting_as_backup_quarantines_what_its_mount_held(
        mounted_four: tuple[Cluster, dict[str, Mountd]]) -> None:
    """node1 knew it was demoted (state.json: backup of term 2) but its agent
    died before its capture had taken what mountd held: at start, as a
    backup, the unlogged check takes it into quarantine and asks node2 for
    a checksum resync (stream/mount_rejoin.py)."""
    c, mountds = mounted_four
    m1, m2 = mountds["node1"].mnt, mountds["node2"].mnt
    wait_for(lambda: _writable(m1), "node1's mount writable", 60)
    (m1 / "shared.txt").write_text("replicated\n")
    wait_for(lambda: (c.nodes["node2"].root / "shared.txt").exists(), "shared.txt on node2", 60)
    late = _kill_node1_amid_writes(c, m1, m2)
    state = c.nodes["node1"].state_dir / MIRROR / "state.json"
    term = json.loads(state.read_text())["term"] + 1
    state.write_text(json.dumps({"term": term, "role": "backup", "primary": "node2"}))
    c.start("node1")
    quarantine = c.nodes["node1"].state_dir / MIRROR / "quarantine"
    wait_for(lambda: any(quarantine.glob("unlogged-*/REPORT.txt")), "the unlogged report", 60)
    report = next(quarantine.glob("unlogged-*/REPORT.txt")).read_text()
    for name in late:
        assert f"'{name}'" in report
    wait_for(lambda: tree(c.nodes["node1"].root) == tree(c.nodes["node2"].root),
             "node1 equal to node2 after the checksum resync", 90)
    wait_for(lambda: not c.mirror("node1").get("apply_error"), "node1's failure cleared", 60)
    assert not _writable(m1)


def test_a_switchover_on_the_mount_leaves_no_divergent_tail(
        mounted_four: tuple[Cluster, dict[str, Mountd]]) -> None:
    """The old primary stops its capture after it stepped down: its clean-stop
    mark must not follow the HANDOVER in its log (it would be a tail the new
    primary never had: a quarantine and a checksum resync on every planned
    switchover)."""
    from mirrorkit.agent.cli.control_client import post

    c, mountds = mounted_four
    m1 = mountds["node1"].mnt
    wait_for(lambda: _writable(m1), "node1's mount writable", 60)
    (m1 / "a.txt").write_text("x")
    wait_for(lambda: (c.nodes["node2"].root / "a.txt").exists(), "a.txt on node2", 60)
    code, body = post(c.nodes["node1"].control_socket, f"/switchover?mirror={MIRROR}&to=node2")
    assert code == 200, body
    wait_for(lambda: c.code("node2", f"/primary?mirror={MIRROR}") == 200, "node2 primary", 60)
    wait_for(lambda: c.mirror("node1").get("connected") is True
             and c.mirror("node1").get("role") == "backup", "node1 following node2", 60)
    text = c.nodes["node1"].log_text() + c.nodes["node2"].log_text()
    assert "diverged" not in text and "divergent" not in text
    assert not (c.nodes["node1"].state_dir / MIRROR / "quarantine").exists() or not any(
        (c.nodes["node1"].state_dir / MIRROR / "quarantine").glob("diverged-*"))

"""Real agents with the ``mount`` capture (issue 9): node1's mirrored tree is
served by a real mirrorkit-mountd; what applications write on the mount
reaches dr1 in order; the agent's death fences the mount, its restart
resumes it without losing or repeating a change.

Every wait is a poll with a generous deadline; nothing asserts speed.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from mountd_proc import Mountd, needs_fuse  # type: ignore[import-not-found]
from test_loopback import Cluster, cluster_factory, wait_for  # type: ignore[import-not-found]
from test_mount_capture import tree  # type: ignore[import-not-found]

pytestmark = [pytest.mark.integration, needs_fuse]
__all__ = ["cluster_factory"]


@pytest.fixture
def mounted(cluster_factory: Callable[..., Cluster], tmp_path: Path,
            request: pytest.FixtureRequest) -> Iterator[tuple[Cluster, Mountd]]:
    """node1 primary (capture: mount over its data directory), dr1 async."""
    c = cluster_factory({"node1": ("primary", None), "dr1": ("async", "dr")})
    node1 = c.nodes["node1"]
    mountd = Mountd(tmp_path / "mountd", backing=node1.root)  # serves the primary's tree
    cfg = yaml.safe_load(node1.config.read_text())
    mirror = next(iter(cfg["mirrors"].values()))
    mirror["capture"] = "mount"
    mirror["mount_socket"] = str(mountd.socket)
    node1.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    mountd.start()
    for name in c.nodes:
        c.start(name)
    try:
        yield c, mountd
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(c.dump_logs())
            print(mountd.logfile.read_text()[-4000:])
        c.stop_all()
        mountd.stop()


def writable(mnt: Path) -> bool:
    try:
        (mnt / ".w").write_bytes(b"")
        (mnt / ".w").unlink()
        return True
    except OSError:
        return False


def same(c: Cluster, mountd: Mountd) -> bool:
    return tree(mountd.backing) == tree(c.nodes["dr1"].root)


def test_writes_on_the_mount_reach_the_async_copy_with_owners(
        mounted: tuple[Cluster, Mountd]) -> None:
    c, mountd = mounted
    wait_for(lambda: writable(mountd.mnt), "node1's mount to become writable", 60)
    m = mountd.mnt
    (m / "db").mkdir()
    for i in range(50):
        (m / "db" / f"r{i}").write_bytes(os.urandom(3000))
    os.chown(m / "db" / "r7", 1000, 1000)
    (m / "db" / "r3").rename(m / "db" / "renamed")
    (m / "db" / "r4").unlink()
    wait_for(lambda: same(c, mountd), "dr1 to equal node1 tree", 60)
    assert (c.nodes["dr1"].root / "db" / "r7").stat().st_uid == 1000


def test_a_killed_agent_fences_the_mount_and_its_restart_resumes_it(
        mounted: tuple[Cluster, Mountd]) -> None:
    c, mountd = mounted
    wait_for(lambda: writable(mountd.mnt), "node1's mount to become writable", 60)
    for i in range(20):
        (mountd.mnt / f"a{i}").write_bytes(b"a" * i)
    c.stop("node1", signal.SIGKILL)
    # Within the lease (qos 2 s) writes may go on into mountd's journal ...
    written, refused = [], None
    deadline = time.monotonic() + 30
    while refused is None and time.monotonic() < deadline:
        name = f"b{len(written)}"
        try:
            (mountd.mnt / name).write_bytes(b"b")
            written.append(name)
        except OSError as exc:
            refused = exc
        time.sleep(0.02)
    # ... then the mount is read-only: this primary may have been replaced.
    assert refused is not None and refused.errno == errno.EROFS
    c.start("node1")
    wait_for(lambda: writable(mountd.mnt), "the mount to become writable again", 60)
    (mountd.mnt / "after").write_bytes(b"after")
    wait_for(lambda: same(c, mountd), "dr1 to equal node1 tree", 60)
    for name in written:  # nothing the dead agent never logged is lost
        assert (c.nodes["dr1"].root / name).exists()


def test_a_restarted_mountd_gets_every_receiver_resynced_deletes_and_renames_too(
        mounted: tuple[Cluster, Mountd]) -> None:
    """mountd dies while node1 is primary: what it made but never handed over
    is on the backing store only, and the log cannot say what that was. Not
    a pass of writes (it misses deletes and renames): a checksum resync of
    dr1 against the backing store."""
    c, mountd = mounted
    wait_for(lambda: writable(mountd.mnt), "node1's mount to become writable", 60)
    for i in range(10):
        (mountd.mnt / f"f{i}").write_bytes(os.urandom(2000))
    wait_for(lambda: same(c, mountd), "dr1 to equal node1 tree", 60)
    mountd.kill()
    # Stand-ins for changes the dead mountd made but never handed over.
    (mountd.backing / "f1").unlink()
    (mountd.backing / "f2").rename(mountd.backing / "f2-renamed")
    (mountd.backing / "new").write_bytes(b"new")
    os.chmod(mountd.backing / "f3", 0o600)
    mountd.start()
    wait_for(lambda: writable(mountd.mnt), "the new mountd's mount to become writable", 90)
    wait_for(lambda: same(c, mountd), "dr1 to equal the backing store after the resync", 90)
    assert not (c.nodes["dr1"].root / "f1").exists()
    assert "checksum resync of every receiver" in c.nodes["node1"].log_text()


def test_a_checksum_resync_owed_by_a_lost_start_survives_a_restart(
        mounted: tuple[Cluster, Mountd]) -> None:
    """A "lost" start owes every receiver a checksum resync; the debt is
    persisted (mount-resync-owed.json) and a restarted primary pays it —
    its capture resumes exactly and would not know otherwise."""
    import json

    from test_loopback import MIRROR  # type: ignore[import-not-found]

    c, mountd = mounted
    wait_for(lambda: writable(mountd.mnt), "node1's mount to become writable", 60)
    (mountd.mnt / "kept").write_bytes(b"k" * 3000)
    wait_for(lambda: same(c, mountd), "dr1 to equal node1 tree", 60)
    c.stop("node1", signal.SIGKILL)
    owed = c.nodes["node1"].state_dir / MIRROR / "mount-resync-owed.json"
    owed.write_text(json.dumps({"peers": ["dr1"], "why": "a test's stand-in"}))
    (c.nodes["dr1"].root / "kept").unlink()  # what the owed resync must repair
    c.start("node1")
    wait_for(lambda: same(c, mountd), "dr1 repaired by the owed checksum resync", 90)
    wait_for(lambda: not owed.exists(), "the debt cleared once paid", 60)

"""Crash safety on loopback: agents SIGKILLed at random moments under a write
workload converge without corruption; a log corrupted in the middle stops its
mirror with a clear error instead of applying anything past it.

Everything is bounded: the workload runs for a fixed time, the kills have a
fixed maximum count, and every wait has a deadline. Nothing asserts speed.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_loopback import (
    MIRROR,
    Cluster,
    cluster_factory,  # noqa: F401 - fixture
    differences,
    wait_for,
)

from mirrorkit.agent.log.segments import decode_at

pytestmark = pytest.mark.integration

WORKLOAD_SECONDS = 25.0
SEED = 20240603


def workload(root: Path, rng: random.Random, seconds: float) -> int:
    """Creates, overwrites in the middle, appends, truncates, renames, deletes,
    symlinks, chmods and mkdirs under ``root`` for ``seconds``; returns the
    number of operations. Seeded, so a failure can be replayed."""
    dirs = [root]
    for i in range(3):
        d = root / f"dir{i}"
        d.mkdir(exist_ok=True)
        dirs.append(d)
    files: list[Path] = []
    count = 0
    serial = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        count += 1
        serial += 1
        choice = rng.random()
        if choice < 0.25 or len(files) < 5:
            p = rng.choice(dirs) / f"f{serial}"
            p.write_bytes(rng.randbytes(rng.randrange(0, 200_000)))
            files.append(p)
        else:
            p = rng.choice(files)
            if choice < 0.45:  # overwrite in the middle
                size = p.stat().st_size
                with open(p, "r+b") as f:
                    f.seek(rng.randrange(0, size + 1))
                    f.write(rng.randbytes(rng.randrange(1, 70_000)))
            elif choice < 0.6:  # append
                with open(p, "ab") as f:
                    f.write(rng.randbytes(rng.randrange(1, 30_000)))
            elif choice < 0.7:  # truncate
                os.truncate(p, rng.randrange(0, p.stat().st_size + 1))
            elif choice < 0.8:  # rename, maybe into another directory
                q = rng.choice(dirs) / f"r{serial}"
                os.rename(p, q)
                files[files.index(p)] = q
            elif choice < 0.9:
                p.unlink()
                files.remove(p)
            elif choice < 0.95:
                os.chmod(p, rng.choice([0o600, 0o640, 0o644, 0o755]))
            else:
                link = rng.choice(dirs) / f"l{serial}"
                os.symlink(p.name, link)
                if rng.random() < 0.5:
                    link.unlink()
        time.sleep(rng.uniform(0.002, 0.03))
    return count


class Killer(threading.Thread):
    """SIGKILLs ``node`` every 0.5-3 s (at most ``max_kills`` times) and restarts it."""

    def __init__(self, c: Cluster, node: str, rng: random.Random, max_kills: int,
                 gap: tuple[float, float] = (0.5, 3.0)) -> None:
        super().__init__(daemon=True)
        self.c, self.node, self.rng = c, node, rng
        self.max_kills, self.gap = max_kills, gap
        self.kills = 0
        self.done = threading.Event()

    def run(self) -> None:
        while self.kills < self.max_kills and not self.done.wait(self.rng.uniform(*self.gap)):
            self.c.stop(self.node, signal.SIGKILL)
            self.kills += 1
            self.c.start(self.node)


def log_quarantine(c: Cluster, node: str) -> list[str]:
    q = c.nodes[node].state_dir / MIRROR / "log" / "quarantine"
    return sorted(os.listdir(q)) if q.exists() else []


def drained(c: Cluster, receiver: str) -> bool:
    p, r = c.mirror("node1"), c.mirror(receiver)
    return bool(p and r and r.get("applied_lsn") == p.get("lsn")
                and c.converged("node1", receiver))


def wait_drained(c: Cluster, receiver: str) -> None:
    try:
        wait_for(lambda: drained(c, receiver), "lag drains and trees converge", timeout=120)
    except BaseException:
        print(differences(c.nodes["node1"].root, c.nodes[receiver].root)[:20])
        print(c.dump_logs())
        raise


def assert_clean(c: Cluster, receiver: str) -> None:
    assert differences(c.nodes["node1"].root, c.nodes[receiver].root) == []
    for node in ("node1", receiver):
        text = c.nodes[node].log_text()
        assert "corrupt" not in text.lower(), f"{node} reported corruption"
        assert "full resync" not in text, f"{node} needed a full resync"
        assert "REFUSED" not in text and "cannot apply record" not in text
        assert log_quarantine(c, node) == []


def start_pair(cluster_factory: Callable[..., Cluster]) -> Cluster:  # noqa: F811
    c = cluster_factory({"node1": ("primary", None), "node2": ("backup", None)})
    for name in c.nodes:
        c.start(name)
    wait_for(lambda: c.mirror("node2").get("connected"), "backup connects")
    return c


def test_receiver_killed_repeatedly_converges(
    cluster_factory: Callable[..., Cluster],  # noqa: F811
) -> None:
    c = start_pair(cluster_factory)
    rng = random.Random(SEED)
    killer = Killer(c, "node2", random.Random(SEED + 1), max_kills=15)
    killer.start()
    try:
        ops = workload(c.nodes["node1"].root, rng, WORKLOAD_SECONDS)
    finally:
        killer.done.set()
        killer.join(60)
    assert killer.kills >= 5, "the test must really kill the receiver several times"
    wait_drained(c, "node2")
    assert_clean(c, "node2")
    text = c.nodes["node2"].log_text()
    assert text.count("--- start") == killer.kills + 1
    print(f"{ops} operations, receiver SIGKILLed {killer.kills} times, "
          f"{text.count('torn tail')} torn tail(s) truncated")


def test_primary_killed_repeatedly_converges(
    cluster_factory: Callable[..., Cluster],  # noqa: F811
) -> None:
    c = start_pair(cluster_factory)
    rng = random.Random(SEED + 2)
    # The primary rescans its tree against the block index at every start:
    # longer gaps so that it gets to stream between kills.
    killer = Killer(c, "node1", random.Random(SEED + 3), max_kills=4, gap=(2.0, 4.0))
    killer.start()
    try:
        workload(c.nodes["node1"].root, rng, WORKLOAD_SECONDS * 0.6)
    finally:
        killer.done.set()
        killer.join(60)
    assert killer.kills >= 2
    wait_drained(c, "node2")
    assert_clean(c, "node2")


# -- corruption in the middle of a log ---------------------------------------


def corrupt_middle(log_dir: Path) -> tuple[Path, int, int]:
    """Flip a byte inside a record in the middle of the last segment holding
    at least 3 records; return (segment, byte offset, LSN)."""
    for seg in sorted(log_dir.glob("*.log"), reverse=True):
        buf = seg.read_bytes()
        offsets: list[tuple[int, int]] = []
        pos = 0
        while pos < len(buf):
            record, length = decode_at(buf, pos)
            offsets.append((pos, record.lsn))
            pos += length
        if len(offsets) >= 3:
            at, lsn = offsets[len(offsets) // 2]
            data = bytearray(buf)
            data[at + 20] ^= 0xFF
            seg.write_bytes(bytes(data))
            return seg, at, lsn
    pytest.fail(f"no segment with 3 records in {log_dir}")


def test_corrupt_receiver_log_stops_the_mirror_until_moved_aside(
    cluster_factory: Callable[..., Cluster],  # noqa: F811
) -> None:
    c = start_pair(cluster_factory)
    root = c.nodes["node1"].root
    for i in range(10):
        (root / f"a{i}").write_bytes(os.urandom(5000))
        time.sleep(0.05)
    wait_drained(c, "node2")
    assert c.stop("node2") == 0
    log_dir = c.nodes["node2"].state_dir / MIRROR / "log"
    seg, offset, lsn = corrupt_middle(log_dir)
    c.start("node2")
    m = wait_for(lambda: c.mirror("node2") if "error" in c.mirror("node2") else None,
                 "the receiver reports the corrupt log")
    assert m is not None
    assert m["alive"] is False
    assert str(seg) in m["error"] and f"byte {offset}" in m["error"]
    assert f"LSN {lsn}" in m["error"]
    wait_for(lambda: c.code("node2", "/health") == 503, "/health answers 503")
    (root / "after-corruption").write_text("must not arrive while the log is corrupt")
    # The agent retries failed mirrors every 5 s: each retry hits the same
    # error (logged once, counted in status).
    wait_for(lambda: c.mirror("node2").get("failed_starts", 0) >= 2,
             "a retry fails the same way")
    assert c.nodes["node2"].log_text().count("failed to start") == 1
    assert not (c.nodes["node2"].root / "after-corruption").exists()
    assert "error" in c.mirror("node2")
    # The documented repair: move the log aside; the member resumes.
    os.rename(log_dir, log_dir.with_name("log.corrupt"))
    wait_drained(c, "node2")
    assert (c.nodes["node2"].root / "after-corruption").exists()
    assert c.code("node2", "/health") == 200


def test_corrupt_primary_log_stops_the_primary(
    cluster_factory: Callable[..., Cluster],  # noqa: F811
) -> None:
    c = start_pair(cluster_factory)
    root = c.nodes["node1"].root
    for i in range(10):
        (root / f"a{i}").write_bytes(os.urandom(5000))
        time.sleep(0.05)
    wait_drained(c, "node2")
    assert c.stop("node1") == 0
    seg, offset, _lsn = corrupt_middle(c.nodes["node1"].state_dir / MIRROR / "log")
    c.start("node1")
    m = wait_for(lambda: c.mirror("node1") if "error" in c.mirror("node1") else None,
                 "the primary reports the corrupt log")
    assert m is not None
    assert m["alive"] is False and str(seg) in m["error"] and f"byte {offset}" in m["error"]
    wait_for(lambda: c.code("node1", "/health") == 503, "/health answers 503")
    assert "Traceback" not in c.nodes["node1"].log_text()

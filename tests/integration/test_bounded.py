"""Per-peer state stays bounded while a peer is down: a primary under a
steady load of small changes, one of its receivers stopped.

Every wait is a poll with a generous deadline; nothing asserts speed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_loopback import (  # type: ignore[import-not-found]
    Cluster,
    cluster_factory,
    wait_for,
)

from mirrorkit.agent.stream.append_times import LIMIT

pytestmark = pytest.mark.integration
__all__ = ["cluster_factory"]  # the fixture, re-exported for this module

CHANGES = 2400  # each one its own batch: more than twice the history's bound


def lsn_after(c: Cluster, lsn: int) -> int:
    """The primary's LSN once it is past ``lsn`` (0 until then)."""
    now: int = c.mirror("node1")["lsn"]
    return now if now > lsn else 0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_primary_memory_stays_flat_while_a_peer_is_down(
        cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory({"node1": ("primary", None), "node2": ("backup", None),
                         "dr1": ("async", "dr")})
    started = time.time()  # every record is appended after this
    for name in c.nodes:
        c.start(name)
    root = c.nodes["node1"].root
    (root / "first").write_text("first\n")
    wait_for(lambda: all(c.mirror("node1").get("peers", {}).get(r, {}).get("acked_lsn")
                         == c.mirror("node1").get("lsn", -1) > 0 for r in ("node2", "dr1")),
             "both receivers caught up")
    assert c.stop("dr1") == 0
    proc = c.nodes["node1"].proc
    assert proc is not None
    first_sent = time.time()
    m = c.mirror("node1")
    lsn = m["lsn"]
    # dr1's oldest unacknowledged record: our first change if it had all
    # before it, else one appended earlier (but after the agents started).
    newest = first_sent if m["peers"]["dr1"]["acked_lsn"] == lsn else started
    first_seen = 0.0
    rss: dict[str, int] = {}
    for i in range(CHANGES):
        (root / f"s{i % 64}").write_text(f"change {i}\n")
        lsn = wait_for(functools.partial(lsn_after, c, lsn), f"change {i} logged",
                       interval=0.005)
        if i == 0:
            first_seen = time.time()
        if i == CHANGES // 3:
            rss["third"] = rss_bytes(proc.pid)
    rss["end"] = rss_bytes(proc.pid)
    asked = time.time()
    m = c.mirror("node1")
    answered = time.time()
    dr1, node2 = m["peers"]["dr1"], m["peers"]["node2"]
    # The history of append times is bounded, however long dr1 stays away...
    assert m["append_times"] <= LIMIT
    # ...and still dates dr1's oldest unacknowledged record exactly.
    assert asked - first_seen <= dr1["lag_seconds"] <= answered - newest + 0.01
    assert dr1["state"] == "disconnected" and dr1["lag_records"] >= CHANGES
    wait_for(lambda: c.mirror("node1")["peers"]["node2"]["lag_records"] == 0,
             "the connected backup keeps up")
    assert node2["connected"] is True
    # A sanity bound on the process: the load grows nothing in proportion.
    assert rss["end"] - rss["third"] < 16 << 20, rss

"""The primary's capture state and its bounded append-time history."""

from __future__ import annotations

import pytest

from mirrorkit.agent.stream.append_times import AppendTimes
from mirrorkit.agent.stream.capture_state import CaptureState


def test_capture_state_first_scan_is_healthy_a_restart_is_not_until_its_scan() -> None:
    c = CaptureState()
    c.started()
    assert (c.state, c.healthy, c.reason()) == ("scanning", True, None)
    c.scan_complete()
    assert (c.state, c.healthy) == ("running", True)
    c.failed("mirror tree /srv/x was deleted or moved", 4.0)
    assert (c.state, c.healthy) == ("failed", False)
    reason = c.reason()
    assert reason is not None and "capture failed: mirror tree /srv/x was deleted" in reason
    assert "restarting in 4 s" in reason
    c.started()
    assert (c.state, c.healthy, c.restarts) == ("restarting", False, 1)
    assert "healthy again once its scan completes" in (c.reason() or "")
    c.failed("again", 8.0)  # fails during its scan: still unhealthy
    c.started()
    assert (c.state, c.restarts) == ("restarting", 2)
    c.scan_complete()
    assert (c.state, c.healthy, c.error) == ("running", True, "")
    assert c.as_dict()["restarts"] == 2
    c.started()  # a later restart without a failure in between (not expected): scanning
    assert c.state == "scanning"


def test_append_times_date_the_oldest_unacked_record() -> None:
    t = AppendTimes()
    for lsn, when in ((1, 100.0), (5, 200.0), (9, 300.0)):
        t.append(lsn, when)
    assert t.oldest_unacked(0) == 100.0  # LSN 1 is in the first batch
    assert t.oldest_unacked(4) == 200.0  # LSN 5 starts the second
    assert t.oldest_unacked(6) == 200.0  # LSN 7 is inside the second
    assert t.oldest_unacked(20) == 300.0
    t.forget_through(6)  # every peer has LSN 6: the batch of LSN 7 stays
    assert len(t) == 2 and t.oldest_unacked(6) == 200.0
    assert t.oldest_unacked(0) is None  # predates the history
    with pytest.raises(ValueError):
        t.append(9, 400.0)


def test_append_times_stay_bounded_and_only_ever_overstate() -> None:
    t = AppendTimes(limit=64)
    for i in range(10_000):  # a peer down: nothing is ever forgotten
        t.append(1 + 10 * i, float(i))
        assert len(t) <= 64
    assert t.oldest_unacked(0) == 0.0  # the slowest peer's entry is kept exactly
    assert t.oldest_unacked(10 * 9_999) == 9_999.0  # recent entries are exact
    for acked in range(0, 100_000, 997):
        exact = float(acked // 10)
        got = t.oldest_unacked(acked)
        assert got is not None and got <= exact  # never younger than the truth


def test_append_times_keep_the_slowest_peers_entry_exact_through_decimation() -> None:
    t = AppendTimes(limit=64)
    for i in range(100):  # a first phase every peer acknowledges
        t.append(1 + 10 * i, float(i))
    slowest = 10 * 99  # acked by the peer that then goes away: its next is batch 99
    for i in range(100, 5_000):
        t.forget_through(slowest)  # the primary does this before each append
        t.append(1 + 10 * i, float(i))
    assert t.oldest_unacked(slowest) == 99.0

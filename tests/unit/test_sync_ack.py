"""Sync mode on the primary (stream/sync_ack.py): an fsync is acknowledged
only through what the backup has durably, until the arbiter has confirmed
(persisted) that the primary runs without it; back to waiting for the backup
once it has caught up, and the arbiter's flag cleared only after it has all
that was acknowledged without it. The clock is the test's (no sleeping)."""

from __future__ import annotations

from typing import Any

import pytest

from mirrorkit.agent.stream.peers import PeerState
from mirrorkit.agent.stream.sync_ack import REJOIN_BYTES, SyncAck
from mirrorkit.agent.util import clock

QOS = 1.0
TERM = 4


class Primary:
    """What SyncAck reads of its worker: the log's end, the backup, the term."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, mode: str = "sync",
                 arbiter: str | None = "arb1", backup: bool = True) -> None:
        self.end = 0
        self.now = 1000.0
        self.stamp = 0.0
        monkeypatch.setattr(clock, "now", lambda: self.now)
        self.peer = PeerState("backup", connected=True, seen=True)
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.sync = SyncAck("records[primary]", mode, QOS, arbiter, lambda: self.end,
                            lambda: ("node2", self.peer) if backup else None,
                            lambda: TERM, lambda a, b: (b - a + 1) * 100)
        self.sync.on_event = lambda kind, msg, extra: self.events.append((kind, msg, extra))
        self.seen: list[int] = []
        self.sync.listeners.append(self.seen.append)

    def write(self, n: int = 1) -> None:
        self.end += n
        self.sync.update()

    def ack(self, lsn: int) -> None:
        self.peer.received_lsn = lsn
        self.sync.update()

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.sync.update()

    def heartbeat(self) -> tuple[int, int, int]:
        """One heartbeat to the arbiter: what it carries."""
        self.stamp = self.now
        req = self.sync.request()
        self.sync.sent(self.stamp)
        return req

    def arbiter(self, backup_out: int, echo: float | None = None) -> None:
        self.sync.arbiter_says(backup_out, self.stamp if echo is None else echo)

    def messages(self) -> list[str]:
        return [m for _k, m, _e in self.events]


def test_async_mode_acknowledges_the_durable_end(monkeypatch: pytest.MonkeyPatch) -> None:
    p = Primary(monkeypatch, mode="async")
    p.write(3)
    assert p.sync.value() == 3 and p.seen == [3]
    p.tick(10 * QOS)  # nothing waits for the backup
    assert p.sync.request() == (0, 0, 0)


def test_sync_without_a_backup_acknowledges_the_durable_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    p = Primary(monkeypatch, backup=False)
    p.write(2)
    assert p.sync.value() == 2


def test_sync_acknowledges_what_the_backup_received(monkeypatch: pytest.MonkeyPatch) -> None:
    p = Primary(monkeypatch)
    p.write(5)
    assert p.sync.value() == 0 and p.seen == []
    p.ack(3)
    assert p.sync.value() == 3 and p.seen == [3]
    p.ack(5)
    assert p.seen == [3, 5]
    # a backup that reconnects lower (its HELLO) never takes an ack back
    p.ack(1)
    assert p.sync.value() == 5


def test_a_progressing_backup_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    p = Primary(monkeypatch)
    p.write(10)
    for lsn in range(1, 10):
        p.tick(QOS * 0.9)
        p.ack(lsn)  # slow, but it acknowledges within qos each time
    assert p.sync.state == "sync" and p.sync.request() == (0, 0, 0)


def test_a_silent_backup_makes_it_ask_and_only_the_arbiter_lets_it_go_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    p = Primary(monkeypatch)
    p.write(2)
    p.ack(2)
    p.write(3)  # 3..5 wait for the backup, which says nothing
    p.tick(QOS * 0.5)
    assert p.sync.state == "sync"
    p.tick(QOS * 0.6)
    assert p.sync.state == "asking" and p.sync.value() == 2
    assert p.heartbeat() == (TERM, 2, 0)  # "run without it in term 4, it has LSN 2"
    # an answer without the flag, or one built before our request, is no confirmation
    p.arbiter(0)
    p.arbiter(TERM, echo=p.stamp - 0.1)
    p.arbiter(TERM - 1)
    assert p.sync.state == "asking" and p.sync.value() == 2
    # not confirmed within qos: said once, and acknowledgements keep waiting
    p.tick(QOS)
    p.tick(QOS)
    refusals = [m for m in p.messages() if "has not confirmed" in m]
    assert len(refusals) == 1 and "fsync keeps waiting" in refusals[0]
    assert p.sync.value() == 2
    # confirmed: acknowledged through the durable end, and it follows it
    p.heartbeat()
    p.arbiter(TERM)
    assert p.sync.state == "alone" and p.sync.value() == 5 and p.seen[-1] == 5
    assert "arbiter arb1 confirms: continuing without it (term 4, from LSN 2)" in \
        p.messages()[-1]
    p.write(2)
    assert p.sync.value() == 7
    st = p.sync.status()
    assert st["state"] == "alone" and st["backup_out_from_lsn"] == 2 and st["acked_lsn"] == 7


def test_no_arbiter_means_waiting_for_the_backup(monkeypatch: pytest.MonkeyPatch) -> None:
    p = Primary(monkeypatch, arbiter=None)
    p.write(1)
    p.tick(QOS * 3)
    assert p.sync.state == "sync" and p.sync.value() == 0
    assert any("no arbiter" in m for m in p.messages())


def _alone(p: Primary) -> None:
    p.write(3)
    p.ack(1)
    p.tick(QOS * 1.1)
    p.heartbeat()
    p.arbiter(TERM)
    assert p.sync.state == "alone"


def test_back_to_sync_only_after_the_backup_has_all_that_was_acknowledged(
        monkeypatch: pytest.MonkeyPatch) -> None:
    p = Primary(monkeypatch)
    _alone(p)
    p.write(2)
    assert p.sync.value() == 5
    # reconnected, but far behind: still alone (waiting now would stall the application)
    far = 1 + REJOIN_BYTES // 100 + 10
    p.write(far)
    p.ack(2)
    assert p.sync.state == "alone"
    # close to the end: fsync waits for it again
    p.ack(p.end - 3)
    assert p.sync.state == "rejoining"
    assert "caught up" in p.messages()[-1] and "fsync waits for it again" in p.messages()[-1]
    acked = p.sync.value()
    assert acked == p.end  # what was acknowledged stays acknowledged ...
    p.write(4)
    assert p.sync.value() == acked  # ... but nothing new until the backup has it
    assert p.heartbeat() == (TERM, 1, 0)  # the flag stays meanwhile
    p.ack(acked)
    assert p.sync.state == "clearing"
    assert p.heartbeat() == (0, 0, TERM)  # "clear it"
    p.ack(p.end)
    assert p.sync.value() == p.end
    p.arbiter(TERM, echo=p.stamp - 1)  # an older answer: not cleared yet
    assert p.sync.state == "clearing"
    p.arbiter(0)
    assert p.sync.state == "sync" and "active again" in p.messages()[-1]
    assert p.heartbeat() == (0, 0, 0)


def test_a_backup_that_answers_while_it_is_asked_about_gets_its_flag_cleared(
        monkeypatch: pytest.MonkeyPatch) -> None:
    p = Primary(monkeypatch)
    p.write(2)
    p.tick(QOS * 1.1)
    p.heartbeat()  # the request went out: the arbiter may hold the flag now
    p.ack(2)
    assert p.sync.state == "clearing" and p.sync.value() == 2
    assert p.heartbeat() == (0, 0, TERM)


def test_a_restarted_primary_clears_a_flag_only_once_the_backup_has_its_log(
        monkeypatch: pytest.MonkeyPatch) -> None:
    p = Primary(monkeypatch)
    p.end = 9  # the log as the previous process left it
    p.peer.received_lsn = 4
    p.arbiter(TERM)  # "you run without your backup": from before the restart
    assert p.sync.state == "rejoining" and p.sync.value() == 9
    p.ack(8)
    assert p.sync.state == "rejoining"
    p.ack(9)
    assert p.sync.state == "clearing"


def test_a_flag_the_arbiter_lost_stops_acknowledging_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    p = Primary(monkeypatch)
    _alone(p)
    p.heartbeat()
    p.arbiter(0)
    assert p.sync.state == "asking"
    p.write(5)
    assert p.sync.value() == 3  # what was acknowledged alone, nothing more

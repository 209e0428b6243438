"""The primary's lease (util/lease.py) and the silence a member counts only
while it listens (util/listening.py)."""

from __future__ import annotations

import time

from mirrorkit.agent.util.clock import now
from mirrorkit.agent.util.lease import Lease
from mirrorkit.agent.util.listening import ListenGuard


def test_a_lease_never_renewed_is_expired() -> None:
    lease = Lease(1.0)
    assert not lease.valid() and lease.expires_at() is None


def test_an_echo_renews_for_duration_after_the_echoed_stamp() -> None:
    lease = Lease(1.0)
    stamp = now() - 0.4  # we sent it 0.4 s ago; the peer echoes it now
    assert lease.renew(stamp, "node2")
    assert 0.5 < lease.remaining() <= 0.6 + 0.05
    assert lease.renewed_by == "node2"
    # An older echo (a late, reordered heartbeat) does not move it back.
    assert not lease.renew(stamp - 0.2, "arb1")
    assert lease.expires_at() == stamp + 1.0


def test_an_echo_from_the_future_is_ignored() -> None:
    lease = Lease(1.0)
    assert not lease.renew(now() + 100.0, "liar")
    assert not lease.valid()


def test_an_old_echo_gives_an_expired_lease() -> None:
    lease = Lease(1.0)
    lease.renew(now() - 1.5, "node2")
    assert not lease.valid()


def test_revoke() -> None:
    lease = Lease(1.0)
    lease.renew(now(), "node2")
    lease.revoke()
    assert not lease.valid()


def test_silence_does_not_count_while_we_were_not_listening() -> None:
    guard = ListenGuard(max_gap=0.1)
    heard = now() - 10.0  # long ago
    # Just created: we have listened only since our start.
    assert guard.silence(heard) < 0.5
    time.sleep(0.3)  # a stall: the guard's ticker did not run
    assert guard.silence(heard) < 0.05  # the stall reset what we know
    assert guard.gaps == 1
    assert guard.silence(now()) < 0.01


def test_a_waived_lease_is_valid_until_its_first_renewal() -> None:
    lease = Lease(1.0)
    lease.waive()
    assert lease.valid()
    lease.renew(now() - 1.5, "arb1")  # a peer answered, late: the waiver is over
    assert not lease.waived and not lease.valid()

"""The failover rules (ha/failover.py), one case per rule and per reason not
to fail over: these are the decisions DESIGN.md's table promises."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mirrorkit.agent.ha.failover import Action, View, active, decide, may_promote

BACKUP = View(member="node2", role="backup", term=3, heartbeat=0.25, qos=1.0,
              arbiter_timeout=2.0, mode="async", max_lag=1 << 20, maintenance=False,
              arbiter="arb1", partner="node1", primary="node1", primary_silence=5.0,
              ever_connected=True, lag_bytes=0, arbiter_sees="node1",
              arbiter_primary_silence=2.5, arbiter_answer_age=0.1, arbiter_connected=True)


def test_backup_promotes_when_the_arbiter_lost_the_primary_too() -> None:
    d = decide(BACKUP)
    assert d.action is Action.PROMOTE
    assert "term 4" in d.reason and "arbiter arb1 has not heard it" in d.reason


@pytest.mark.parametrize(("change", "situation", "words"), [
    ({"primary_silence": 0.3}, "following", "heard 0.30 s ago"),
    # lost only just: silence must reach qos + heartbeat (1.25 s)
    ({"primary_silence": 1.2}, "following", "heard"),
    ({"arbiter_primary_silence": 0.2}, "arbiter-sees-primary", "the fault is between us"),
    ({"arbiter_primary_silence": 1.99}, "arbiter-sees-primary", "not active"),
    ({"arbiter_answer_age": None, "arbiter_primary_silence": None}, "lost-both", "force"),
    ({"arbiter_answer_age": 1.5}, "lost-both", "arbiter arb1 too"),
    ({"maintenance": True}, "maintenance", "maintenance mode is on"),
    ({"lag_bytes": 2 << 20}, "not-active", "max_lag_on_failover"),
    ({"lag_bytes": None}, "not-active", "does not know its lag"),
    ({"ever_connected": False}, "not-active", "has not been connected"),
    ({"resyncing": True}, "not-active", "resyncing"),
    ({"apply_failed": True}, "not-active", "could not apply"),
    ({"arbiter": None}, "no-auto", "no arbiter"),
    ({"partner": None}, "no-auto", "no other failover member"),
])
def test_each_reason_not_to_fail_over(change: dict[str, object], situation: str,
                                      words: str) -> None:
    d = decide(replace(BACKUP, **change))  # type: ignore[arg-type]
    assert d.action is Action.NONE
    assert d.situation == situation
    assert words in d.reason


def test_no_failover_when_the_arbiter_holds_another_member_primary() -> None:
    d = decide(replace(BACKUP, arbiter_sees="dr1"))
    assert d.action is Action.NONE and d.situation == "arbiter-other-primary"
    # the arbiter knowing no primary of this term is no obstacle
    assert decide(replace(BACKUP, arbiter_sees=None)).action is Action.PROMOTE


def test_sync_mode_promotes_a_backup_behind_only_on_what_was_never_acknowledged() -> None:
    """In sync mode an fsync returns only once the backup has it (or the
    arbiter confirmed the primary runs alone: the flag, tested below), so
    lag at the moment the primary died is unacknowledged data: no reason to
    refuse the failover of a primary that died under load."""
    for lag in (0, 1, 50 << 20, None):
        d = decide(replace(BACKUP, mode="sync", lag_bytes=lag, primary_sync_acked=40,
                           received_lsn=40))
        assert d.action is Action.PROMOTE, d.reason
        assert "holds every write the primary acknowledged" in d.reason
    # async: the lag limit stays
    assert decide(replace(BACKUP, mode="async", lag_bytes=(1 << 20) + 1)).situation \
        == "not-active"


def test_active_is_within_max_lag() -> None:
    assert active(replace(BACKUP, lag_bytes=1 << 20))[0]
    assert not active(replace(BACKUP, lag_bytes=(1 << 20) + 1))[0]


PRIMARY = View(member="node1", role="primary", term=3, heartbeat=0.25, qos=1.0,
               arbiter_timeout=2.0, mode="async", max_lag=0, maintenance=False,
               arbiter="arb1", partner="node2", writable=True, lease_remaining=0.8,
               partner_connected=True, arbiter_connected=False)


def test_primary_explains_its_lease_and_fence() -> None:
    d = decide(PRIMARY)
    assert d.action is Action.NONE and d.situation == "primary"
    assert "lease 0.80 s left" in d.reason and "arbiter arb1 lost" in d.reason
    fenced = decide(replace(PRIMARY, writable=False, lease_remaining=-1.0,
                            partner_connected=False))
    assert fenced.situation == "fenced" and "VIP released" in fenced.reason
    assert decide(replace(PRIMARY, draining=True)).situation == "draining"
    # A primary never promotes or demotes through the rules: its lease does.
    assert all(decide(replace(PRIMARY, **c)).action is Action.NONE  # type: ignore[arg-type]
               for c in ({"writable": False}, {"maintenance": True}))


def test_members_outside_the_pair_take_no_part() -> None:
    assert decide(replace(BACKUP, role="async")).situation == "not-failover"


def test_a_starting_primary_waits_for_its_first_lease_not_fenced() -> None:
    d = decide(replace(PRIMARY, writable=False, lease_remaining=-1.0, lease_ever=False))
    assert d.situation == "awaiting-lease" and "fenced" not in d.reason


def test_a_backup_the_sync_primary_runs_without_is_not_active() -> None:
    # The arbiter lost the primary (it would promote) but had confirmed that
    # the primary acknowledged writes without this backup: no failover.
    out = replace(BACKUP, mode="sync", arbiter_backup_out=3, arbiter_backup_out_lsn=41)
    d = decide(out)
    assert d.action is Action.NONE and d.situation == "not-active"
    assert "primary node1 runs without it from LSN 41 (term 3)" in d.reason
    assert "acknowledged" in d.reason
    assert not active(out)[0]
    # while it follows the primary, status says why it is not active
    following = decide(replace(out, primary_silence=0.1))
    assert following.situation == "following" and "not active: is out of sync" in \
        following.reason
    # a flag of an older term means nothing in ours; cleared, it promotes again
    assert decide(replace(out, arbiter_backup_out=2)).action is Action.PROMOTE
    assert decide(replace(out, arbiter_backup_out=0)).action is Action.PROMOTE


def test_the_flag_is_named_while_the_fault_is_between_primary_and_backup() -> None:
    d = decide(replace(BACKUP, mode="sync", arbiter_primary_silence=0.2, arbiter_backup_out=3))
    assert d.situation == "arbiter-sees-primary"
    assert "not active (this backup is out of sync: arbiter arb1 confirmed" in d.reason


def test_only_an_answer_built_after_the_arbiter_knew_we_may_promote_counts() -> None:
    d = decide(replace(BACKUP, arbiter_knows_promotable=False))
    assert d.action is Action.NONE and d.situation == "arbiter-catching-up"
    assert "predates" in d.reason


def test_what_the_backup_tells_the_arbiter_about_promoting() -> None:
    assert may_promote(BACKUP)
    assert not may_promote(replace(BACKUP, maintenance=True))
    assert not may_promote(replace(BACKUP, resyncing=True))
    assert not may_promote(replace(BACKUP, arbiter_backup_out=3))
    assert not may_promote(replace(BACKUP, role="primary"))


def test_a_backup_whose_mount_is_not_yet_checked_is_not_promoted() -> None:
    """capture: mount: until its mountd has said whether the mount holds
    changes the log never got (a dead primary's last lease), the copy may
    differ from the primary's uncounted: not active, no promotion."""
    checked = decide(BACKUP)
    assert checked.action is Action.PROMOTE, checked
    d = decide(replace(BACKUP, mount_unchecked=True))
    assert d.action is Action.NONE, d
    assert "has not yet checked with its mirrorkit-mountd" in d.reason
    assert not may_promote(replace(BACKUP, mount_unchecked=True))


def test_sync_mode_rests_on_what_the_primary_says_not_on_the_backups_own_config() -> None:
    """Review finding 8: the backup waived the lag limit because its own
    config said `sync` (an apply converges the backup before the primary,
    which may still run async and acknowledge without it). Now only a
    primary's heartbeat saying what it acknowledged in sync mode waives it."""
    behind = (1 << 20) + 1
    # the primary did not say (async, or a previous release): the lag rule
    d = decide(replace(BACKUP, mode="sync", lag_bytes=behind))
    assert d.situation == "not-active", d.reason
    assert "the primary has not said it runs sync" in d.reason
    assert decide(replace(BACKUP, mode="sync", lag_bytes=0)).action is Action.PROMOTE
    # it said, and we hold less than it acknowledged: not active
    d = decide(replace(BACKUP, mode="sync", lag_bytes=0, primary_sync_acked=50,
                       received_lsn=49))
    assert d.situation == "not-active", d.reason
    assert "lacks writes the primary acknowledged" in d.reason
    assert not may_promote(replace(BACKUP, mode="sync", primary_sync_acked=50,
                                   received_lsn=49))
    # it said, and we hold all of it: lag is what was never acknowledged
    d = decide(replace(BACKUP, mode="sync", lag_bytes=behind, primary_sync_acked=50,
                       received_lsn=50))
    assert d.action is Action.PROMOTE, d.reason

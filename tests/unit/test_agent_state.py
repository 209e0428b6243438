"""Per-mirror state and its one owner: inventory role only on a member's very
first start; a damaged or missing state is refused, never guessed around."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from mirrorkit.agent.state import MirrorState, RoleOwner, StateStore, StateUnreadable


def test_first_start_uses_the_inventory_then_state_wins(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "records")
    owner = RoleOwner.load(store, "failover", "backup", "node1")
    assert owner.state == MirrorState(1, "backup", "node1")
    store.save(MirrorState(4, "primary", "node2"))
    # a re-applied config saying "backup" does not override the runtime state
    again = RoleOwner.load(StateStore(tmp_path / "records"), "failover", "backup", "node1")
    assert again.state == MirrorState(4, "primary", "node2")
    assert not list((tmp_path / "records").glob(".*.tmp"))


@pytest.mark.parametrize(("content", "reason"), [
    ("{not json", "cannot be read"),
    ("[1]", "JSON object"),
    ('{"term": "x", "role": "primary"}', "term must be an integer"),
    ('{"term": 0, "role": "backup"}', "term must be an integer"),
    ('{"term": 2, "role": "arbiter"}', "not one a failover member can hold"),
    ('{"term": 2, "role": "backup", "primary": 7}', "primary must be"),
])
def test_a_damaged_state_is_refused_and_left_alone(tmp_path: Path, content: str,
                                                   reason: str) -> None:
    store = StateStore(tmp_path)
    store.state_path.write_text(content)
    with pytest.raises(StateUnreadable, match=reason) as info:
        RoleOwner.load(store, "failover", "primary", "node1")
    assert "state.json" in str(info.value)
    assert store.state_path.read_text() == content  # never saved over


def test_a_missing_state_on_a_member_that_ran_before_is_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "00000000000000000001.log").write_bytes(b"")
    with pytest.raises(StateUnreadable, match="missing, but this member has run"):
        RoleOwner.load(store, "failover", "primary", "node1")
    assert not store.state_path.exists()


def test_damaged_applied_lsn_is_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.load_applied() == 0
    store.save_applied(42)
    assert StateStore(tmp_path).load_applied() == 42
    assert (tmp_path / "applied.json").stat().st_mode & 0o077 == 0
    store.applied_path.write_text('{"lsn": -3}')
    with pytest.raises(StateUnreadable, match=r"applied\.json"):
        store.load_applied()


def test_a_primary_learning_a_higher_term_steps_down_and_persists_first(
        tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    owner = RoleOwner.load(store, "failover", "primary", "node1")
    seen: list[tuple[MirrorState, MirrorState, dict[str, object]]] = []
    owner.listeners.append(lambda old, new, why: seen.append(
        (old, new, json.loads(store.state_path.read_text()))))
    assert owner.writable

    async def go() -> None:
        assert not await owner.observe_term(1, None, "node2")  # not higher: nothing
        assert await owner.observe_term(3, "node2", "node2")
        assert not await owner.observe_term(2, "node3", "node3")  # older: ignored

    asyncio.run(go())
    assert owner.state == MirrorState(3, "backup", "node2") and not owner.writable
    # the listener (the supervisor swapping workers) ran after the file said so
    assert seen == [(MirrorState(1, "primary", "node1"), MirrorState(3, "backup", "node2"),
                     {"term": 3, "role": "backup", "primary": "node2"})]


def test_role_changes_never_go_back_in_term_or_across_classes(tmp_path: Path) -> None:
    owner = RoleOwner.load(StateStore(tmp_path), "failover", "backup", "node1")

    async def go() -> None:
        await owner.change("primary", 2, "node2", "test")
        with pytest.raises(ValueError, match="older"):
            await owner.change("backup", 1, "node1", "test")
        with pytest.raises(ValueError, match="cannot be async"):
            await owner.change("async", 3, "node1", "test")

    asyncio.run(go())
    assert owner.state == MirrorState(2, "primary", "node2") and owner.writable


def test_step_down_listeners_run_before_the_new_term_is_durable(tmp_path: Path) -> None:
    # Review: the primary file keepalived reads was only rewritten on the
    # publisher's next round, so it said "primary" up to 0.5 s after demotion.
    store = StateStore(tmp_path / "records")
    owner = RoleOwner.load(store, "failover", "primary", "node1")
    seen: list[tuple[bool, int]] = []
    owner.step_down_listeners.append(
        lambda: seen.append((owner.writable, store.load("failover").term)))  # type: ignore[union-attr]
    assert asyncio.run(owner.observe_term(5, "node2", "node2")) is True
    assert seen == [(False, 1)]  # not writable yet still term 1 on disk: before durable
    assert owner.role == "backup" and store.load("failover").term == 5  # type: ignore[union-attr]
    asyncio.run(owner.observe_term(6, "node2", "node2"))  # a backup steps down from nothing
    assert len(seen) == 1


def test_a_failing_step_down_listener_does_not_stop_the_step_down(tmp_path: Path) -> None:
    owner = RoleOwner.load(StateStore(tmp_path / "records"), "failover", "primary", "node1")

    def broken() -> None:
        raise RuntimeError("boom")

    owner.step_down_listeners.append(broken)
    asyncio.run(owner.change("backup", 2, "node2", "switchover"))
    assert owner.role == "backup" and not owner.writable


def test_a_change_whose_caller_is_cancelled_still_takes_effect_in_memory(
        tmp_path: Path) -> None:
    # Found chasing a lost switchover: the receiver handling a HANDOVER was
    # cancelled (its connection closed) while the new state was being saved;
    # the file said primary, memory said backup, and no listener ran.
    store = StateStore(tmp_path / "records")
    owner = RoleOwner.load(store, "failover", "backup", "node1")
    seen: list[MirrorState] = []
    owner.listeners.append(lambda old, new, why: seen.append(new))
    slow_save = store.save

    def save(state: MirrorState) -> None:
        import time
        time.sleep(0.2)  # the save is in its thread when the caller is cancelled
        slow_save(state)

    store.save = save  # type: ignore[method-assign]

    async def go() -> None:
        caller = asyncio.get_running_loop().create_task(
            owner.change("primary", 2, "node2", "handover"))
        await asyncio.sleep(0.05)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await owner.observe_term(2, None, "arbiter")  # serialised behind the change
        assert owner.state == MirrorState(2, "primary", "node2")

    asyncio.run(go())
    assert seen == [MirrorState(2, "primary", "node2")]
    assert store.load("failover") == MirrorState(2, "primary", "node2")


def test_a_promotion_never_lands_in_a_term_another_member_took(tmp_path: Path) -> None:
    # Review of issue 8: a promotion decided at term 1 queued behind the news
    # "node3 is primary of term 2" committed as a second primary of term 2.
    from mirrorkit.agent.state import TermMoved
    owner = RoleOwner.load(StateStore(tmp_path / "records"), "failover", "backup", "node1")

    async def go() -> None:
        await owner.observe_term(2, "node3", "arbiter")
        with pytest.raises(TermMoved, match="moved from 1 to 2"):
            await owner.change("primary", 2, "node2", "promotion", from_term=1)
        with pytest.raises(TermMoved, match="already has primary node3"):
            await owner.change("primary", 2, "node2", "handover")
        await owner.observe_term(3, None, "arbiter")  # a term with no primary yet
        await owner.change("primary", 3, "node2", "handover")  # may take it

    asyncio.run(go())
    assert owner.state == MirrorState(3, "primary", "node2")


def test_a_switchover_drain_keeps_the_vip_until_released(tmp_path: Path) -> None:
    # A request in flight when the VIP leaves never gets its answer (its reply's
    # source address is gone): a switchover releases the VIP after on_demote.
    owner = RoleOwner.load(StateStore(tmp_path / "records"), "failover", "primary", "node1")
    announced: list[bool] = []
    owner.step_down_listeners.append(lambda: announced.append(owner.keeps_vip))
    owner.begin_drain(keep_vip=True)
    assert not owner.writable and owner.keeps_vip and announced == [True]
    owner.release_vip()
    assert not owner.keeps_vip and announced == [True, False]  # announced: the VIP goes now
    owner.release_vip()
    assert announced == [True, False]
    owner.end_drain()
    owner.begin_drain(keep_vip=True)
    asyncio.run(owner.observe_term(5, "node2", "node2"))  # a higher term: no hold
    assert not owner.keeps_vip

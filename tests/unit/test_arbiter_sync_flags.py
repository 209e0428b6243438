"""The arbiter's side of sync mode (arbiter/witness.py, state.py): it
persists "the primary of term T runs without its backup" before any answer
says so, keeps it across restarts, refuses it in a term in which it told the
backup the primary was silent, clears it only on the primary's word or a new
term; and the HEARTBEAT fields stay readable by a peer of the previous
release whenever they are not used."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path

import pytest

from mirrorkit.agent.arbiter.witness import ArbiterMirror, SeenMember
from mirrorkit.agent.config import parse_config
from mirrorkit.agent.state import MirrorState, RoleOwner, StateStore
from mirrorkit.agent.transport import frames
from mirrorkit.agent.transport.frames import Heartbeat, ProtocolError, decode_frame, encode_message

CONFIG = {
    "host": "arb1",
    "api": {"listen": "127.0.0.1", "port": 7480},
    "mirrors": {
        "records": {
            "role": "arbiter", "mode": "sync", "port": 7410,
            "timeouts": {"heartbeat": 1.0, "qos": 8.0, "arbiter": 10.0},
            "tls": {"ca": "/x/ca.crt", "cert": "/x/member.crt", "key": "/x/member.key"},
            "members": {
                "node1": {"address": "198.18.7.11", "role": "primary"},
                "node2": {"address": "198.18.7.12", "role": "backup"},
                "arb1": {"address": "198.18.7.13", "role": "arbiter"},
            },
        }
    },
}
TERM = 3


def arbiter(tmp_path: Path) -> ArbiterMirror:
    data = copy.deepcopy(CONFIG)
    data["state_dir"] = str(tmp_path)
    agent = parse_config(data)
    store = StateStore(tmp_path / "records")
    if not store.state_path.exists():
        store.save(MirrorState(TERM, "arbiter", "node1"))
    roles = RoleOwner.load(store, "arbiter", "arbiter", None)
    return ArbiterMirror(agent, agent.mirrors["records"], roles)


def ask(term: int = TERM, lsn: int = 17, member: str = "node1") -> tuple[str, Heartbeat]:
    return member, Heartbeat(term, 40, "primary", stamp=5.0, backup_out=term,
                             backup_out_lsn=lsn)


def saved(tmp_path: Path) -> dict[str, object]:
    value: dict[str, object] = json.loads((tmp_path / "records" / "state.json").read_text())
    return value


def test_a_request_is_durable_before_any_answer_carries_it(tmp_path: Path) -> None:
    a = arbiter(tmp_path)
    m = SeenMember("primary", term=TERM)
    assert a._heartbeat(m, "node1").backup_out == 0
    asyncio.run(a._sync_request(*ask()))
    assert saved(tmp_path)["backup_out"] == TERM and saved(tmp_path)["backup_out_lsn"] == 17
    hb = a._heartbeat(SeenMember("backup", term=TERM), "node2")
    assert (hb.backup_out, hb.backup_out_lsn) == (TERM, 17)
    assert a.status()["backup_out"] == {"term": TERM, "primary": "node1", "from_lsn": 17}
    # an arbiter restarted keeps saying it: the backup must stay not active
    again = arbiter(tmp_path)
    assert again._heartbeat(SeenMember("backup", term=TERM), "node2").backup_out == TERM


@pytest.mark.parametrize(("member", "term"), [("node2", TERM), ("node1", TERM - 1),
                                              ("node1", TERM + 1)])
def test_only_the_primary_of_our_term_can_ask(tmp_path: Path, member: str, term: int) -> None:
    a = arbiter(tmp_path)
    asyncio.run(a._sync_request(*ask(term, member=member)))
    assert a.state.backup_out == 0 and "backup_out" not in saved(tmp_path)


def test_no_confirmation_in_a_term_the_backup_was_told_the_primary_is_silent(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a = arbiter(tmp_path)
    backup = SeenMember("backup", term=TERM)
    # just started: it has not heard node1 since, for the arbiter timeout
    a.guard.silence = lambda heard: 12.0  # type: ignore[method-assign]
    asyncio.run(a._before_answer(backup, "node2", a._heartbeat(backup, "node2")))
    assert saved(tmp_path)["primary_lost"] == TERM  # before that answer goes out
    asyncio.run(a._sync_request(*ask()))
    assert a.state.backup_out == 0
    assert "refused" in caplog.text and "may have promoted" in caplog.text
    # a new term starts without either flag
    asyncio.run(a.roles.observe_term(TERM + 1, "node2", "node2"))
    assert (a.state.backup_out, a.state.primary_lost) == (0, 0)
    asyncio.run(a._sync_request(*ask(TERM + 1, member="node2")))
    assert a.state.backup_out == TERM + 1


def test_a_short_silence_is_not_told_as_lost(tmp_path: Path) -> None:
    a = arbiter(tmp_path)
    a.guard.silence = lambda heard: 9.0  # type: ignore[method-assign]  # < arbiter 10 s
    b = SeenMember("backup", term=TERM)
    asyncio.run(a._before_answer(b, "node2", a._heartbeat(b, "node2")))
    assert a.state.primary_lost == 0


def test_the_flag_is_cleared_only_by_the_primary_saying_its_backup_caught_up(
        tmp_path: Path) -> None:
    a = arbiter(tmp_path)
    asyncio.run(a._sync_request(*ask()))
    # a plain heartbeat (a primary restarted and not knowing) clears nothing
    asyncio.run(a._sync_request("node1", Heartbeat(TERM, 50, "primary", stamp=6.0)))
    asyncio.run(a.roles.note_primary("node1"))
    assert a.state.backup_out == TERM
    asyncio.run(a._sync_request("node1", Heartbeat(TERM, 50, "primary", backup_back=TERM)))
    assert a.state.backup_out == 0 and "backup_out" not in saved(tmp_path)
    assert a._heartbeat(SeenMember("backup", term=TERM), "node2").backup_out == 0


def test_a_state_file_of_an_earlier_version_reads_without_flags(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.state_path.write_text('{"term": 5, "role": "arbiter", "primary": "node1"}')
    assert store.load("arbiter") == MirrorState(5, "arbiter", "node1")
    store.state_path.write_text('{"term": 5, "role": "arbiter", "primary": null, '
                                '"backup_out": -1}')
    with pytest.raises(Exception, match="backup_out must be an integer >= 0"):
        store.load("arbiter")


def test_a_role_change_in_the_same_term_keeps_the_flags(tmp_path: Path) -> None:
    old = MirrorState(3, "arbiter", None, backup_out=3, backup_out_lsn=9)
    assert old.same_term_flags(MirrorState(3, "arbiter", "node1")).backup_out == 3
    assert old.same_term_flags(MirrorState(4, "arbiter", "node1")).backup_out == 0


def test_heartbeat_sync_fields_round_trip_and_are_sent_only_when_set() -> None:
    hb = Heartbeat(3, 10, "arbiter", stamp=1.5, echo=1.0, primary="node1",
                   backup_out=3, backup_out_lsn=8, backup_back=0)
    frame = encode_message(hb)
    assert decode_frame(frame)[0] == hb
    payload = json.loads(frame[frames.FRAME.size:])
    assert "backup_back" not in payload and payload["backup_out"] == 3
    # unused, the frame is exactly what the previous release sends and reads
    plain = json.loads(encode_message(Heartbeat(3, 10, "primary"))[frames.FRAME.size:])
    assert set(plain) == {"term", "lsn", "role", "lag_bytes", "lag_records", "lag_seconds",
                          "stamp", "echo", "primary", "primary_silence"}
    # and a frame of the previous release decodes with the flags unset
    old = frames.FRAME.pack(frames.MAGIC, frames.PROTOCOL_VERSION, frames.MsgType.HEARTBEAT, 0)
    body = json.dumps(plain).encode()
    msg, _ = decode_frame(old[:-4] + len(body).to_bytes(4, "big") + body)
    assert isinstance(msg, Heartbeat) and (msg.backup_out, msg.backup_back) == (0, 0)


@pytest.mark.parametrize("value", [-1, "3", 1.5, True])
def test_heartbeat_sync_fields_are_checked(value: object) -> None:
    body = json.dumps({"term": 3, "lsn": 0, "backup_out": value}).encode()
    frame = frames.FRAME.pack(frames.MAGIC, frames.PROTOCOL_VERSION,
                              frames.MsgType.HEARTBEAT, len(body)) + body
    with pytest.raises(ProtocolError, match=r"HEARTBEAT\.backup_out"):
        decode_frame(frame)


def test_a_backup_that_would_not_promote_is_told_the_primary_is_lost_freely(
        tmp_path: Path) -> None:
    # e.g. at bring-up: the backup has never been connected to a primary,
    # or it is in maintenance mode: its answer rules nothing out
    a = arbiter(tmp_path)
    a.guard.silence = lambda heard: 12.0  # type: ignore[method-assign]
    backup = SeenMember("backup", term=TERM, no_promote=True)
    asyncio.run(a._before_answer(backup, "node2", a._heartbeat(backup, "node2")))
    assert a.state.primary_lost == 0
    asyncio.run(a._sync_request(*ask()))
    assert a.state.backup_out == TERM


def test_no_primary_known_and_long_silent_counts_as_lost(tmp_path: Path) -> None:
    """After a switchover the arbiter may know the new term but no primary of
    it yet; its answer then says "no primary, silent since ..." and a backup
    promotes on that too: the arbiter must persist primary_lost first."""
    a = arbiter(tmp_path)
    a.primary_view = lambda: ("", 12.0)  # type: ignore[method-assign]
    backup = SeenMember("backup", term=TERM)
    hb = a._heartbeat(backup, "node2")
    assert hb.primary == "" and hb.primary_silence == 12.0
    assert asyncio.run(a._before_answer(backup, "node2", hb)) is True
    assert saved(tmp_path)["primary_lost"] == TERM
    asyncio.run(a._sync_request(*ask()))
    assert a.state.backup_out == 0  # never confirmed in that term any more

"""The controller's operations commands (`mirrorkit events|maintenance|
switchover|promote`): --mirror defaulting, usage errors before any member is
asked, the live primary learnt from the agents, and what is printed — with
an AgentRunner that gives canned `mirrorkit-agent ... --json` answers (the
integration tests plug in one running real agents)."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from mirrorkit.cli import main
from mirrorkit.commands import events as events_cmd
from mirrorkit.commands.live import live_primary, live_view, pick_mirror
from mirrorkit.commands.maintenance import report as maintenance_report
from mirrorkit.commands.maintenance import set_maintenance
from mirrorkit.commands.promote import check_host, promote
from mirrorkit.commands.switchover import check_args, switchover
from mirrorkit.errors import MirrorkitError, UsageError
from mirrorkit.inventory.model import Host, Inventory, Mirror, build_mirrors
from mirrorkit.remote import AgentResult

HERE = Path(__file__).parent / "inventories"
MULTI = str(HERE / "multi.yml")
NOW = 1796173200.0  # 2026-12-02T01:00:00Z

MIRRORS = {"records": {"paths": ["/srv/records"], "primary": "node1", "backup": "node2",
                       "arbiter": "arb1", "async": [{"host": "dr1", "kind": "dr"},
                                                    {"host": "rep1", "kind": "reporting"}]}}


def inventory(mirrors: dict[str, Any] | None = None) -> Inventory:
    hosts = {h: Host(h, f"198.18.7.{i}") for i, h in
             enumerate(("node1", "node2", "arb1", "dr1", "rep1", "node3"), 11)}
    return Inventory(Path("inv.yml"), hosts, build_mirrors(mirrors or MIRRORS))


def records() -> Mirror:
    return inventory().mirrors["records"]


class Agents:
    """Canned agents: ``answers[host][command word]`` is what that command
    prints (a dict: JSON on stdout, exit 0 unless it holds "error"), or a
    string: the host cannot be reached. Every call is recorded."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(self, host: str, args: Sequence[str], timeout: float) -> AgentResult:
        self.calls.append((host, list(args)))
        canned = self.answers.get(host, {})
        if isinstance(canned, str):
            return AgentResult(host, None, error=canned)
        answer = canned.get(args[0])
        if callable(answer):
            answer = answer(list(args))
        if answer is None:
            return AgentResult(host, 1, "", f"mirrorkit-agent: no canned {args[0]}\n")
        return AgentResult(host, 1 if "error" in answer else 0, json.dumps(answer), "")

    def ran(self, word: str) -> list[tuple[str, list[str]]]:
        return [(h, a) for h, a in self.calls if a[0] == word]


def status(role: str, term: int = 3, **extra: Any) -> dict[str, Any]:
    return {"host": "?", "mirrors": {"records": {"role": role, "term": term, **extra}}}


def after_failover() -> dict[str, Any]:
    """node2 took over (term 4); node1 rejoined as backup."""
    return {"node1": {"status": status("backup", 4)}, "node2": {"status": status("primary", 4)},
            "arb1": {"status": status("arbiter", 4)}, "dr1": {"status": status("async", 4)},
            "rep1": {"status": status("async", 4)}}


# -- --mirror and usage errors ----------------------------------------------------------


def test_the_only_mirror_is_the_default_and_several_must_be_named() -> None:
    assert pick_mirror(inventory(), "").name == "records"
    two = inventory({**MIRRORS, "orders": {"paths": ["/srv/o"], "primary": "node3",
                                           "port": 7411}})
    with pytest.raises(UsageError, match=r"2 mirrors \(orders, records\): name one with "
                                         r"--mirror M"):
        pick_mirror(two, "")
    with pytest.raises(UsageError, match=r"no mirror 'recs' in the inventory \(mirrors: "
                                         r"orders, records\)"):
        pick_mirror(two, "recs")
    assert pick_mirror(two, "orders").name == "orders"


@pytest.mark.parametrize("argv", [
    ["switchover", MULTI],
    ["promote", MULTI, "--host", "node1"],
    ["maintenance", "on", MULTI],
    ["switchover", MULTI, "--mirror", "nope"],
    ["switchover", MULTI, "--mirror", "records", "--at", "yesterday"],
    ["switchover", MULTI, "--mirror", "records", "--at", "2020-01-01T00:00:00Z"],
    ["switchover", MULTI, "--mirror", "records", "--cancel", "--to", "node2"],
    ["switchover", MULTI, "--mirror", "records", "--to", "ghost"],
    ["switchover", MULTI, "--mirror", "records", "--to", "arb1"],
    ["promote", MULTI, "--mirror", "records", "--host", "rep1"],
    ["promote", MULTI, "--mirror", "records", "--host", "arb1"],
    ["promote", MULTI, "--mirror", "records", "--host", "node3"],
])
def test_usage_errors_exit_2_before_any_member_is_asked(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # multi.yml's hosts do not exist: reaching for SSH would fail with exit 1, not 2
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mirrorkit {argv[0]}: error: ") and "Traceback" not in err
    if argv[-1] == MULTI:
        assert "orders, records" in err  # lists the mirrors


def test_usage_messages_say_what_would_be_right() -> None:
    mirror = records()
    with pytest.raises(UsageError, match="not a member of mirror records \\(members: node1, "
                                         "node2, arb1, dr1, rep1\\)"):
        check_args(mirror, "node3", "", False, NOW)
    with pytest.raises(UsageError, match="reporting copy"):
        check_args(mirror, "rep1", "", False, NOW)
    with pytest.raises(UsageError, match=r"--at: .* is not a time: give an ISO 8601 time"):
        check_args(mirror, "", "3am", False, NOW)
    assert check_args(mirror, "node2", "+5m", False, NOW) == NOW + 300
    with pytest.raises(UsageError, match="reporting copies are never promoted"):
        check_host(mirror, "rep1")
    check_host(mirror, "dr1")


def test_events_help_and_commands_are_registered(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["events", "--help"], ["maintenance", "on", "--help"],
                 ["switchover", "--help"], ["promote", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
    assert "--follow" in capsys.readouterr().out


# -- the live primary -------------------------------------------------------------------


def test_switchover_runs_on_the_live_primary_not_the_inventorys() -> None:
    agents = Agents(after_failover())
    agents.answers["node2"]["switchover"] = {
        "mirror": "records", "result": "done", "term": 5, "primary": "node1",
        "pause_seconds": 0.31, "at": None, "message": ""}
    said: list[str] = []
    switchover(agents, records(), "node1", None, False, said.append)
    assert {h for h, _ in agents.ran("status")} == {"node1", "node2", "arb1", "dr1", "rep1"}
    assert agents.ran("switchover") == [
        ("node2", ["switchover", "--mirror", "records", "--json", "--to", "node1"])]
    assert said == ["records: live primary node2; switching over to node1",
                    "records: switchover done: node1 is the primary in term 5, writes paused "
                    "0.310 s"]


def test_scheduled_switchover_hands_the_epoch_over_and_cancel() -> None:
    agents = Agents(after_failover())
    agents.answers["node2"]["switchover"] = lambda args: {
        "mirror": "records", "result": "cancelled" if "--cancel" in args else "scheduled",
        "term": 4, "primary": "node2", "pause_seconds": None, "at": NOW + 300, "message": ""}
    said: list[str] = []
    switchover(agents, records(), "", NOW + 300, False, said.append)
    switchover(agents, records(), "", None, True, said.append)
    runs = [a for _, a in agents.ran("switchover")]
    assert runs == [["switchover", "--mirror", "records", "--json", "--at", f"@{NOW + 300:.3f}"],
                    ["switchover", "--mirror", "records", "--json", "--cancel"]]
    assert said[0] == ("records: live primary node2; scheduling the switchover for "
                       "2026-12-02T01:05:00Z")
    assert "switchover to the active backup scheduled for 2026-12-02T01:05:00Z" in said[1]
    assert said[3] == "records: scheduled switchover cancelled"


def test_switchover_refusal_and_no_or_two_primaries() -> None:
    agents = Agents(after_failover())
    agents.answers["node2"]["switchover"] = {"error": "not healthy enough: backup node1 is "
                                                      "not active (lag 5 MB)"}
    with pytest.raises(MirrorkitError, match="switchover refused by node2: not healthy enough"):
        switchover(agents, records(), "", None, False, lambda _: None)
    with pytest.raises(MirrorkitError, match="node2 is already the primary"):
        switchover(agents, records(), "node2", None, False, lambda _: None)
    two = after_failover()
    two["node1"]["status"] = status("primary", 3)
    with pytest.raises(MirrorkitError, match=r"several members say they are the primary: "
                                             r"node1 \(term 3\), node2 \(term 4\)"):
        switchover(Agents(two), records(), "", None, False, lambda _: None)
    none = after_failover()
    none["node2"] = "cannot run mirrorkit-agent on node2 (198.18.7.12) over SSH: timed out"
    with pytest.raises(MirrorkitError, match=r"no member says it is the primary .*node1 backup"
                                             r".*no answer from node2: agent not answering: "
                                             r"cannot run"):
        live_primary(live_view(Agents(none), records()))
    assert [a for _, a in Agents(none).ran("switchover")] == []


# -- promote --------------------------------------------------------------------------


def test_forced_promotion_warns_first_naming_a_primary_that_still_answers() -> None:
    agents = Agents(after_failover())
    agents.answers["dr1"]["promote"] = {"mirror": "records", "result": "done", "term": 5,
                                        "gap_lsns": 42, "message": ""}
    agents.answers["node1"] = "cannot reach"
    out: list[str] = []
    warnings: list[str] = []
    def warn(line: str) -> None:
        warnings.append(line)
        out.append("<warned>")

    promote(agents, records(), "dr1", True, out.append, warn)
    assert out[0] == "<warned>"  # the warning comes before the promotion
    assert "TWO writable primaries" in warnings[0] and "promotes dr1 although" in warnings[0]
    assert any("node2 answers right now as the primary of records (term 4)" in w
               and "mirrorkit switchover --to dr1" in w for w in warnings)
    assert any("no answer from node1" in w for w in warnings)
    assert agents.ran("promote") == [("dr1", ["promote", "--mirror", "records", "--json",
                                              "--force"])]
    assert "LSN gap 42" in out[-1] and "dr1 is the primary in term 5" in out[-1]


def test_unforced_promotion_is_refused_with_the_agents_reason() -> None:
    agents = Agents(after_failover())
    agents.answers["node1"]["promote"] = {"error": "the primary may still be writable: the "
                                                   "arbiter sees node2; use --force only if"}
    warnings: list[str] = []
    with pytest.raises(MirrorkitError, match="promotion of node1 refused: the primary may "
                                             "still be writable"):
        promote(agents, records(), "node1", False, lambda _: None, warnings.append)
    assert warnings == [] and agents.ran("status") == []


def test_planned_dr_promotion_is_a_switchover_on_the_live_primary() -> None:
    agents = Agents(after_failover())
    agents.answers["node2"]["switchover"] = {
        "mirror": "records", "result": "done", "term": 5, "primary": "dr1",
        "pause_seconds": 0.2, "at": None, "message": ""}
    said: list[str] = []
    warnings: list[str] = []
    promote(agents, records(), "dr1", False, said.append, warnings.append)
    assert agents.ran("promote") == [] and warnings == []
    assert agents.ran("switchover") == [
        ("node2", ["switchover", "--mirror", "records", "--json", "--to", "dr1"])]
    assert said[0].startswith("records: planned promotion of dr1: a switchover to it")
    assert "records: live primary node2; switching over to dr1" in said
    assert "dr1 is the primary in term 5" in said[-1]


# -- maintenance ------------------------------------------------------------------------


def _maintenance(on: bool, changed: bool = True) -> dict[str, Any]:
    return {"mirror": "records", "maintenance": on, "changed": changed}


def test_maintenance_on_every_failover_member() -> None:
    agents = Agents({"node1": {"maintenance": _maintenance(True)},
                     "node2": {"maintenance": _maintenance(True, changed=False)}})
    results = set_maintenance(agents, records(), True)
    assert sorted(agents.calls) == [
        ("node1", ["maintenance", "on", "--mirror", "records", "--json"]),
        ("node2", ["maintenance", "on", "--mirror", "records", "--json"])]
    lines, code = maintenance_report(records(), True, results)
    assert code == 0
    assert lines == ["node1: records: maintenance on: no automatic failover until it is "
                     "turned off",
                     "node2: records: maintenance was already on: no automatic failover until "
                     "it is turned off"]


def test_maintenance_half_set_is_a_failure_that_says_so() -> None:
    agents = Agents({"node1": {"maintenance": _maintenance(True)},
                     "node2": "cannot run mirrorkit-agent on node2 (198.18.7.12) over SSH: "
                              "timed out"})
    lines, code = maintenance_report(records(), True, set_maintenance(agents, records(), True))
    assert code == 1
    assert lines[1].startswith("node2: FAILED: cannot run mirrorkit-agent on node2")
    assert lines[2].startswith("records: maintenance is on on node1 but NOT on node2: a "
                               "member without it may still take part in an automatic failover")
    refused = Agents({"node1": {"maintenance": {"error": "must be run as root"}},
                      "node2": {"maintenance": {"error": "must be run as root"}}})
    lines, code = maintenance_report(records(), False,
                                     set_maintenance(refused, records(), False))
    assert code == 1 and lines[-1] == ("records: maintenance unchanged: no failover member "
                                       "confirmed")
    assert lines[0] == "node1: FAILED: must be run as root"


# -- events --------------------------------------------------------------------------


def _event(seq: int, t: float, message: str, mirror: str = "records") -> dict[str, Any]:
    return {"seq": seq, "time": t, "mirror": mirror, "kind": "decision", "term": 3,
            "message": message}


class History:
    """One member's event history, served like GET /events."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events

    def __call__(self, args: list[str]) -> dict[str, Any]:
        since = int(args[args.index("--since") + 1])
        limit = int(args[args.index("--limit") + 1])
        page = [e for e in self.events if e["seq"] > since][:limit]
        return {"events": page, "last_seq": max((e["seq"] for e in self.events), default=0)}


def test_events_merged_in_time_order_with_the_host() -> None:
    node1 = History([_event(1, NOW + 1, "a"), _event(2, NOW + 4, "d"),
                     _event(3, NOW + 5, "other mirror", mirror="orders")])
    node2 = History([_event(10, NOW + 2, "b"), _event(11, NOW + 3, "c")])
    agents = Agents({"node1": {"events": node1}, "node2": {"events": node2},
                     "arb1": "cannot reach arb1"})
    out, err = io.StringIO(), io.StringIO()
    code = events_cmd.follow(agents, ["node1", "node2", "arb1"], "records", {"records"}, 50,
                             keep_following=False, out=out, err=err)
    lines = out.getvalue().splitlines()
    assert [line.split()[-1] for line in lines] == ["a", "b", "c", "d"]
    assert lines[1].startswith("2026-12-02T01:00:02.000Z  node2 ")
    assert "arb1: no events: cannot reach arb1" in err.getvalue()
    assert code == 1  # a member could not be asked


def test_events_last_n_and_follow_prints_only_new_events() -> None:
    node1 = History([_event(i, NOW + i, f"m{i}") for i in range(1, 2501)])
    agents = Agents({"node1": {"events": node1}})
    out, err = io.StringIO(), io.StringIO()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 1:
            node1.events.append(_event(2501, NOW + 2501, "new"))
        if len(sleeps) == 2:  # the agent restarted with a fresh history
            node1.events[:] = [_event(1, NOW + 3000, "after restart")]

    code = events_cmd.follow(agents, ["node1"], "records", {"records"}, 3,
                             keep_following=True, out=out, err=err, sleep=sleep, max_polls=3)
    assert code == 0 and sleeps == [1.0, 1.0, 1.0]
    assert [line.split()[-1] for line in out.getvalue().splitlines()] == [
        "m2498", "m2499", "m2500", "new", "restart"]
    # the first display paged through 2500 events 1000 at a time: bounded requests
    assert all(a[a.index("--limit") + 1] == "1000" for _, a in agents.calls)
    assert "its event history restarted" in err.getvalue()


def test_a_member_that_stops_answering_is_reported_once() -> None:
    node1 = History([_event(1, NOW, "a")])
    agents = Agents({"node1": {"events": node1}})
    out, err = io.StringIO(), io.StringIO()
    calls = 0

    def sleep(_: float) -> None:
        nonlocal calls
        calls += 1
        agents.answers["node1"] = "timed out" if calls < 3 else {"events": node1}

    events_cmd.follow(agents, ["node1"], "records", {"records"}, 10, keep_following=True,
                      out=out, err=err, sleep=sleep, max_polls=4)
    assert err.getvalue().count("node1: no events: timed out") == 1
    assert "node1: answering again" in err.getvalue()

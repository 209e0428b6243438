"""`mirrorkit-agent events|maintenance|switchover|promote`: what they ask
(query strings on the real control socket server, with canned answers in
the shape of docs/architecture.md, "Operations commands"), what they print,
and their usage errors."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mirrorkit.agent.api.control_socket import ControlRoute, start_control
from mirrorkit.agent.cli.events import format_event
from mirrorkit.agent.cli.operations import (
    FORCE_RISK,
    format_maintenance,
    format_promote,
    format_switchover,
)
from mirrorkit.agent.util.timespec import FORMS

Calls = list[tuple[str, dict[str, str]]]
AGENT = [sys.executable, "-m", "mirrorkit.agent.cli.main", "--config", "/nonexistent.yml"]

ANSWERS: dict[str, tuple[int, dict[str, Any]]] = {
    "/maintenance": (200, {"mirror": "records", "maintenance": True, "changed": True}),
    "/switchover": (200, {"mirror": "records", "result": "done", "term": 5, "primary": "node2",
                          "pause_seconds": 0.4213, "at": None, "message": ""}),
    "/promote": (200, {"mirror": "records", "result": "done", "term": 6, "gap_lsns": 12,
                       "message": "forced"}),
}
PARAMS = {"/maintenance": ("mirror", "on"), "/switchover": ("mirror", "to", "at", "cancel"),
          "/promote": ("mirror", "force")}


def routes(calls: Calls, answers: dict[str, tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    def route(name: str) -> ControlRoute:
        async def handler(query: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
            calls.append((name, query))
            return answers[name]
        return ControlRoute(PARAMS[name], handler)
    return {name: route(name) for name in PARAMS}


def run_agent(sock: Path, commands: list[list[str]],
              answers: dict[str, tuple[int, dict[str, Any]]] | None = None,
              ) -> tuple[Calls, list[tuple[int, str, str]]]:
    calls: Calls = []

    async def main() -> list[tuple[int, str, str]]:
        control = await start_control(sock, routes(calls, answers or ANSWERS))
        try:
            out = []
            for command in commands:
                proc = await asyncio.create_subprocess_exec(
                    *AGENT, *command, "--control-socket", str(sock), cwd="/",
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
                assert proc.returncode is not None
                out.append((proc.returncode, stdout.decode(), stderr.decode()))
            return out
        finally:
            control.close()
            await control.wait_closed()

    return calls, asyncio.run(main())


def test_maintenance_on_and_off(tmp_path: Path) -> None:
    calls, [(rc_on, out_on, err_on), (rc_off, out_off, _)] = run_agent(
        tmp_path / "c.sock", [["maintenance", "on", "--mirror", "records"],
                              ["maintenance", "off", "--mirror", "records", "--json"]])
    assert calls == [("/maintenance", {"mirror": "records", "on": "1"}),
                     ("/maintenance", {"mirror": "records", "on": "0"})]
    assert rc_on == 0, err_on
    assert out_on.strip() == ("records: maintenance on: no automatic failover until it is "
                              "turned off")
    assert rc_off == 0 and json.loads(out_off) == ANSWERS["/maintenance"][1]


def test_switchover_now_at_a_time_and_cancel(tmp_path: Path) -> None:
    before = time.time()
    # a whole second two hours ahead, written in another zone than UTC
    later = dt.datetime.fromtimestamp(int(before) + 7200, tz=dt.timezone(dt.timedelta(hours=1)))
    calls, results = run_agent(tmp_path / "c.sock", [
        ["switchover", "--mirror", "records"],
        ["switchover", "--mirror", "records", "--to", "node2", "--at", "+5m"],
        ["switchover", "--mirror", "records", "--at", later.isoformat(), "--json"],
        ["switchover", "--mirror", "records", "--cancel"],
    ])
    assert [rc for rc, _, _ in results] == [0, 0, 0, 0], results
    assert calls[0] == ("/switchover", {"mirror": "records"})
    assert results[0][1].strip() == ("records: switchover done: node2 is the primary in term 5, "
                                     "writes paused 0.421 s")
    _name, query = calls[1]
    assert query.keys() == {"mirror", "to", "at"} and query["to"] == "node2"
    assert before + 300 <= float(query["at"]) <= time.time() + 300  # converted on the client
    assert float(calls[2][1]["at"]) == int(before) + 7200
    assert json.loads(results[2][1]) == ANSWERS["/switchover"][1]
    assert calls[3] == ("/switchover", {"mirror": "records", "cancel": "1"})


@pytest.mark.parametrize(("args", "problem"), [
    (["--cancel", "--to", "node2"], "--cancel takes no --to or --at"),
    (["--cancel", "--at", "+5m"], "--cancel takes no --to or --at"),
    (["--at", "yesterday"], FORMS),
    (["--at", "2020-01-01T00:00:00Z"], "is not in the future"),
    (["--at", "2026-12-02T03:00:00"], "has no time zone"),
])
def test_switchover_usage_errors_ask_nothing(tmp_path: Path, args: list[str],
                                             problem: str) -> None:
    calls, [(rc, _out, err)] = run_agent(tmp_path / "c.sock",
                                        [["switchover", "--mirror", "records", *args]])
    assert rc == 2 and calls == []
    assert problem in err and "Traceback" not in err


def test_refusals_are_shown_with_their_reason(tmp_path: Path) -> None:
    refused = dict(ANSWERS)
    refused["/switchover"] = (409, {"error": "this host is not the primary of records "
                                             "(node2 is, term 5)"})
    refused["/promote"] = (409, {"error": "the primary may still be writable: the arbiter "
                                          "sees node1; use --force only if ..."})
    _calls, [(rc1, out1, err1), (rc2, out2, err2)] = run_agent(
        tmp_path / "c.sock", [["switchover", "--mirror", "records"],
                              ["promote", "--mirror", "records", "--json"]], refused)
    assert rc1 == 1 and "switchover refused (409): this host is not the primary" in err1
    assert out1 == ""
    assert rc2 == 1 and json.loads(out2)["error"].startswith("the primary may still be")
    assert "WARNING" not in err2  # no --force, no risk text


def test_promote_force_explains_the_risk_then_reports_the_gap(tmp_path: Path) -> None:
    calls, [(rc, out, err)] = run_agent(tmp_path / "c.sock",
                                        [["promote", "--mirror", "records", "--force"]])
    assert calls == [("/promote", {"mirror": "records", "force": "1"})]
    assert rc == 0
    assert err.startswith("WARNING: ") and FORCE_RISK in err and "TWO writable primaries" in err
    assert "term 6" in out and "LSN gap 12" in out


def test_no_agent_is_a_clear_error(tmp_path: Path) -> None:
    import subprocess

    for command in (["maintenance", "on", "--mirror", "m"], ["switchover", "--mirror", "m"],
                    ["promote", "--mirror", "m"]):
        got = subprocess.run([*AGENT, *command, "--control-socket", str(tmp_path / "none")],
                             capture_output=True, text=True, timeout=60, check=False)
        assert got.returncode == 1 and "no control socket at" in got.stderr
        assert "Traceback" not in got.stderr


# -- events over the loopback API ----------------------------------------------------

EVENTS = {"events": [
    {"seq": 7, "time": 1796173200.25, "mirror": "records", "kind": "no_failover", "term": 3,
     "message": "arbiter still sees the primary"},
    {"seq": 8, "time": 1796173201.5, "mirror": "records", "kind": "hook", "term": 3,
     "message": "on_demote exited 1", "exit_status": 1, "output": "boom\nsecond line"},
], "last_seq": 8}


@pytest.fixture
def api() -> Iterator[tuple[int, list[str], dict[str, Any]]]:
    seen: list[str] = []
    answer: dict[str, Any] = {"code": 200, "body": json.dumps(EVENTS).encode()}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(answer["code"])
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(answer["body"])

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen, answer
    finally:
        server.shutdown()
        server.server_close()


def events_cli(port: int, *args: str) -> tuple[int, str, str]:
    import subprocess

    got = subprocess.run([*AGENT, "events", "--api-port", str(port), *args],
                         capture_output=True, text=True, timeout=60, check=False)
    return got.returncode, got.stdout, got.stderr


def test_events_lines_and_query(api: tuple[int, list[str], dict[str, Any]]) -> None:
    port, seen, _ = api
    rc, out, err = events_cli(port, "--mirror", "records", "--since", "6", "--limit", "2")
    assert rc == 0, err
    path, _, query = seen[0].partition("?")
    assert path == "/events"
    assert urllib.parse.parse_qs(query) == {"mirror": ["records"], "since": ["6"],
                                            "limit": ["2"]}
    lines = out.splitlines()
    assert len(lines) == 2  # the hook's two-line output stays on its event's line
    assert lines[0].startswith("2026-12-02T01:00:00.250Z  records")
    assert "#7" in lines[0] and "term 3" in lines[0] and "no_failover" in lines[0]
    assert lines[0].endswith("arbiter still sees the primary")
    assert "(exit_status=1, output=boom\\nsecond line)" in lines[1]


def test_events_json_is_the_api_answer(api: tuple[int, list[str], dict[str, Any]]) -> None:
    port, seen, _ = api
    rc, out, _ = events_cli(port, "--json")
    assert rc == 0 and json.loads(out) == EVENTS
    assert urllib.parse.parse_qs(seen[0].partition("?")[2]) == {"since": ["0"],
                                                                 "limit": ["100"]}


@pytest.mark.parametrize(("code", "body", "problem"), [
    (404, b'{"error": "no mirror \'x\'"}', "/events answered 404: no mirror 'x'"),
    (200, b"[]", "unexpected /events answer"),
    (200, b'{"events": [{"seq": "1", "time": 1}], "last_seq": 1}', "no integer seq"),
    (200, b"not json", "unexpected /events answer"),
])
def test_events_bad_answers(api: tuple[int, list[str], dict[str, Any]], code: int,
                            body: bytes, problem: str) -> None:
    port, _, answer = api
    answer.update(code=code, body=body)
    rc, _out, err = events_cli(port)
    assert rc == 1 and problem in err and "Traceback" not in err


@pytest.mark.parametrize("args", [["--limit", "0"], ["--limit", "1001"], ["--since", "-1"],
                                  ["--since", "x"]])
def test_events_usage_errors(args: list[str]) -> None:
    rc, _, err = events_cli(1, *args)
    assert rc == 2 and "usage:" in err


def test_events_without_an_agent() -> None:
    rc, _, err = events_cli(1)
    assert rc == 1 and "cannot reach the local agent API" in err


# -- formatting ------------------------------------------------------------------------


def test_format_event_escapes_peer_text_and_shows_the_host() -> None:
    line = format_event({"seq": 1, "time": 0.0, "mirror": "r", "kind": "k\n", "term": None,
                         "message": "a\x1b[31mb"}, host="node1")
    assert "\n" not in line and "\x1b" not in line
    assert line.startswith("1970-01-01T00:00:00.000Z  node1") and "term -" in line
    long = format_event({"seq": 1, "time": 0.0, "mirror": "r", "kind": "k", "term": 1,
                         "message": "m", "output": "x" * 5000})
    assert len(long) < 400 and "..." in long


def test_format_switchover_results() -> None:
    scheduled = {"mirror": "records", "result": "scheduled", "term": 3, "primary": "node1",
                 "pause_seconds": None, "at": 1000.0 + 3723, "message": ""}
    assert format_switchover(scheduled, "node2", now=1000.0) == (
        "records: switchover to node2 scheduled for 1970-01-01T01:18:43Z (in 1h 2m 3s) on "
        "node1; it runs only if the mirror is healthy then; cancel with --cancel")
    assert "to the active backup" in format_switchover(scheduled, "", now=1000.0)
    cancelled = {"mirror": "records", "result": "cancelled", "message": "was for 03:00"}
    assert format_switchover(cancelled) == ("records: scheduled switchover cancelled "
                                            "(was for 03:00)")


def test_format_promote_and_maintenance() -> None:
    base = {"mirror": "records", "result": "done", "term": 4, "message": ""}
    assert format_promote({**base, "gap_lsns": None}, "dr1") == (
        "records: promotion done: dr1 is the primary in term 4")
    assert "LSN gap 0: it had everything" in format_promote({**base, "gap_lsns": 0})
    assert "LSN gap 3: 3 log record(s)" in format_promote({**base, "gap_lsns": 3})
    assert format_maintenance({"mirror": "m", "maintenance": False, "changed": False}) == (
        "m: maintenance was already off: automatic failover allowed again")

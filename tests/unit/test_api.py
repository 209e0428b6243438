"""The status API over real HTTP on 127.0.0.1 (ephemeral port)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mirrorkit.agent.api.http import start_api
from mirrorkit.agent.api.metrics import StatusCollector, metrics_text, render_metrics
from mirrorkit.agent.util.stats import AgentMetrics


def primary_status() -> dict[str, Any]:
    return {
        "host": "node1",
        "version": "0.1.0",
        "mirrors": {
            "records": {
                "role": "primary", "term": 3, "mode": "async", "primary": "node1",
                "fenced": False, "alive": True, "lsn": 120, "applied_lsn": 120, "lag_bytes": 0,
                "lag_records": 0, "lag_seconds": 0.0, "connected": True,
                "peers": {
                    "node2": {"role": "backup", "connected": True, "acked_lsn": 118,
                              "lag_bytes": 512, "lag_records": 2, "lag_seconds": 0.25},
                    "dr1": {"role": "async", "connected": False, "acked_lsn": 90,
                            "lag_bytes": 9000, "lag_records": 30, "lag_seconds": 12.5},
                },
            },
            "orders": {
                "role": "backup", "term": 7, "mode": "sync", "primary": "node2",
                "fenced": False, "alive": True, "lsn": 50, "applied_lsn": 49, "lag_bytes": 100,
                "lag_records": 1, "lag_seconds": 1.5, "connected": True,
                "peers": {"node2": {"role": "primary", "connected": True}},
            },
        },
    }


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    code = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    assert int(headers["content-length"]) == len(body)
    assert headers["connection"] == "close"
    return code, headers, body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n".encode()


def with_api(
    status: Callable[[], dict[str, Any]], requests: list[bytes]
) -> list[tuple[int, dict[str, str], bytes]]:
    async def main() -> list[tuple[int, dict[str, str], bytes]]:
        server = await start_api("127.0.0.1", 0, status)
        port = server.sockets[0].getsockname()[1]
        try:
            return [await request(port, raw) for raw in requests]
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


def codes(status: Callable[[], dict[str, Any]], *paths: str) -> list[int]:
    return [code for code, _, _ in with_api(status, [get(p) for p in paths])]


def test_health() -> None:
    assert codes(primary_status, "/health") == [200]

    def dead() -> dict[str, Any]:
        st = primary_status()
        st["mirrors"]["orders"].update(alive=False, error="worker crashed: disk full")
        return st

    [(code, _, body)] = with_api(dead, [get("/health")])
    assert code == 503
    assert json.loads(body)["failing"] == {"orders": "worker crashed: disk full"}


def test_primary() -> None:
    assert codes(
        primary_status, "/primary?mirror=records", "/primary?mirror=orders", "/primary",
        "/primary?mirror=nope",
    ) == [200, 503, 503, 404]

    def fenced() -> dict[str, Any]:
        st = primary_status()
        del st["mirrors"]["orders"]
        st["mirrors"]["records"]["fenced"] = True
        return st

    def only_primary() -> dict[str, Any]:
        st = primary_status()
        del st["mirrors"]["orders"]
        return st

    assert codes(fenced, "/primary?mirror=records", "/primary") == [503, 503]
    assert codes(only_primary, "/primary") == [200]
    assert codes(lambda: {"host": "arb", "mirrors": {}}, "/primary") == [503]
    [(_, headers, body)] = with_api(primary_status, [get("/primary?mirror=orders")])
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["mirrors"]["orders"]["reason"] == "role is backup"


def test_replica() -> None:
    assert codes(
        primary_status,
        "/replica?mirror=orders", "/replica?mirror=orders&lag=2", "/replica?mirror=orders&lag=1",
        "/replica?mirror=orders&lag=1.5", "/replica?mirror=records", "/replica",
        "/replica?mirror=nope&lag=3",
    ) == [200, 200, 503, 200, 503, 503, 404]

    def disconnected() -> dict[str, Any]:
        st = primary_status()
        st["mirrors"]["orders"]["connected"] = False
        del st["mirrors"]["records"]
        return st

    assert codes(disconnected, "/replica?mirror=orders", "/replica") == [503, 503]


def test_primary_with_a_failed_capture_is_not_a_primary() -> None:
    def failed() -> dict[str, Any]:
        st = primary_status()
        st["mirrors"]["records"].update(
            alive=False, error="capture failed: mirror tree /srv/records was deleted",
            capture={"state": "failed", "restarts": 0})
        return st

    assert codes(failed, "/primary?mirror=records", "/primary", "/health") == [503, 503, 503]
    [(_, _, body)] = with_api(failed, [get("/primary?mirror=records")])
    reason = json.loads(body)["mirrors"]["records"]["reason"]
    assert reason == "capture failed: mirror tree /srv/records was deleted"

    def no_alive_field() -> dict[str, Any]:  # fail closed
        st = primary_status()
        del st["mirrors"]["records"]["alive"]
        return st

    assert codes(no_alive_field, "/primary?mirror=records") == [503]


def test_replica_resyncing_or_waiting_for_a_resync_is_503() -> None:
    def resyncing() -> dict[str, Any]:
        st = primary_status()
        st["mirrors"]["orders"].update(resyncing=True, resync={
            "state": "copying", "bytes_done": 250, "bytes_total": 1000})
        return st

    def waiting() -> dict[str, Any]:
        st = primary_status()
        st["mirrors"]["orders"]["apply_failure"] = {
            "lsn": 7, "reason": "cannot apply record LSN 7", "action": "resync"}
        return st

    def stopped() -> dict[str, Any]:
        st = primary_status()
        st["mirrors"]["orders"].update(alive=False, error="REFUSED record LSN 7")
        return st

    for fn, reason in ((resyncing, "resyncing 25%"), (waiting, "waiting for a resync"),
                       (stopped, "REFUSED record LSN 7")):
        [(code, _, body)] = with_api(fn, [get("/replica?mirror=orders")])
        assert code == 503
        assert reason in json.loads(body)["mirrors"]["orders"]["reason"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/replica?mirror=orders&lag=abc", "lag must be a number of seconds >= 0, got 'abc'"),
        ("/replica?lag=-1", "lag must be a number"),
        ("/replica?lag=nan", "lag must be a number"),
        ("/replica?lagg=5", "unknown parameter 'lagg'"),
        ("/replica?mirror=a&mirror=b", "given more than once"),
        ("/primary?mirror=", "must not be empty"),
        ("/primary?mirror", "malformed query string"),
        ("/replica?lag=", "got ''"),
    ],
)
def test_bad_query_values_are_400_with_a_message(path: str, message: str) -> None:
    [(code, _, body)] = with_api(primary_status, [get(path)])
    assert code == 400
    assert message in json.loads(body)["error"]


def test_status_json() -> None:
    [(code, headers, body)] = with_api(primary_status, [get("/status")])
    assert code == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == primary_status()


def test_unknown_path_and_methods() -> None:
    results = with_api(
        primary_status,
        [get("/nope"), b"POST /status HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
         b"HEAD /health HTTP/1.1\r\n\r\n"],
    )
    assert [r[0] for r in results] == [404, 405, 405]
    assert results[1][1]["allow"] == "GET"


@pytest.mark.parametrize("route", ["/resync?mirror=records", "/repair?mirror=records",
                                   "/switchover", "/status"])
def test_post_on_tcp_is_refused_and_points_to_the_control_socket(route: str) -> None:
    calls: list[int] = []

    def status() -> dict[str, Any]:
        calls.append(1)
        return primary_status()

    body = b'{"paths": ["/srv/records/a"]}'
    async def main() -> list[tuple[int, dict[str, str], bytes]]:
        server = await start_api("127.0.0.1", 0, status, "/run/mirrorkit/control.sock")
        port = server.sockets[0].getsockname()[1]
        try:
            post = (f"POST {route} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n"
                    .encode() + body)
            return [await request(port, post), await request(port, get("/health"))]
        finally:
            server.close()
            await server.wait_closed()

    (code, headers, answer), (health, _, _) = asyncio.run(main())
    assert code == 405 and headers["allow"] == "GET"
    message = json.loads(answer)["error"]
    assert "read-only" in message and "/run/mirrorkit/control.sock" in message
    assert "mirrorkit-agent resync" in message and "as root" in message
    assert health == 200 and len(calls) == 1  # the POST asked nothing of the agent


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"garbage\r\n\r\n", 400),
        (b"\x00\xff\xfe\r\n\r\n", 400),
        (b"GET /health\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET health HTTP/1.1\r\n\r\n", 400),
        (b"GET /health HTTP/9\r\n\r\n", 400),
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /health HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", 431),
        (b"GET /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"GET /health HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\n", 400),  # client gives up before the blank line
        (b"", 400),
    ],
)
def test_garbage_gets_4xx_and_the_server_survives(raw: bytes, expected: int) -> None:
    async def main() -> None:
        server = await start_api("127.0.0.1", 0, primary_status)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw)
            writer.write_eof()
            data = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert data.startswith(b"HTTP/1.1 %d " % expected), data[:100]
            assert b"Traceback" not in data
            code, _, _ = await request(port, get("/health"))
            assert code == 200
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_failing_status_function_is_500_not_a_crash() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("state file unreadable")

    [(code, _, body)] = with_api(broken, [get("/status")])
    assert code == 500
    assert "state file unreadable" in json.loads(body)["error"]


# -- metrics -----------------------------------------------------------------
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_exposition(text: str) -> tuple[Samples, dict[str, str]]:
    """prometheus_client's own parser of the text format: (samples, family
    types). No duplicate series; every family has HELP text."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, family.name
        assert family.name not in types, f"family {family.name} twice"
        types[family.name] = family.type
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = s.value
    return samples, types


def test_metrics_endpoint_parses_and_has_the_families() -> None:
    [(code, headers, body)] = with_api(primary_status, [get("/metrics")])
    assert code == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    s, types = parse_exposition(body.decode())
    assert set(types.values()) == {"gauge"}

    def val(name: str, **labels: str) -> float:
        return s[(name, frozenset(labels.items()))]

    assert val("mirrorkit_up", member="node1") == 1
    assert val("mirrorkit_term", mirror="records", member="node1") == 3
    assert val("mirrorkit_lsn", mirror="records", member="node1") == 120
    assert val("mirrorkit_applied_lsn", mirror="orders", member="node1") == 49
    assert val("mirrorkit_lag_bytes", mirror="records", member="node2") == 512
    assert val("mirrorkit_lag_records", mirror="records", member="dr1") == 30
    assert val("mirrorkit_lag_seconds", mirror="orders", member="node1") == 1.5
    assert val("mirrorkit_peer_connected", mirror="records", member="dr1") == 0
    assert val("mirrorkit_peer_connected", mirror="records", member="node2") == 1
    assert val("mirrorkit_role", mirror="records", member="node1", role="primary") == 1
    assert val("mirrorkit_role", mirror="records", member="node1", role="backup") == 0
    assert val("mirrorkit_role", mirror="orders", member="node1", role="backup") == 1
    assert val("mirrorkit_fenced", mirror="records", member="node1") == 0


def test_metrics_escape_labels_and_skip_missing_values() -> None:
    text = render_metrics({
        "host": 'we"ird\\host\nname',
        "mirrors": {"m": {"role": "arbiter", "term": None, "lsn": "n/a",
                          "lag_seconds": float("nan"), "peers": "broken"}, "x": 5},
    })
    s, _ = parse_exposition(text)
    names = {name for name, _ in s}
    assert "mirrorkit_term" not in names and "mirrorkit_lsn" not in names
    assert any(dict(labels).get("member") == 'we"ird\\host\nname' for _, labels in s)
    assert 'member="we\\"ird\\\\host\\nname"' in text  # escaped on the wire
    assert render_metrics({}).startswith("# HELP mirrorkit_up")


def test_metrics_carry_the_agents_instruments_and_the_loop_stall() -> None:
    agent = AgentMetrics("node1")
    status = {**primary_status(), "loop_stall": {"last_ms": 2.0, "max_ms": 150.0}}
    agent.registry.register(StatusCollector(lambda: status))
    records = agent.mirror("records")
    records.log_fsync(0.002)
    records.log_appended(10, 4096)
    records.applied(10, 0.03)
    records.sent("node2", 10, 4096)
    records.resync("dr1", "done")
    records.refused(2)
    records.quarantined("orphan", 3)
    agent.loop_stall().observe(0.004)
    other = AgentMetrics("node9")  # a second agent shares no series
    other.mirror("records").log_fsync(1.0)

    async def main() -> bytes:
        server = await start_api("127.0.0.1", 0, lambda: status,
                                 metrics=lambda: metrics_text(agent.registry))
        port = server.sockets[0].getsockname()[1]
        try:
            _, _, body = await request(port, get("/metrics"))
            return body
        finally:
            server.close()
            await server.wait_closed()

    s, types = parse_exposition(asyncio.run(main()).decode())
    own = {"mirror": "records", "member": "node1"}

    def val(name: str, **labels: str) -> float:
        return s[(name, frozenset(labels.items()))]

    assert types["mirrorkit_apply_seconds"] == types["mirrorkit_log_fsync_seconds"] == \
        types["mirrorkit_loop_stall_seconds"] == "histogram"
    assert val("mirrorkit_log_fsync_seconds_count", **own) == 1
    assert val("mirrorkit_log_fsync_seconds_bucket", **own, le="0.0025") == 1
    assert val("mirrorkit_log_fsync_seconds_bucket", **own, le="0.001") == 0
    assert val("mirrorkit_apply_seconds_sum", **own) == pytest.approx(0.03)
    assert val("mirrorkit_loop_stall_seconds_count", member="node1") == 1
    assert val("mirrorkit_log_records_total", **own) == 10
    assert val("mirrorkit_log_bytes_total", **own) == 4096
    assert val("mirrorkit_applied_records_total", **own) == 10
    assert val("mirrorkit_sent_records_total", mirror="records", member="node2") == 10
    assert val("mirrorkit_sent_bytes_total", mirror="records", member="node2") == 4096
    assert val("mirrorkit_resyncs_total", mirror="records", member="dr1", result="done") == 1
    assert val("mirrorkit_refused_records_total", **own) == 2
    assert val("mirrorkit_quarantined_files_total", **own, reason="orphan") == 3
    assert val("mirrorkit_loop_stall_max_seconds", member="node1") == pytest.approx(0.15)
    assert val("mirrorkit_loop_stall_last_seconds", member="node1") == pytest.approx(0.002)
    assert val("mirrorkit_term", mirror="records", member="node1") == 3  # status gauges too
    assert not any(name.endswith("_created") for name, _ in s)
    assert not any(dict(labels).get("member") == "node9" for _, labels in s)

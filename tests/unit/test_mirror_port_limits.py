"""A mirror port's admission bounds (transport/admission.py), each at the
bound and one past it: real sockets, real TLS 1.3 with the mirror's
certificates, connections from several loopback source addresses
(127.0.0.1 and 127.0.0.2.. are all local on Linux)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from pathlib import Path

import pytest
from test_agent_transport import MEMBERS, mirror  # type: ignore[import-not-found]

from mirrorkit.agent.transport.admission import PortLimits, RefusalLog
from mirrorkit.agent.transport.conn import (
    Connection,
    client_context,
    client_handshake,
    serve,
    server_context,
    server_handshake,
)
from mirrorkit.agent.transport.frames import Hello
from mirrorkit.pki import ensure_mirror_pki

REFUSED = (OSError, asyncio.IncompleteReadError, EOFError)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ensure_mirror_pki(d, "records", MEMBERS)
    return d


async def _server(pki: Path, limits: PortLimits,
                  members: frozenset[str] = frozenset()) -> tuple[asyncio.Server, int]:
    cfg = mirror(pki, "node1")

    async def handler(conn: Connection) -> None:
        await server_handshake(conn, cfg, Hello("records", "node1", "primary", 1, 0),
                               ("backup", "async"))
        await conn.recv(60)  # hold the session open

    server = await serve("127.0.0.1", 0, server_context(cfg.tls), handler, "test", set(),
                         limits, members)
    return server, server.sockets[0].getsockname()[1]


async def _member(pki: Path, port: int, source: str) -> Connection:
    """An authenticated backup's connection from ``source``."""
    cfg = mirror(pki, "node2")
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=client_context(cfg.tls), server_hostname="127.0.0.1",
        local_addr=(source, 0)), 30)
    conn = Connection(reader, writer, "server")
    await client_handshake(conn, cfg, Hello("records", "node2", "backup", 1, 0), ("primary",))
    return conn


async def _stall(port: int, source: str) -> asyncio.StreamWriter:
    """A plain TCP connection that never starts its TLS handshake."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    return writer


def _refusals(caplog: pytest.LogCaptureFixture, reason: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if "refused connection" in r.getMessage() and reason in r.getMessage()]


def test_handshakes_per_source(pki: Path, caplog: pytest.LogCaptureFixture) -> None:
    limits = PortLimits(handshakes_per_source=2, handshake_timeout=60)

    async def go() -> None:
        server, port = await _server(pki, limits)
        stalls = [await _stall(port, "127.0.0.1")]
        # at the bound: one stalled and this one in flight from 127.0.0.1
        ok = [await _member(pki, port, "127.0.0.1")]
        stalls.append(await _stall(port, "127.0.0.1"))
        with pytest.raises(REFUSED):  # one past: a third from 127.0.0.1
            await _member(pki, port, "127.0.0.1")
        ok.append(await _member(pki, port, "127.0.0.2"))  # another source is served
        for c in ok:
            await c.close()
        for w in stalls:
            w.close()
        server.close()

    asyncio.run(go())
    assert len(_refusals(caplog, "2 TLS handshakes in flight from this address (at most 2)")) == 1


def test_handshakes_in_total(pki: Path, caplog: pytest.LogCaptureFixture) -> None:
    limits = PortLimits(handshakes=3, handshakes_per_source=2, handshake_timeout=60)

    async def go() -> None:
        server, port = await _server(pki, limits)
        stalls = [await _stall(port, "127.0.0.1"), await _stall(port, "127.0.0.2")]
        member = await _member(pki, port, "127.0.0.3")  # the third in flight: at the bound
        stalls.append(await _stall(port, "127.0.0.4"))
        with pytest.raises(REFUSED):  # a fourth in flight
            await _member(pki, port, "127.0.0.5")
        await member.close()
        for w in stalls:
            w.close()
        server.close()

    asyncio.run(go())
    assert len(_refusals(caplog, "3 TLS handshakes in flight (at most 3)")) == 1


def test_connections_per_port(pki: Path, caplog: pytest.LogCaptureFixture) -> None:
    limits = PortLimits(connections=2)

    async def go() -> None:
        server, port = await _server(pki, limits)
        first = await _member(pki, port, "127.0.0.1")
        second = await _member(pki, port, "127.0.0.2")  # at the bound
        with pytest.raises(REFUSED):
            await _member(pki, port, "127.0.0.3")  # one past
        await first.close()
        # a closed connection frees its place
        for _ in range(100):
            try:
                third = await _member(pki, port, "127.0.0.3")
                break
            except REFUSED:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("a closed connection's place was never freed")
        await second.close()
        await third.close()
        server.close()

    asyncio.run(go())
    assert len(_refusals(caplog, "2 connections open (at most 2)")) >= 1


def test_stalled_handshake_times_out_and_frees_its_slot(
        pki: Path, caplog: pytest.LogCaptureFixture) -> None:
    limits = PortLimits(handshakes_per_source=1, handshake_timeout=0.3)

    async def go() -> None:
        server, port = await _server(pki, limits)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # the server closes it (EOF, or a reset), we do not
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(1), 30) == b""
        writer.close()
        member = await _member(pki, port, "127.0.0.1")  # the slot is free again
        await member.close()
        server.close()

    asyncio.run(go())
    assert any("TLS handshake failed" in r.getMessage() for r in caplog.records)


def test_refusal_log_bounds_lines_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    now = [0.0]
    refusals = RefusalLog("m", PortLimits(log_burst=3, log_interval=10.0, log_sources=2),
                          clock=lambda: now[0])
    for i in range(50):
        refusals.warning(f"10.0.0.{i % 4}", "m: refused connection %d", i)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["m: refused connection 0", "m: refused connection 1",
                     "m: refused connection 2"]
    now[0] = 10.0  # the interval is over: the next refusal sums up the last one
    refusals.warning("10.0.0.9", "m: refused connection %d", 50)
    summary = [line for line in (r.getMessage() for r in caplog.records) if "more" in line]
    counts = {m.group(2): int(m.group(1)) for m in
              (re.search(r"(\d+) more refused or failed connection\(s\) from (.+) in the last 10 s",
                         line) for line in summary) if m}
    # 10.0.0.3 and 10.0.0.0 came first after the burst; later sources are lumped
    assert sum(counts.values()) == 47 and len(counts) == 3 and "other sources" in counts
    assert caplog.records[-1].getMessage() == "m: refused connection 50"


def test_members_get_in_while_strangers_hold_every_shared_slot(pki: Path) -> None:
    # Issue 8: a local user stalling handshakes from several loopback
    # addresses must not keep the backup from its primary (a false fence or
    # failover). The backup's address (127.0.0.9 here) has its own room.
    limits = PortLimits(connections=8, handshakes=2, handshakes_per_source=1,
                        member_reserve=2, handshake_timeout=60)

    async def go() -> None:
        server, port = await _server(pki, limits, frozenset({"127.0.0.9"}))
        stalls = [await _stall(port, f"127.0.0.{i}") for i in (1, 2)]  # every handshake slot
        await asyncio.sleep(0.2)
        with pytest.raises(REFUSED):  # a third stranger is refused...
            await _member(pki, port, "127.0.0.3")
        member = await _member(pki, port, "127.0.0.9")  # ...the member is not
        await member.close()
        for w in stalls:
            w.close()
        server.close()

    asyncio.run(go())

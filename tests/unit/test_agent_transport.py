"""Transport: real mutual TLS 1.3 on loopback, peer checks, garbage handling."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from mirrorkit.agent.config import MemberConfig, MirrorConfig, Timeouts, TlsConfig
from mirrorkit.agent.transport.conn import (
    Connection,
    PeerIdentity,
    PeerRefused,
    check_peer,
    client_context,
    client_handshake,
    connect,
    serve,
    server_context,
    server_handshake,
)
from mirrorkit.agent.transport.frames import Error, Hello, ProtocolError
from mirrorkit.pki import ensure_mirror_pki, member_files

MEMBERS = {"node1": ("127.0.0.1", "failover"), "node2": ("127.0.0.1", "failover"),
           "arb1": ("127.0.0.1", "arbiter"), "dr1": ("127.0.0.1", "async")}
ROLES = {"node1": "primary", "node2": "backup", "arb1": "arbiter", "dr1": "async"}


def mirror(pki: Path, host: str) -> MirrorConfig:
    ca, crt, key = member_files(pki, "records", host)
    return MirrorConfig(
        "records", ROLES[host], None, "async", 7410, [], [], [], Timeouts(),
        TlsConfig(ca, crt, key),
        {n: MemberConfig(n, "127.0.0.1", ROLES[n], 7410) for n in MEMBERS})


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ensure_mirror_pki(d, "records", MEMBERS)
    return d


def test_check_peer_rules(pki: Path) -> None:
    m = mirror(pki, "node1")
    ok = ("backup", "async")
    check_peer(PeerIdentity("node2", "failover"), Hello("records", "node2", "backup", 1, 0), m, ok)
    check_peer(PeerIdentity("dr1", "async"), Hello("records", "dr1", "async", 1, 0), m, ok)
    cases = [
        (PeerIdentity("dr1", "async"), Hello("records", "dr1", "backup", 1, 0), "does not allow"),
        (PeerIdentity("evil", "failover"), Hello("records", "evil", "backup", 1, 0),
         "not a member"),
        (PeerIdentity("node2", "failover"), Hello("records", "dr1", "async", 1, 0),
         "claims to be"),
        (PeerIdentity("node2", "failover"), Hello("other", "node2", "backup", 1, 0),
         "names mirror"),
        (PeerIdentity("arb1", "arbiter"), Hello("records", "arb1", "arbiter", 1, 0),
         "not accepted here"),
        # a failover-class certificate for a member configured as async
        (PeerIdentity("dr1", "failover"), Hello("records", "dr1", "backup", 1, 0),
         "configured class"),
    ]
    for ident, hello, reason in cases:
        with pytest.raises(PeerRefused, match=reason):
            check_peer(ident, hello, m, ok)


async def _server(pki: Path, results: list[Any]) -> tuple[asyncio.Server, int]:
    cfg = mirror(pki, "node1")

    async def handler(conn: Connection) -> None:
        hello = await server_handshake(conn, cfg, Hello("records", "node1", "primary", 1, 9),
                                       ("backup", "async"))
        results.append(hello)
        await conn.recv(5)

    server = await serve("127.0.0.1", 0, server_context(cfg.tls), handler, "test", set())
    return server, server.sockets[0].getsockname()[1]


def test_mutual_tls_hello_exchange(pki: Path) -> None:
    async def go() -> None:
        results: list[Any] = []
        server, port = await _server(pki, results)
        cfg = mirror(pki, "node2")
        conn = await connect("127.0.0.1", port, client_context(cfg.tls))
        ssl_obj = conn.writer.get_extra_info("ssl_object")
        assert ssl_obj.version() == "TLSv1.3"
        reply = await client_handshake(conn, cfg, Hello("records", "node2", "backup", 1, 3),
                                       ("primary",))
        assert reply == Hello("records", "node1", "primary", 1, 9)
        assert results == [Hello("records", "node2", "backup", 1, 3)]
        await conn.close()
        server.close()

    asyncio.run(go())


def test_garbage_and_refusals_are_logged_not_fatal(pki: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def go() -> None:
        results: list[Any] = []
        server, port = await _server(pki, results)
        # 1. garbage instead of a frame
        cfg = mirror(pki, "node2")
        conn = await connect("127.0.0.1", port, client_context(cfg.tls))
        conn.writer.write(b"GET / HTTP/1.0\r\n\r\n")
        reply = await conn.recv(5)
        assert isinstance(reply, Error) and "protocol error" in reply.reason
        await conn.close()
        # 2. wrong role for the certificate's class
        dr = mirror(pki, "dr1")
        conn = await connect("127.0.0.1", port, client_context(dr.tls))
        with pytest.raises(PeerRefused, match="does not allow role 'backup'"):
            await client_handshake(conn, dr, Hello("records", "dr1", "backup", 1, 0),
                                   ("primary",))
        await conn.close()
        # 3. a client that verifies the server as the wrong role
        conn = await connect("127.0.0.1", port, client_context(cfg.tls))
        with pytest.raises(PeerRefused, match="not accepted here"):
            await client_handshake(conn, cfg, Hello("records", "node2", "backup", 1, 0),
                                   ("arbiter",))
        await conn.close()
        # the server still serves a good client afterwards
        conn = await connect("127.0.0.1", port, client_context(cfg.tls))
        await client_handshake(conn, cfg, Hello("records", "node2", "backup", 1, 0),
                               ("primary",))
        await conn.close()
        server.close()

    asyncio.run(go())
    text = caplog.text
    assert "protocol error from" in text and "bad frame magic" in text
    assert "refused peer" in text
    assert "Traceback" not in text


def test_foreign_ca_refused_at_tls(pki: Path, tmp_path: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    other = tmp_path / "other"
    ensure_mirror_pki(other, "records", MEMBERS)
    ca, _, _ = member_files(pki, "records", "node2")
    _, crt, key = member_files(other, "records", "node2")
    foreign = TlsConfig(ca, crt, key)

    async def go() -> None:
        results: list[Any] = []
        server, port = await _server(pki, results)
        with pytest.raises((OSError, asyncio.IncompleteReadError, ProtocolError)):
            conn = await connect("127.0.0.1", port, client_context(foreign))
            await conn.send(Hello("records", "node2", "backup", 1, 0))
            await conn.recv(5)
        await asyncio.sleep(0.1)
        server.close()
        assert results == []

    asyncio.run(go())
    assert "TLS handshake failed" in caplog.text

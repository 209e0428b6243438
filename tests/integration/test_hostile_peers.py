"""A real agent's mirror port under hostile peers: a member certificate of
the mirror's CA whose name carries a newline (log injection), and a flood
of unauthenticated connections (admission bounds, rate-limited logging).

Every wait is a poll with a generous deadline; nothing asserts speed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_loopback import (  # type: ignore[import-not-found]
    MIRROR,
    Cluster,
    cluster_factory,
    wait_for,
)

from mirrorkit.agent.transport.admission import PortLimits
from mirrorkit.agent.transport.frames import (
    FRAME,
    MAX_RECORDS_PER_FRAME,
    Error,
    Hello,
    decode_frame,
    encode_message,
)

pytestmark = pytest.mark.integration
__all__ = ["cluster_factory"]  # the fixture, re-exported for this module

# What a line of the agent's log starts with (cli/main.py's format), the
# Cluster's start marker, or a traceback's indented continuation.
LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
                  r"[\w.]+: |--- start \d+$|    ")
# A TLS handshake record of 512 bytes announced, 6 sent.
PARTIAL_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
FORGED = "2026-12-01 21:00:00,000 WARNING mk: FORGED"  # a CN holds 64 characters
FLOOD = 1000  # connections of the flood test
# How long one connect() of the flood waits for the SYN-ACK before it sends a
# new SYN (a loopback SYN is answered at once unless the listen queue is full).
SYN_WAIT = 0.2


@pytest.fixture
def pair(cluster_factory: Callable[..., Cluster],
         request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = cluster_factory({"node1": ("primary", None), "node2": ("backup", None)})
    for name in c.nodes:
        c.start(name)
    wait_for(lambda: c.mirror("node2").get("connected"), "backup connects")
    yield c
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(c.dump_logs())


def _member_cert(c: Cluster, tmp: Path, cn: str) -> ssl.SSLContext:
    """A client context with a certificate of the mirror's CA, CN ``cn``."""
    base = c.pki / MIRROR
    ca_key = serialization.load_pem_private_key((base / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate((base / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME,
                                                        "failover"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(ca_key, hashes.SHA256()))
    crt, kfile = tmp / "evil.crt", tmp / "evil.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kfile.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(base / "ca.crt")
    ctx.load_cert_chain(crt, kfile)
    return ctx


def _hello_reply(port: int, ctx: ssl.SSLContext, member: str) -> object:
    """Send a HELLO claiming ``member``; the agent's answer (one frame)."""
    hello = json.loads(encode_message(Hello(MIRROR, "node2", "backup", 1, 0))[FRAME.size:])
    hello["member"] = member
    payload = json.dumps(hello).encode()
    frame = encode_message(Hello(MIRROR, "node2", "backup", 1, 0))[:4]
    frame += len(payload).to_bytes(4, "big") + payload

    async def go() -> object:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="x"), 30)
        writer.write(frame)
        header = await asyncio.wait_for(reader.readexactly(FRAME.size), 30)
        body = await asyncio.wait_for(reader.readexactly(int.from_bytes(header[4:], "big")), 30)
        writer.close()
        return decode_frame(header + body)[0]

    return asyncio.run(go())


def test_member_name_with_a_newline_forges_no_log_line(pair: Cluster, tmp_path: Path) -> None:
    c = pair
    node1 = c.nodes["node1"]
    cn = f"node2\n{FORGED}"
    ctx = _member_cert(c, tmp_path, cn)
    # 1. the HELLO claims the certificate's name; 2. it claims a real member,
    # which the certificate does not name
    by_shape = _hello_reply(node1.port, ctx, cn)
    by_cert = _hello_reply(node1.port, ctx, "node2")
    wait_for(lambda: node1.log_text().count("node2\\n") >= 2, "both refusals logged")
    lines = node1.log_text().splitlines()
    assert not [line for line in lines if not LINE.match(line)]
    assert not [line for line in lines if line.startswith(FORGED)]
    assert any("\\n" + FORGED in line for line in lines)  # the name, escaped
    assert isinstance(by_shape, Error), by_shape
    assert "HELLO.member" in by_shape.reason and "is not a member name" in by_shape.reason
    assert isinstance(by_cert, Error), by_cert
    assert "is not a member of 'records'" in by_cert.reason
    # the real backup was not disturbed
    (node1.root / "after").write_text("still mirrored\n")
    wait_for(lambda: (c.nodes["node2"].root / "after").exists(), "replication goes on")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _flood_socket(port: int) -> socket.socket:
    """A socket from 127.0.0.2 connected to ``port`` (OSError when refused,
    reset, or not answered within 10 s).

    When the port's listen queue is full the kernel drops the SYN and would
    send it again only after 1 s: in the flood test that wait, not the
    agent, was most of the time (30 of 1,000 connects, 30 of 40 s). A
    connect not answered within SYN_WAIT is tried again at once from a new
    socket instead, so the same connections reach the agent, faster."""
    for _ in range(int(10 / SYN_WAIT)):
        s = socket.socket()
        s.settimeout(SYN_WAIT)
        try:
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", port))
        except TimeoutError:
            s.close()
            continue
        except BaseException:
            s.close()
            raise
        s.settimeout(10)
        return s
    raise TimeoutError(f"127.0.0.1:{port} answered no SYN within 10 s")


def test_connection_flood_is_bounded(pair: Cluster) -> None:
    """1,000 unauthenticated connections from 127.0.0.2 (plain, garbage,
    stalled mid-handshake): a bounded number of WARNING lines, bounded fds,
    and the backup (127.0.0.1) keeps replicating and can reconnect."""
    c = pair
    node1 = c.nodes["node1"]
    assert node1.proc is not None
    baseline = _fds(node1.proc.pid)
    limits = PortLimits()
    started = time.monotonic()
    before = len(node1.log_text().splitlines())
    stalled: list[socket.socket] = []
    most_fds = connected = 0
    for i in range(FLOOD):
        s = None
        try:
            s = _flood_socket(node1.port)
            connected += 1
            if i % 10 == 0:
                stalled.append(s)  # never sends its ClientHello
                continue
            if i % 10 == 5:  # stalls mid-ClientHello: a record header, part of a body
                s.sendall(PARTIAL_HELLO)
                stalled.append(s)
                continue
            if i % 2:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n" + os.urandom(64))
        except OSError:
            pass  # refused or reset by the agent: what a flood gets
        if s is not None:
            s.close()
        if i % 20 == 0:
            most_fds = max(most_fds, _fds(node1.proc.pid))
    try:
        assert len(stalled) >= 100 and connected >= 500
        most_fds = max(most_fds, _fds(node1.proc.pid))
        # Accepted but not yet refused: a few accept bursts (asyncio accepts
        # up to the listen backlog per wake-up; a refused socket is closed
        # within two turns of the loop) on top of what the caps admit.
        assert most_fds <= baseline + 4 * limits.backlog + limits.handshakes + 16
        # Once the agent has caught up, the 200 held stalls occupy at most
        # handshakes_per_source descriptors: the rest were closed at once.
        pid = node1.proc.pid
        wait_for(lambda: _fds(pid) <= baseline + limits.handshakes_per_source + 8,
                 "the agent holds only the admitted stalls")
        (node1.root / "during").write_text("written during the flood\n")
        wait_for(lambda: (c.nodes["node2"].root / "during").exists(), "replication goes on")
        # the backup reconnects while the flood's stalls are held open
        assert c.stop("node2") == 0
        c.start("node2")
        (node1.root / "after-restart").write_text("x\n")
        wait_for(lambda: (c.nodes["node2"].root / "after-restart").exists(),
                 "the restarted backup reconnects and catches up")
    finally:
        for s in stalled:
            s.close()
    def flood_lines() -> list[str]:
        return [line for line in node1.log_text().splitlines()[before:] if "127.0.0.2" in line]

    def accounted() -> int:
        """Refusals logged in full plus those counted in summary lines."""
        lines = flood_lines()
        summed = sum(int(m.group(1)) for line in lines
                     if (m := re.search(r"(\d+) more refused or failed", line)))
        return summed + sum(1 for line in lines if "more refused" not in line)

    # Every connection that got through connect() is refused or fails its
    # handshake, and is logged or counted (summaries come at interval ends).
    wait_for(lambda: accounted() >= connected, "every flood connection accounted for",
             timeout=90)
    windows = (time.monotonic() - started) / limits.log_interval + 2
    flood = flood_lines()
    assert all(" WARNING " in line for line in flood)
    # at most log_burst lines in full plus one summary per interval
    assert len(flood) <= windows * (limits.log_burst + 1), flood[:20]
    assert any("more refused or failed connection(s) from 127.0.0.2" in line for line in flood)
    assert _fds(node1.proc.pid) <= baseline + 16


def test_a_backlog_of_small_records_ships_within_the_frame_bound(pair: Cluster) -> None:
    """More records than one RECORDS frame may hold, in well under the 1 MiB
    byte budget: the primary cuts its batches at MAX_RECORDS_PER_FRAME, so
    the backup (which refuses a frame over it) catches up."""
    c = pair
    node1 = c.nodes["node1"]
    assert c.stop("node2") == 0
    target = 2 * MAX_RECORDS_PER_FRAME
    for i in range(20):
        if c.mirror("node1").get("lsn", 0) > target:
            break
        batch = node1.root / f"b{i}"
        batch.mkdir()
        for j in range(500):
            (batch / f"f{j}").write_bytes(b"x")
        time.sleep(0.5)  # let capture log them before checking the LSN
    wait_for(lambda: c.mirror("node1").get("lsn", 0) > target, "a backlog of small records")
    m = c.mirror("node1")
    assert m["log_bytes"] < 4 << 20
    c.start("node2")
    wait_for(lambda: c.mirror("node2").get("applied_lsn") == c.mirror("node1").get("lsn"),
             "the backup applies the backlog", timeout=120)
    assert c.converged("node1", "node2")
    for name in ("node1", "node2"):
        text = c.nodes[name].log_text()
        assert "protocol error" not in text and "records in one buffer" not in text

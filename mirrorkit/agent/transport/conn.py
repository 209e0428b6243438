"""Transport: mutual-TLS (1.3 only) connections between members of a mirror.

Contract
--------

Every mirror has its own CA, so every mirror has its own pair of SSL contexts
(:func:`server_context`, :func:`client_context`) built from the mirror's
``tls`` config, and listens on its own port. A connection is usable only
after *both* checks passed:

1. the TLS handshake (done by :mod:`ssl`): TLS 1.3, both sides present a
   certificate that chains to the mirror's CA. Host names are *not* checked
   by TLS: members are identified by their certificate's CN instead, because
   tests and NAT'ed sites reach members by addresses that need not be in the
   SAN.
2. the HELLO exchange (:func:`check_peer`): the certificate's CN is a member
   of the mirror, equals the member name claimed in HELLO, the certificate's
   OU (member class) allows the role claimed (``failover`` -> primary or
   backup, ``arbiter`` -> arbiter, ``async`` -> async), the class matches the
   member's class in our config, and the role is one this endpoint accepts
   (a primary serves backups and async members; an arbiter serves failover
   members; a receiver accepts only a primary).

A refused peer gets an ``ERROR`` frame with the reason when it got past TLS,
and the reason is logged on our side (one line, no traceback), through the
port's rate-limited :class:`~.admission.RefusalLog`. Before TLS starts,
:class:`~.admission.Admission` bounds the port's open connections and TLS
handshakes in flight (in total and per source address).

Timing: the TLS handshake and the HELLO exchange are bounded by
``HANDSHAKE_TIMEOUT``; :meth:`Connection.recv` takes a timeout so callers can
detect a silent peer (heartbeats are the liveness signal). :meth:`Connection.
send` waits for the socket buffer to drain (``drain()``), so a slow peer slows
the sender instead of growing memory; the replication sender adds an
unacknowledged-bytes window on top (see ``replication``).

Errors: handlers run under :func:`serve`, which turns every exception into a
logged line and a closed connection; the agent never dies of a peer's bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mirrorkit.agent.config import MirrorConfig, TlsConfig
from mirrorkit.agent.transport.admission import (
    HANDSHAKE_TIMEOUT,
    Admission,
    PortLimits,
    RefusalLog,
)
from mirrorkit.agent.transport.frames import (
    PROTOCOL_VERSION,
    Error,
    Hello,
    Message,
    ProtocolError,
    VersionMismatch,
    encode_message,
    read_message,
)
from mirrorkit.agent.util.aio import wait_for

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "ROLE_CLASSES",
    "Connection",
    "PeerIdentity",
    "PeerOtherVersion",
    "PeerRefused",
    "PortLimits",
    "check_peer",
    "client_context",
    "client_handshake",
    "connect",
    "serve",
    "server_context",
    "server_handshake",
]

log = logging.getLogger(__name__)

ROLE_CLASSES = {"primary": "failover", "backup": "failover", "arbiter": "arbiter",
                "async": "async"}


class PeerRefused(Exception):
    """The peer is not who may talk to us in the role it claims."""


class PeerOtherVersion(ProtocolError):
    """An authenticated member speaks another protocol version: it is alive
    (a rolling upgrade), though we cannot talk. Failover must not read it
    as silence (arbiter/witness.py, stream/receiver.py)."""

    def __init__(self, member: str, version: int) -> None:
        self.member = member
        self.version = version
        super().__init__(f"{member} speaks protocol version {version}, we speak "
                         f"{PROTOCOL_VERSION}: replication with it waits until both run the "
                         f"same mirrorkit version")


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    cn: str
    ou: str


def _context(tls: TlsConfig, purpose: ssl.Purpose) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH
                         else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # identity is the CN, checked in check_peer
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(tls.ca))
    ctx.load_cert_chain(certfile=str(tls.cert), keyfile=str(tls.key))
    return ctx


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    return _context(tls, ssl.Purpose.CLIENT_AUTH)


def client_context(tls: TlsConfig) -> ssl.SSLContext:
    return _context(tls, ssl.Purpose.SERVER_AUTH)


def _identity(writer: asyncio.StreamWriter) -> PeerIdentity:
    obj = writer.get_extra_info("ssl_object")
    cert = obj.getpeercert() if obj is not None else None
    if not cert:
        raise PeerRefused("no peer certificate")
    fields: dict[str, str] = {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            fields.setdefault(key, value)
    cn, ou = fields.get("commonName"), fields.get("organizationalUnitName")
    if not cn or not ou:
        raise PeerRefused(f"certificate lacks CN or OU (subject {fields})")
    return PeerIdentity(cn, ou)


def check_peer(identity: PeerIdentity, hello: Hello, mirror: MirrorConfig,
               accept_roles: tuple[str, ...]) -> None:
    """Raise :class:`PeerRefused` unless ``identity`` may claim ``hello``."""
    if hello.mirror != mirror.name:
        raise PeerRefused(f"hello names mirror {hello.mirror!r}, this is {mirror.name!r}")
    member = mirror.members.get(identity.cn)
    if member is None:
        raise PeerRefused(f"certificate CN {identity.cn!r} is not a member of {mirror.name!r}")
    if hello.member != identity.cn:
        raise PeerRefused(f"certificate CN {identity.cn!r} claims to be member "
                          f"{hello.member!r}")
    wanted = ROLE_CLASSES.get(hello.role)
    promoted_dr = (hello.role == "primary" and identity.ou == "async"
                   and member.kind == "dr")  # a disaster-recovery member promoted
    if (wanted is None or wanted != identity.ou) and not promoted_dr:
        raise PeerRefused(f"{identity.cn}: certificate class (OU) {identity.ou!r} does not "
                          f"allow role {hello.role!r}")
    if member.member_class != identity.ou:
        raise PeerRefused(f"{identity.cn}: certificate class {identity.ou!r} differs from its "
                          f"configured class {member.member_class!r}")
    if hello.role not in accept_roles:
        raise PeerRefused(f"{identity.cn}: role {hello.role!r} not accepted here (expected "
                          f"{' or '.join(accept_roles)})")


class Connection:
    """One verified TLS stream carrying protocol messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 label: str) -> None:
        self.reader = reader
        self.writer = writer
        self.label = label  # for log lines: "member@address:port" once known
        self.identity: PeerIdentity | None = None
        # Our term, stamped on the ERROR sent at close; the handshake sets it
        # from our HELLO, a worker may point it at its role owner.
        self.term_fn: Callable[[], int] = lambda: 0

    async def send(self, msg: Message) -> None:
        if self.writer.is_closing():
            raise ConnectionResetError(f"connection with {self.label} is closed")
        data = encode_message(msg)
        try:
            self.writer.write(data)
        except AttributeError:
            # asyncio's TLS transport once its connection is lost (3.11): its
            # protocol is gone and write() fails on None. Closed is closed.
            raise ConnectionResetError(f"connection with {self.label} was lost") from None
        await self.writer.drain()

    def send_nowait(self, msg: Message) -> None:
        """Queue ``msg`` without waiting (for a callback that must not yield);
        a later close still flushes it. Nothing if the connection is closing."""
        if not self.writer.is_closing():
            with contextlib.suppress(AttributeError):  # lost: see send()
                self.writer.write(encode_message(msg))

    async def recv(self, timeout: float | None = None, control_only: bool = False) -> Message:
        if timeout is None:
            return await read_message(self.reader, control_only)
        return await wait_for(read_message(self.reader, control_only), timeout)

    async def close(self, reason: str | None = None) -> None:
        if reason is not None and not self.writer.is_closing():
            try:
                self.writer.write(encode_message(Error(reason[:500], self.term_fn())))
                await wait_for(self.writer.drain(), 2.0)
            except (OSError, TimeoutError, ProtocolError):
                pass
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            await wait_for(self.writer.wait_closed(), 2.0)


async def _recv_hello(conn: Connection) -> Message:
    try:
        return await conn.recv(HANDSHAKE_TIMEOUT, control_only=True)
    except VersionMismatch as exc:
        cn = conn.identity.cn if conn.identity is not None else "?"
        raise PeerOtherVersion(cn, exc.version) from None


async def server_handshake(conn: Connection, mirror: MirrorConfig, me: Hello,
                           accept_roles: tuple[str, ...]) -> Hello:
    """Read the client's HELLO, verify it, answer with ``me``."""
    conn.term_fn = lambda: me.term
    conn.identity = _identity(conn.writer)
    msg = await _recv_hello(conn)
    if not isinstance(msg, Hello):
        raise ProtocolError(f"expected HELLO, got {type(msg).__name__}")
    # The label names the member only once the certificate proved the name
    # (the decoder already refused a name of the wrong shape): a log line
    # must not carry a name the peer merely claims.
    check_peer(conn.identity, msg, mirror, accept_roles)
    conn.label = f"{msg.member}@{conn.label}"
    await conn.send(me)
    return msg


async def client_handshake(conn: Connection, mirror: MirrorConfig, me: Hello,
                           accept_roles: tuple[str, ...]) -> Hello:
    """Send ``me``, read and verify the server's HELLO."""
    conn.term_fn = lambda: me.term
    conn.identity = _identity(conn.writer)
    await conn.send(me)
    msg = await _recv_hello(conn)
    if isinstance(msg, Error):
        raise PeerRefused(f"refused by {conn.label}: {msg.reason}")
    if not isinstance(msg, Hello):
        raise ProtocolError(f"expected HELLO, got {type(msg).__name__}")
    check_peer(conn.identity, msg, mirror, accept_roles)
    conn.label = f"{msg.member}@{conn.label}"
    return msg


async def connect(host: str, port: int, ctx: ssl.SSLContext) -> Connection:
    """Dial and complete TLS; raises OSError/ssl.SSLError/TimeoutError."""
    reader, writer = await wait_for(
        asyncio.open_connection(host, port, ssl=ctx, server_hostname=host,
                                ssl_handshake_timeout=HANDSHAKE_TIMEOUT),
        HANDSHAKE_TIMEOUT + 1,
    )
    return Connection(reader, writer, f"{host}:{port}")


Handler = Callable[[Connection], Awaitable[None]]


async def serve(host: str, port: int, ctx: ssl.SSLContext, handler: Handler,
                name: str, sessions: set[asyncio.Task[Any]],
                limits: PortLimits | None = None,
                member_sources: frozenset[str] = frozenset()) -> asyncio.Server:
    """Listen on ``host:port``; run ``handler`` for each verified-TLS connection.

    Each connection's task is kept in ``sessions`` while it runs, so that the
    owner can cancel them on shutdown (closing a server does not).

    TLS is started explicitly after accept (not by ``start_server(ssl=)``) so
    that a failed handshake, e.g. a certificate from another CA, is logged with
    its reason instead of being dropped silently by asyncio, and so that a
    connection over ``limits`` (:mod:`.admission`) is closed before any TLS
    work. Refusals and failures are logged through one rate-limited
    :class:`~.admission.RefusalLog` per port.
    """
    lim = limits or PortLimits()
    admission = Admission(lim, member_sources)
    refusals = RefusalLog(name, lim)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        addr = writer.get_extra_info("peername")
        source = str(addr[0]) if isinstance(addr, tuple) else str(addr)
        label = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        refused = admission.refusal(source)
        if refused is not None:
            refusals.warning(source, "%s: refused connection from %s: %s", name, label, refused)
            writer.transport.abort()
            return
        admission.opened(source)
        try:
            try:
                await writer.start_tls(ctx, ssl_handshake_timeout=lim.handshake_timeout)
            except (ssl.SSLError, OSError, TimeoutError) as exc:
                refusals.warning(source, "%s: refused connection from %s: TLS handshake "
                                 "failed: %s", name, label, exc)
                writer.transport.abort()
                return
            finally:
                admission.handshake_done(source)
            conn = Connection(reader, writer, label)
            task = asyncio.current_task()
            assert task is not None
            sessions.add(task)
            try:
                await run_guarded(conn, handler, name, refusals, source)
            except asyncio.CancelledError:
                # Top of the connection's task: asyncio 3.11 would log a cancelled
                # client_connected_cb task as an error with a traceback.
                pass
            finally:
                sessions.discard(task)
        finally:
            admission.closed()

    return await asyncio.start_server(on_client, host, port, reuse_address=True,
                                      backlog=lim.backlog)


async def run_guarded(conn: Connection, handler: Handler, name: str,
                      refusals: RefusalLog | None = None, source: str = "") -> None:
    """Run ``handler``; turn every failure into one log line and a close.
    With ``refusals`` (a server's port) refusals and protocol errors are
    rate-limited per source."""
    reason: str | None = None
    try:
        await handler(conn)
    except PeerRefused as exc:
        reason = f"refused: {exc}"
        if refusals is not None:
            refusals.warning(source, "%s: refused peer %s: %s", name, conn.label, exc)
        else:
            log.warning("%s: refused peer %s: %s", name, conn.label, exc)
    except ProtocolError as exc:
        reason = f"protocol error: {exc}"
        if refusals is not None:
            refusals.error(source, "%s: protocol error from %s: %s; closing", name, conn.label,
                           exc)
        else:
            log.error("%s: protocol error from %s: %s; closing", name, conn.label, exc)
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as exc:
        log.info("%s: connection with %s closed: %s", name, conn.label,
                 type(exc).__name__ if not str(exc) else exc)
    except TimeoutError:
        log.warning("%s: peer %s silent for too long; closing", name, conn.label)
    except asyncio.CancelledError:
        await conn.close()
        raise
    except Exception as exc:  # a bug must cost one connection, not the agent
        log.error("%s: connection with %s failed: %r", name, conn.label, exc,
                  exc_info=log.isEnabledFor(logging.DEBUG))
    await conn.close(reason)


async def send_heartbeats(conn: Connection, make: Callable[[], Message],
                          interval: float) -> None:
    """Send ``make()`` every ``interval`` seconds until cancelled."""
    while True:
        await conn.send(make())
        await asyncio.sleep(interval)

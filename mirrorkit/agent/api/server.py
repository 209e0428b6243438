"""The small HTTP/1.1 server under the status API and the control socket.

One request per connection (``Connection: close``), every input bounded
(docs/architecture.md, "Status API, probe and control socket"):

* the request line and each header line at most ``LINE_LIMIT`` bytes (414 /
  431 past it), at most ``MAX_HEADERS`` header lines and ``HEAD_LIMIT``
  bytes of them in all (431);
* the request line and headers must arrive within ``Limits.head_timeout``
  (408), a body within ``Limits.body_timeout``;
* a body is read only when the route asked for one, and only up to the
  route's own bound (413 naming it); an answer sent before a body was read
  is followed by a *lingering close*: the server stops writing, then reads
  and drops at most ``LINGER_BYTES`` for at most ``LINGER_SECONDS``, so the
  client reads the answer instead of a reset, and nothing is kept;
* at most ``Limits.connections`` connections at once. The server accepts
  only while it holds fewer; past that, a new connection evicts the oldest
  one that is not being dispatched (still sending its request, or not
  reading its answer: the slow-client attack), and when every connection is
  being dispatched the next ones wait in the kernel's listen backlog
  (``BACKLOG``) — queued, never refused with a 503;
* a peer address outside loopback holds at most ``Limits.per_client``
  connections (its own oldest is evicted first, else 503). On loopback, and
  on a Unix socket, every client is the same address: "per client" there is
  the host, bounded by the total and by eviction.

Malformed input is a 4xx with a message, never a traceback; only a failure
of the server's own code (a handler that raised) is a 500.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import json
import logging
import socket
from dataclasses import dataclass
from typing import Any

__all__ = ["BACKLOG", "HEAD_LIMIT", "LINE_LIMIT", "LINGER_BYTES", "MAX_HEADERS",
           "BadRequest", "HttpServer", "Limits", "Listener", "Request", "Response",
           "error_body", "json_body", "listen_tcp"]

log = logging.getLogger(__name__)

# (code, content type, body) of one answer.
Response = tuple[int, str, bytes]

LINE_LIMIT = 8192       # bytes of the request line, and of each header line (CRLF not counted)
MAX_HEADERS = 100       # header lines
HEAD_LIMIT = 32768      # bytes of all header lines together, CRLFs counted
LINGER_BYTES = 2 << 20  # at most this much of an unread body is read and dropped ...
LINGER_SECONDS = 2.0    # ... for at most this long, before the connection is closed
BACKLOG = 1024          # connections the kernel queues while every slot is busy
WRITE_TIMEOUT = 10.0    # sending one answer
_READER_LIMIT = HEAD_LIMIT + LINE_LIMIT + 2  # a line longer than any bound still ends in 431
_CHUNK = 65536
_REASONS = {
    200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
    413: "Content Too Large", 414: "URI Too Long", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
}
_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Limits:
    """The per-server bounds (the others are module constants)."""

    connections: int = 1024    # open at once; more wait in the backlog
    per_client: int = 32       # open at once from one non-loopback peer address
    head_timeout: float = 2.0  # seconds for the request line and headers
    body_timeout: float = 10.0  # seconds for a body a route reads
    # A connection younger than this is never evicted: a thousand clients
    # connecting at once are accepted before they have written anything,
    # and must not be taken for slow ones.
    evict_after: float = 1.0


class BadRequest(Exception):
    """The request cannot be served; sent as ``code`` with the message."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    length: int  # Content-Length (0 when absent)


def json_body(code: int, body: Any) -> Response:
    """One JSON answer, keys sorted (the caller makes ``body`` JSON-safe)."""
    return code, _JSON, (json.dumps(body, sort_keys=True) + "\n").encode()


def error_body(code: int, message: str) -> Response:
    return code, _JSON, (json.dumps({"error": message}) + "\n").encode()


async def _line(reader: asyncio.StreamReader, what: str, code: int) -> bytes:
    try:
        line = await reader.readline()
    except (ValueError, asyncio.LimitOverrunError):  # longer than the reader's own limit
        raise BadRequest(f"{what} longer than {LINE_LIMIT} bytes", code) from None
    if not line.endswith(b"\n"):
        raise BadRequest(f"incomplete {what} (connection closed)")
    line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
    if len(line) > LINE_LIMIT:
        raise BadRequest(f"{what} of {len(line)} bytes is longer than {LINE_LIMIT} bytes", code)
    return line


async def read_head(reader: asyncio.StreamReader) -> Request:
    """Read the request line and headers within the bounds; raises BadRequest."""
    fields = (await _line(reader, "request line", 414)).decode("latin-1").split(" ")
    if len(fields) != 3 or not fields[2].startswith("HTTP/1."):
        raise BadRequest("request line must be 'METHOD /path HTTP/1.x'")
    method, target, _ = fields
    if not method.isascii() or not method.isalpha() or not target.startswith("/"):
        raise BadRequest("malformed method or request target (expected e.g. 'GET /health')")
    length: int | None = None
    total = 0
    for count in range(MAX_HEADERS + 1):
        header = await _line(reader, "header line", 431)
        if not header:
            return Request(method, target, length or 0)
        if count == MAX_HEADERS:
            raise BadRequest(f"more than {MAX_HEADERS} header lines", 431)
        total += len(header) + 2
        if total > HEAD_LIMIT:
            raise BadRequest(f"header lines longer than {HEAD_LIMIT} bytes in all", 431)
        name, colon, value = header.decode("latin-1").partition(":")
        if not colon or not name or name != name.strip():
            raise BadRequest("malformed header line (expected 'Name: value')")
        key, value = name.lower(), value.strip()
        if key == "transfer-encoding":
            raise BadRequest("Transfer-Encoding is not supported: send Content-Length", 501)
        if key == "content-length":
            if not (value.isascii() and value.isdigit()) or len(value) > 18:
                raise BadRequest(f"malformed Content-Length {value[:40]!r}")
            if length is not None and int(value) != length:
                raise BadRequest("conflicting Content-Length headers")
            length = int(value)
    raise AssertionError("unreachable")


class _Conn:
    """One accepted connection, for the slot accounting."""

    __slots__ = ("answered", "client", "dispatching", "evicted", "since", "task")

    def __init__(self, client: str | None, since: float) -> None:
        self.client = client
        self.since = since  # loop.time() at accept
        self.dispatching = False  # a handler runs: not evictable
        self.answered = False  # the answer is being sent (or was)
        self.evicted = False
        self.task: asyncio.Task[None] | None = None


class HttpServer:
    """Serves one request per connection with :meth:`dispatch`.

    :meth:`admit` may refuse a connection as soon as it is accepted (the
    control socket checks the peer's credentials there): the request head
    is then read, never dispatched, and the refusal is the answer.
    :meth:`dispatch` answers a parsed request; it reads a body, if it wants
    one, with :meth:`read_body`. This class bounds everything else.
    """

    allow = "GET"  # the Allow header of a 405

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._conns: dict[_Conn, None] = {}  # accept order: the oldest first
        self._per_client: collections.Counter[str] = collections.Counter()
        self._freed = asyncio.Event()
        self.evicted = 0  # connections evicted so far (tests, bench)

    @property
    def active(self) -> int:
        return len(self._conns)

    def client_key(self, sock: socket.socket) -> str | None:
        """The client a per-client bound counts this connection to: its peer
        address, or ``None`` when clients cannot be told apart by address
        (loopback: every local user is 127.0.0.1; a Unix socket)."""
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        try:
            addr = ipaddress.ip_address(sock.getpeername()[0])
        except (OSError, ValueError):
            return None
        mapped = getattr(addr, "ipv4_mapped", None)
        return None if (mapped or addr).is_loopback else str(addr)

    async def admit(self, writer: asyncio.StreamWriter) -> Response | None:
        """A refusal for this connection, or ``None`` to serve it."""
        return None

    async def dispatch(self, request: Request, reader: asyncio.StreamReader) -> Response:
        raise NotImplementedError

    async def read_body(self, reader: asyncio.StreamReader, request: Request,
                        max_body: int, what: str) -> bytes:
        """The body of ``request``, at most ``max_body`` bytes (413 naming
        ``what`` and the bound past it), within the body deadline."""
        if request.length > max_body:
            raise BadRequest(f"a body of {request.length} bytes is over the limit of "
                             f"{max_body} bytes for {what}", 413)
        if request.length == 0:
            return b""
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                return await reader.readexactly(request.length)
        except TimeoutError:
            raise BadRequest("request body not received in time", 408) from None
        except asyncio.IncompleteReadError:
            raise BadRequest("connection closed in the middle of the body") from None

    # -- accepting ------------------------------------------------------------

    async def serve(self, lsock: socket.socket) -> None:
        """Accept connections on the listening ``lsock`` until cancelled."""
        loop = asyncio.get_running_loop()
        failing = False
        while True:
            try:
                sock, _ = await loop.sock_accept(lsock)
            except OSError as exc:  # EMFILE and friends: back off, keep serving
                if not failing:  # once until it works again, not ten lines a second
                    log.warning("agent API: accept failed: %s (retrying)", exc)
                failing = True
                await asyncio.sleep(0.1)
                continue
            failing = False
            while len(self._conns) >= self.limits.connections and not self._evict(None):
                # Every slot is being dispatched or young: this one waits
                # for a slot, the next ones in the kernel's backlog.
                self._freed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.limits.evict_after):
                        await self._freed.wait()
            conn = _Conn(self.client_key(sock), loop.time())
            refusal = None
            if conn.client is not None and self._per_client[conn.client] >= \
                    self.limits.per_client and not self._evict(conn.client):
                refusal = error_body(503, f"too many connections from {conn.client} "
                                          f"(at most {self.limits.per_client} at once)")
            self._conns[conn] = None
            if conn.client is not None:
                self._per_client[conn.client] += 1
            conn.task = asyncio.create_task(self._connection(sock, conn, refusal))
            # Let the new connection read its request before the next accept
            # may count it among the oldest (1,000 clients at once are queued,
            # not evicted before they were heard).
            await asyncio.sleep(0)

    def _evict(self, client: str | None) -> bool:
        """Evict the oldest evictable connection (of ``client``, when given):
        not being dispatched, older than ``evict_after``."""
        old_enough = asyncio.get_running_loop().time() - self.limits.evict_after
        for conn in self._conns:
            if conn.since > old_enough:
                return False  # the others are younger still
            if not conn.dispatching and not conn.evicted and \
                    (client is None or conn.client == client) and conn.task is not None:
                conn.evicted = True
                self.evicted += 1
                self._release(conn)
                conn.task.cancel()
                return True
        return False

    def _release(self, conn: _Conn) -> None:
        if conn in self._conns:
            del self._conns[conn]
            if conn.client is not None:
                self._per_client[conn.client] -= 1
                if self._per_client[conn.client] <= 0:
                    del self._per_client[conn.client]
            self._freed.set()

    # -- one connection --------------------------------------------------------

    async def _connection(self, sock: socket.socket, conn: _Conn,
                          refusal: Response | None) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await _streams(sock)
            if refusal is None:
                answer = await self._answer(reader, writer, conn)
            else:
                answer = refusal
            conn.answered = True
            await self._send(writer, answer)
            await _linger(reader, writer)
        except asyncio.CancelledError:
            if not conn.evicted:
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            if writer is not None and not conn.answered:  # best effort: say why
                with contextlib.suppress(Exception):
                    writer.write(_head(*error_body(
                        503, "evicted: the connection slots were all taken and this "
                             "request was not complete; send the whole request at once"),
                        self.allow))
        except Exception:  # never let one connection take the server down
            log.exception("agent API: unexpected error")
        finally:
            self._release(conn)
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            else:
                sock.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      conn: _Conn) -> Response:
        refusal = await self.admit(writer)
        try:
            async with asyncio.timeout(self.limits.head_timeout):
                request = await read_head(reader)
        except BadRequest as exc:
            return refusal or error_body(exc.code, str(exc))
        except TimeoutError:
            return refusal or error_body(
                408, f"request line and headers not received within "
                     f"{self.limits.head_timeout:g} s")
        except ConnectionError:
            return refusal or error_body(400, "connection closed mid-request")
        if refusal is not None:
            return refusal
        conn.dispatching = True
        try:
            return await self.dispatch(request, reader)
        except BadRequest as exc:
            return error_body(exc.code, str(exc))
        except (ConnectionError, asyncio.IncompleteReadError):
            return error_body(400, "connection closed mid-request")
        except Exception as exc:  # e.g. status() itself failed: say so, keep serving
            log.exception("agent API: cannot build the answer")
            return error_body(500, f"cannot answer: {type(exc).__name__}: {exc}")
        finally:
            conn.dispatching = False

    async def _send(self, writer: asyncio.StreamWriter, answer: Response) -> None:
        writer.write(_head(*answer, self.allow))
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()


def _head(code: int, ctype: str, body: bytes, allow: str) -> bytes:
    head = (
        f"HTTP/1.1 {code} {_REASONS.get(code, 'Unknown')}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\nConnection: close\r\n"
    )
    if code == 405:
        head += f"Allow: {allow}\r\n"
    return head.encode() + b"\r\n" + body


async def _streams(sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_READER_LIMIT, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then drop what the client still sends (an unread body),
    within bounds: closing with unread input would reset the connection
    before the client has read the answer."""
    if reader.at_eof():
        return
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
    dropped = 0
    with contextlib.suppress(OSError, TimeoutError, ConnectionError):
        async with asyncio.timeout(LINGER_SECONDS):
            while dropped <= LINGER_BYTES:
                chunk = await reader.read(_CHUNK)
                if not chunk:
                    return
                dropped += len(chunk)


class Listener:
    """A listening socket served by an :class:`HttpServer` (what
    ``asyncio.Server`` offers that callers use: ``sockets``, ``close``,
    ``wait_closed``)."""

    def __init__(self, sock: socket.socket, server: HttpServer) -> None:
        self.sockets = (sock,)
        self.server = server
        self._task = asyncio.create_task(server.serve(sock), name="http-accept")

    def close(self) -> None:
        self._task.cancel()
        self.sockets[0].close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def listen_tcp(host: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket on ``host:port``; raises OSError."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock

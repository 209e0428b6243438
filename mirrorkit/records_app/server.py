"""records-app's HTTP API (``http.server``, one thread per connection).

Routes::

    POST /records            body (<= max_body bytes) -> 201 {"id", "host", "path", "bytes"}
    GET  /records/<id>       -> 200 the body, or 404
    GET  /records?after=ID&limit=N  -> 200 {"ids": [...], "more": bool} (N <= 1000)
    GET  /health             -> 200 {"host", "data_dir"}

Every error is JSON ``{"error": "..."}`` naming what is wrong. Bounds: at
most ``max_connections`` connections are served at once (one more is
answered 503 at once and closed), a body larger than ``max_body`` is 413
without being read, and a connection is closed ``request_seconds`` after it
was accepted, however slowly its client sends (HTTP/1.0: one request per
connection, so that bounds the whole request).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mirrorkit.records_app.store import MAX_LIST, RecordStore, valid_id

__all__ = ["Limits", "RecordsServer", "make_server"]

log = logging.getLogger("records-app")


@dataclass(frozen=True)
class Limits:
    max_body: int = 1 << 20          # bytes in one record
    max_connections: int = 64        # served at once
    request_seconds: float = 30.0    # from accept to the answer
    max_query: int = 2048            # bytes of the query string


class RecordsServer(ThreadingHTTPServer):
    daemon_threads = False  # shutdown waits for in-flight writes (each bounded in time)
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], store: RecordStore, limits: Limits) -> None:
        self.store = store
        self.limits = limits
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        super().__init__(address, RecordsHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            _refuse_busy(request, self.limits.max_connections)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # The whole connection, however slow its client, ends request_seconds after accept.
        timer = threading.Timer(self.limits.request_seconds, _cut, (request,))
        timer.daemon = True
        timer.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            timer.cancel()
            self._slots.release()


def _cut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _refuse_busy(sock: socket.socket, limit: int) -> None:
    body = json.dumps({"error": f"busy: {limit} connections are being served; retry"}).encode()
    head = (f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
    try:
        sock.settimeout(1)
        sock.sendall(head.encode() + body)
    except OSError:
        pass


class RecordsHandler(BaseHTTPRequestHandler):
    server: RecordsServer
    server_version = "records-app/1"
    protocol_version = "HTTP/1.0"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.limits.request_seconds)

    # --- routes ----------------------------------------------------------

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if len(url.query) > self.server.limits.max_query:
            self._error(HTTPStatus.REQUEST_URI_TOO_LONG,
                        f"query string longer than {self.server.limits.max_query} bytes")
            return
        if url.path == "/health":
            self._json(HTTPStatus.OK, {"host": self.server.store.host,
                                       "data_dir": str(self.server.store.data_dir)})
        elif url.path in ("/records", "/records/"):
            self._list(url.query)
        elif url.path.startswith("/records/"):
            self._get(url.path.removeprefix("/records/"))
        else:
            self._not_found(url.path)

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path != "/records":
            if path in ("/health",) or path.startswith("/records/"):
                self._method_not_allowed("GET")
            else:
                self._not_found(path)
            return
        self._post()

    def do_PUT(self) -> None:
        self._other_method()

    def do_DELETE(self) -> None:
        self._other_method()

    def do_PATCH(self) -> None:
        self._other_method()

    def _other_method(self) -> None:
        path = urlsplit(self.path).path
        if path == "/records":
            self._method_not_allowed("GET, POST")
        elif path == "/health" or path.startswith("/records/"):
            self._method_not_allowed("GET")
        else:
            self._not_found(path)

    def _post(self) -> None:
        limit = self.server.limits.max_body
        if self.headers.get("Transfer-Encoding"):
            self._error(HTTPStatus.LENGTH_REQUIRED,
                        "Transfer-Encoding is not supported: send the body with Content-Length")
            return
        raw = self.headers.get("Content-Length")
        if raw is None:
            self._error(HTTPStatus.LENGTH_REQUIRED,
                        "Content-Length is required (the record's size in bytes)")
            return
        if not raw.strip().isdigit():
            self._error(HTTPStatus.BAD_REQUEST,
                        f"Content-Length {raw[:40]!r} is not a number of bytes")
            return
        length = int(raw)
        if length > limit:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"record of {length} bytes is larger than the limit of {limit} bytes")
            return
        data = self._read_body(length)
        if data is None:
            return
        try:
            record_id, path = self.server.store.write(data)
        except OSError as exc:
            log.error("write failed: %s", exc)
            self._error(HTTPStatus.INSUFFICIENT_STORAGE if exc.errno == 28
                        else HTTPStatus.SERVICE_UNAVAILABLE,
                        f"the record could not be stored: {exc.strerror or exc}")
            return
        self._json(HTTPStatus.CREATED, {"id": record_id, "host": self.server.store.host,
                                        "path": str(path), "bytes": len(data)},
                   extra={"Location": f"/records/{record_id}"})

    def _read_body(self, length: int) -> bytes | None:
        chunks: list[bytes] = []
        left = length
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        except OSError:
            left = left or 1
        if left > 0:
            self._error(HTTPStatus.BAD_REQUEST,
                        f"body ended after {length - left} of the {length} bytes of "
                        "Content-Length (or was too slow)")
            return None
        return b"".join(chunks)

    def _get(self, record_id: str) -> None:
        if not valid_id(record_id):
            self._error(HTTPStatus.BAD_REQUEST,
                        f"{record_id[:80]!r} is not a record id "
                        "(<20 digits>-<6 digits>-<host>, as POST /records returned)")
            return
        try:
            data = self.server.store.read(record_id, self.server.limits.max_body)
        except OSError as exc:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, f"cannot read record {record_id}: {exc}")
            return
        if data is None:
            self._error(HTTPStatus.NOT_FOUND, f"no record {record_id}")
            return
        self._send(HTTPStatus.OK, data, "application/octet-stream")

    def _list(self, query: str) -> None:
        try:
            params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query),
                              max_num_fields=4)
        except ValueError as exc:
            self._error(HTTPStatus.BAD_REQUEST, f"bad query string: {exc}")
            return
        unknown = sorted(set(params) - {"after", "limit"})
        if unknown:
            self._error(HTTPStatus.BAD_REQUEST,
                        f"unknown query parameter {', '.join(unknown)} (known: after, limit)")
            return
        after = params.get("after", [""])[-1]
        if after and not valid_id(after):
            self._error(HTTPStatus.BAD_REQUEST, f"after={after[:80]!r} is not a record id")
            return
        raw_limit = params.get("limit", ["100"])[-1]
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIST:
            self._error(HTTPStatus.BAD_REQUEST,
                        f"limit={raw_limit[:20]!r}: must be a whole number from 1 to {MAX_LIST}")
            return
        limit = int(raw_limit)
        ids = self.server.store.list_ids(after, limit + 1)
        self._json(HTTPStatus.OK, {"ids": ids[:limit], "more": len(ids) > limit})

    # --- answers ---------------------------------------------------------

    def _not_found(self, path: str) -> None:
        self._error(HTTPStatus.NOT_FOUND,
                    f"no route {path[:80]!r} (routes: POST /records, GET /records, "
                    "GET /records/ID, GET /health)")

    def _method_not_allowed(self, allow: str) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED,
                    f"{self.command} is not allowed here (allowed: {allow})",
                    extra={"Allow": allow})

    def _error(self, status: HTTPStatus, message: str,
               extra: dict[str, str] | None = None) -> None:
        self.close_connection = True
        self._json(status, {"error": message}, extra)

    def _json(self, status: HTTPStatus, body: dict[str, Any],
              extra: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode() + b"\n", "application/json", extra)

    def _send(self, status: HTTPStatus, data: bytes, content_type: str,
              extra: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """http.server's own errors (bad request line, too long headers) as JSON too."""
        try:
            status = HTTPStatus(code)
        except ValueError:
            status = HTTPStatus.BAD_REQUEST
        self._error(status, message or status.phrase)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Successful requests are not logged: a benchmark writes hundreds a second.
        if isinstance(code, HTTPStatus):
            code = code.value
        if str(code).isdigit() and int(code) >= 400:
            self.log_message('"%s" %s', self.requestline[:200], str(code))

    def log_message(self, format: str, *args: Any) -> None:
        log.warning("%s %s", self.address_string(), format % args)


def make_server(listen: str, port: int, data_dir: Path, host: str,
                limits: Limits | None = None) -> RecordsServer:
    store = RecordStore(data_dir, host)
    store.open()
    return RecordsServer((listen, port), store, limits or Limits())

"""The agent's status API: a small HTTP/1.1 server on asyncio streams.

Endpoints (docs/architecture.md, "Status API"); every answer is JSON except
``/metrics``; health checks answer 200 or 503 so keepalived, load balancers
and playbooks need not parse anything:

* ``GET /health`` — 200 when ``status()`` works and no mirror reports
  ``"alive": false`` (a mirror's worker that died sets it, with ``"error"``).
* ``GET /primary[?mirror=M]`` — 200 iff this host is M's primary, not
  fenced and its worker alive (a failed or restarting capture is not: it
  replicates nothing); without ``mirror``: primary of every mirror it serves
  (and serves at least one).
* ``GET /replica[?mirror=M][&lag=S]`` — 200 iff role is ``backup`` or
  ``async``, alive, ``connected``, not resyncing and not waiting for a
  resync after a record it could not apply, and ``lag_seconds <= S`` when
  ``lag`` is given; without ``mirror``: all served mirrors (at least one).
* ``GET /status`` — the status dict; ``GET /metrics`` — Prometheus text
  (:mod:`mirrorkit.agent.api.metrics`).

Read-only: every other method is 405 ``Allow: GET``. What changes state
(``POST /resync``, ``POST /repair``, and every later mutating route) is
served only on the root-only control socket (``api/control_socket.py``,
routes in ``api/control.py``); a POST here answers 405 with a pointer to it.

Deliberately minimal and hard to break: one request per connection
(``Connection: close``), bounded line length, header count, body size
(``MAX_BODY``) and time; malformed input gets 400 with a message, never a
traceback. An unknown query parameter is a 400 rather than ignored, so a
typo in a health check (``?lagg=5``) cannot silently pass. The control
socket speaks the same dialect through the same :class:`HttpServer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from prometheus_client import CollectorRegistry

from mirrorkit.agent.api.metrics import CONTENT_TYPE as METRICS_TYPE
from mirrorkit.agent.api.metrics import StatusCollector, metrics_text

__all__ = ["LINE_LIMIT", "MAX_BODY", "Answer", "BadRequest", "HttpServer", "Response",
           "check_health", "check_primary", "check_replica", "discard_body", "error_body",
           "json_body", "parse_params", "read_body", "start_api"]

log = logging.getLogger(__name__)

StatusFn = Callable[[], dict[str, Any]]
MetricsFn = Callable[[], bytes]  # the /metrics body
Answer = tuple[int, dict[str, Any]]
# (code, content type, body) of one answer.
Response = tuple[int, str, bytes]

LINE_LIMIT = 8192
_MAX_HEADERS = 100
_REQUEST_TIMEOUT = 10.0
_MAX_CONNECTIONS = 64
MAX_BODY = 16 << 20
_REASONS = {
    200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
    413: "Content Too Large", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 503: "Service Unavailable",
}
_JSON = "application/json"


class BadRequest(Exception):
    """The request is malformed; the message says why (sent with 400)."""


def _mirrors(status: Mapping[str, Any]) -> dict[str, Any]:
    mirrors = status.get("mirrors")
    return dict(mirrors) if isinstance(mirrors, Mapping) else {}


def _select(status: Mapping[str, Any], mirror: str | None) -> dict[str, Any] | Answer:
    mirrors = _mirrors(status)
    if mirror is None:
        if not mirrors:
            return 503, {"ok": False, "reason": "this host serves no mirror"}
        return mirrors
    if mirror not in mirrors:
        return 404, {"ok": False, "mirror": mirror, "reason": "no such mirror on this host"}
    return {mirror: mirrors[mirror]}


def _aggregate(results: dict[str, tuple[bool, str]]) -> Answer:
    ok = all(good for good, _ in results.values())
    body = {
        "ok": ok,
        "mirrors": {name: {"ok": good, "reason": why} for name, (good, why) in results.items()},
    }
    return (200 if ok else 503), body


def check_primary(status: Mapping[str, Any], mirror: str | None) -> Answer:
    selected = _select(status, mirror)
    if isinstance(selected, tuple):
        return selected
    results: dict[str, tuple[bool, str]] = {}
    for name, m in selected.items():
        m = m if isinstance(m, Mapping) else {}
        role, fenced = m.get("role"), m.get("fenced")
        if role != "primary":
            results[name] = (False, f"role is {role}")
        elif fenced is not False:
            results[name] = (False, "fenced" if fenced else "fencing state unknown")
        elif m.get("alive") is not True:
            results[name] = (False, str(m.get("error") or "worker not alive"))
        else:
            results[name] = (True, f"writable primary, term {m.get('term')}")
    return _aggregate(results)


def check_replica(status: Mapping[str, Any], mirror: str | None, lag: float | None) -> Answer:
    selected = _select(status, mirror)
    if isinstance(selected, tuple):
        return selected
    results: dict[str, tuple[bool, str]] = {}
    for name, m in selected.items():
        m = m if isinstance(m, Mapping) else {}
        role, seconds = m.get("role"), m.get("lag_seconds")
        failure = m.get("apply_failure")
        if role not in ("backup", "async"):
            results[name] = (False, f"role is {role}, not a receiver")
        elif m.get("alive") is not True:
            results[name] = (False, str(m.get("error") or "worker not alive"))
        elif m.get("connected") is not True:
            results[name] = (False, "not connected to the primary")
        elif m.get("resyncing"):
            results[name] = (False, f"resyncing {_percent(m.get('resync'))}")
        elif isinstance(failure, Mapping):
            results[name] = (False, f"waiting for a resync: {failure.get('reason')}")
        elif lag is not None and not (
            isinstance(seconds, int | float) and not isinstance(seconds, bool)
            and seconds <= lag
        ):
            results[name] = (False, f"lag {seconds} s exceeds {lag} s")
        else:
            results[name] = (True, f"{role}, connected, lag {seconds} s")
    return _aggregate(results)


def _percent(resync: Any) -> str:
    """``"42%"`` of a resync's compared bytes (``"?"`` before it knows)."""
    if not isinstance(resync, Mapping):
        return "?"
    done, total = resync.get("bytes_done"), resync.get("bytes_total")
    if not isinstance(done, int) or not isinstance(total, int) or total <= 0:
        return "?"
    return f"{min(100, 100 * done // total)}%"


def check_health(status: Mapping[str, Any]) -> Answer:
    failing = {
        name: str(m.get("error") or "worker not alive")
        for name, m in _mirrors(status).items()
        if isinstance(m, Mapping) and m.get("alive") is False
    }
    if failing:
        return 503, {"ok": False, "failing": failing}
    return 200, {"ok": True}


def parse_params(query: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query string as a dict; raises BadRequest for an unknown, repeated
    or malformed parameter and for an empty ``mirror``."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise BadRequest(f"malformed query string: {exc}") from exc
    out: dict[str, str] = {}
    for key, value in pairs:
        if key not in allowed:
            expected = ", ".join(allowed) or "none"
            raise BadRequest(f"unknown parameter {key!r} (expected: {expected})")
        if key in out:
            raise BadRequest(f"parameter {key!r} given more than once")
        out[key] = value
    if out.get("mirror") == "":
        raise BadRequest("parameter 'mirror' must not be empty")
    return out


def _lag(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        lag = float(value)
    except ValueError:
        lag = math.nan
    if not math.isfinite(lag) or lag < 0:
        raise BadRequest(f"lag must be a number of seconds >= 0, got {value!r}")
    return lag


def _finite(obj: Any) -> Any:
    """JSON-safe copy: NaN/Inf become null, unknown objects their str()."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if obj is None or isinstance(obj, str | int | float):
        return obj
    return str(obj)


def status_metrics(status: StatusFn) -> MetricsFn:
    """A ``/metrics`` body of the status gauges alone, in a registry of its own."""
    registry = CollectorRegistry()
    registry.register(StatusCollector(status))
    return lambda: metrics_text(registry)


def route(target: str, status: StatusFn,
          metrics: MetricsFn | None = None) -> tuple[int, str, bytes]:
    """Answer one GET: (code, content type, body). Raises BadRequest."""
    parts = urlsplit(target)
    path, query = parts.path, parts.query
    if path == "/metrics":
        return 200, METRICS_TYPE, (metrics or status_metrics(status))()
    if path == "/status":
        code, body = 200, status()
    elif path == "/health":
        code, body = check_health(status())
    elif path == "/primary":
        params = parse_params(query, ("mirror",))
        code, body = check_primary(status(), params.get("mirror"))
    elif path == "/replica":
        params = parse_params(query, ("mirror", "lag"))
        lag = _lag(params.get("lag"))
        code, body = check_replica(status(), params.get("mirror"), lag)
    else:
        known = "/health, /primary, /replica, /status, /metrics"
        code, body = 404, {"error": f"no such endpoint {path!r} (known: {known})"}
    return json_body(code, body)


def json_body(code: int, body: Any) -> Response:
    """One JSON answer (NaN/Inf as null, keys sorted)."""
    return code, _JSON, (json.dumps(_finite(body), sort_keys=True) + "\n").encode()


def error_body(code: int, message: str) -> Response:
    return code, _JSON, (json.dumps({"error": message}) + "\n").encode()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, int]:
    """Read the request line and headers; return (method, target, content length)."""
    try:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise BadRequest("incomplete request line")
        fields = line.decode("latin-1").rstrip("\r\n").split(" ")
        if len(fields) != 3 or not fields[2].startswith("HTTP/1."):
            raise BadRequest("request line must be 'METHOD /path HTTP/1.x'")
        method, target, _ = fields
        if not method.isalpha() or not (target.startswith("/") or "://" in target):
            raise BadRequest("malformed method or request target")
        length = 0
        for _ in range(_MAX_HEADERS):
            header = await reader.readline()
            if header in (b"\r\n", b"\n"):
                return method, target, length
            if not header.endswith(b"\n") or b":" not in header:
                raise BadRequest("malformed header line")
            name, _, value = header.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                if not value.strip().isdigit():
                    raise BadRequest("malformed Content-Length")
                length = int(value.strip())
        raise BadRequest(f"more than {_MAX_HEADERS} header lines")
    except (ValueError, asyncio.LimitOverrunError) as exc:  # a line over the limit
        if isinstance(exc, BadRequest):
            raise
        raise BadRequest(f"request line or header longer than {LINE_LIMIT} bytes") from exc


class HttpServer:
    """One request per connection, answered by :meth:`dispatch`.

    :meth:`admit` may refuse a connection as soon as it is accepted (the
    control socket checks the peer's credentials there): the request is then
    read and dropped, never dispatched, and the refusal is the answer.
    :meth:`dispatch` answers a parsed request line. This class reads and
    bounds the request, maps malformed input to 400, a slow client to 408
    and any other failure to 500, and writes the answer.
    """

    allow = "GET"  # the Allow header of a 405

    def __init__(self) -> None:
        self.active = 0

    async def admit(self, writer: asyncio.StreamWriter) -> Response | None:
        """A refusal for this connection, or ``None`` to serve it."""
        return None

    async def dispatch(self, method: str, target: str, length: int,
                       reader: asyncio.StreamReader) -> Response:
        raise NotImplementedError

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        try:
            if self.active > _MAX_CONNECTIONS:
                code, ctype, body = error_body(503, "too many connections")
            else:
                code, ctype, body = await self._answer(reader, await self.admit(writer))
            head = (
                f"HTTP/1.1 {code} {_REASONS.get(code, 'Unknown')}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n"
            )
            if code == 405:
                head += f"Allow: {self.allow}\r\n"
            writer.write(head.encode() + b"\r\n" + body)
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.drain(), _REQUEST_TIMEOUT)
        except Exception:  # never let one connection take the server down
            log.exception("agent API: unexpected error")
        finally:
            self.active -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, refusal: Response | None) -> Response:
        try:
            method, target, length = await asyncio.wait_for(_read_request(reader),
                                                            _REQUEST_TIMEOUT)
            if refusal is not None:
                await discard_body(reader, length)
                return refusal
            return await self.dispatch(method, target, length, reader)
        except BadRequest as exc:
            return refusal or error_body(400, str(exc))
        except TimeoutError:
            return refusal or error_body(408, "request not received in time")
        except (ConnectionError, asyncio.IncompleteReadError):
            return refusal or error_body(400, "connection closed mid-request")
        except Exception as exc:  # e.g. status() itself failed: say so, keep serving
            log.exception("agent API: cannot build the answer")
            return error_body(500, f"cannot answer: {type(exc).__name__}: {exc}")


async def read_body(reader: asyncio.StreamReader, length: int) -> bytes:
    """The request body of ``length`` bytes (at most ``MAX_BODY``: the caller
    checks), in bounded time."""
    return await asyncio.wait_for(reader.readexactly(length), _REQUEST_TIMEOUT)


async def discard_body(reader: asyncio.StreamReader, length: int) -> None:
    """Read and drop a body that will not be served, so that closing the
    connection does not reset it before the client has read the answer."""
    if 0 < length <= MAX_BODY:
        await read_body(reader, length)


class _StatusServer(HttpServer):
    """The loopback TCP status API: GET only."""

    def __init__(self, status: StatusFn, control_socket: str | None,
                 metrics: MetricsFn | None = None) -> None:
        super().__init__()
        self.status = status
        self.control_socket = control_socket
        self.metrics = metrics if metrics is not None else status_metrics(status)

    async def dispatch(self, method: str, target: str, length: int,
                       reader: asyncio.StreamReader) -> Response:
        if method == "GET":
            return route(target, self.status, self.metrics)
        if method != "POST":
            return error_body(405, f"method {method} not allowed; use GET")
        await discard_body(reader, length)
        where = (f"the root-only control socket {self.control_socket}"
                 if self.control_socket else "the agent's root-only control socket")
        return error_body(405, "this status API is read-only (GET); what changes state is "
                               f"served on {where}: run `mirrorkit-agent resync` or "
                               "`mirrorkit-agent repair` as root on this host")


async def start_api(host: str, port: int, status: StatusFn,
                    control_socket: str | None = None,
                    metrics: MetricsFn | None = None) -> asyncio.Server:
    """Start the read-only status API on ``host:port`` (port 0: an ephemeral
    port, see ``server.sockets[0].getsockname()``); ``control_socket`` is
    named in the answer to a POST; ``metrics`` renders ``/metrics`` (default:
    the status gauges alone, see :func:`status_metrics`). The caller closes
    the server."""
    server = _StatusServer(status, control_socket, metrics)
    return await asyncio.start_server(server.handle, host, port, limit=LINE_LIMIT)

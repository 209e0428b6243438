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
* ``GET /status`` — the status dict; ``GET /metrics`` — Prometheus text.
* ``POST /repair?mirror=M`` with a JSON body — handed to the agent's
  ``post`` callback (the primary re-sends paths, see ``agent/repair.py``);
  and ``POST /resync?mirror=M[&member=H][&mode=…][&keep_orphans=1]`` (on-demand
  resync, ``agent/resynccli.py``): the only POST routes, and only when the
  agent wired one.

Deliberately minimal and hard to break: GET only (405 otherwise) except the
POST routes above (body at most ``_MAX_BODY`` bytes), one request
per connection (``Connection: close``), bounded line length, header count and
time; malformed input gets 400 with a message, never a traceback. An unknown
query parameter is a 400 rather than ignored, so a typo in a health check
(``?lagg=5``) cannot silently pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from mirrorkit.agent.api.metrics import CONTENT_TYPE as METRICS_TYPE
from mirrorkit.agent.api.metrics import render_metrics

__all__ = ["BadRequest", "check_health", "check_primary", "check_replica", "start_api"]

log = logging.getLogger(__name__)

StatusFn = Callable[[], dict[str, Any]]
Answer = tuple[int, dict[str, Any]]
# post(path, params, body) -> answer; raises BadRequest for malformed input.
PostFn = Callable[[str, dict[str, str], bytes], Awaitable[Answer]]
POST_ROUTES = ("/repair", "/resync")
# Query parameters each POST route accepts (/resync: agent/resynccli.py).
_POST_PARAMS = {"/repair": ("mirror",),
                "/resync": ("mirror", "member", "mode", "keep_orphans")}

_LINE_LIMIT = 8192
_MAX_HEADERS = 100
_REQUEST_TIMEOUT = 10.0
_MAX_CONNECTIONS = 64
_MAX_BODY = 16 << 20
_REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 409: "Conflict", 413: "Content Too Large",
    431: "Request Header Fields Too Large",
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


def _params(query: str, allowed: tuple[str, ...]) -> dict[str, str]:
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


def route(target: str, status: StatusFn) -> tuple[int, str, bytes]:
    """Answer one GET: (code, content type, body). Raises BadRequest."""
    parts = urlsplit(target)
    path, query = parts.path, parts.query
    if path == "/metrics":
        return 200, METRICS_TYPE, render_metrics(status()).encode()
    if path == "/status":
        code, body = 200, status()
    elif path == "/health":
        code, body = check_health(status())
    elif path == "/primary":
        params = _params(query, ("mirror",))
        code, body = check_primary(status(), params.get("mirror"))
    elif path == "/replica":
        params = _params(query, ("mirror", "lag"))
        lag = _lag(params.get("lag"))
        code, body = check_replica(status(), params.get("mirror"), lag)
    else:
        known = "/health, /primary, /replica, /status, /metrics"
        code, body = 404, {"error": f"no such endpoint {path!r} (known: {known})"}
    return code, _JSON, (json.dumps(_finite(body), sort_keys=True) + "\n").encode()


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
        raise BadRequest(f"request line or header longer than {_LINE_LIMIT} bytes") from exc


class _Server:
    def __init__(self, status: StatusFn, post: PostFn | None = None) -> None:
        self.status = status
        self.post = post
        self.active = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        try:
            if self.active > _MAX_CONNECTIONS:
                code, ctype, body = 503, _JSON, b'{"error": "too many connections"}\n'
            else:
                code, ctype, body = await self._answer(reader)
            head = (
                f"HTTP/1.1 {code} {_REASONS.get(code, 'Unknown')}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n"
            )
            if code == 405:
                head += "Allow: GET\r\n"
            writer.write(head.encode() + b"\r\n" + body)
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.drain(), _REQUEST_TIMEOUT)
        except Exception:  # never let one connection take the server down
            log.exception("status API: unexpected error")
        finally:
            self.active -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
        try:
            method, target, length = await asyncio.wait_for(_read_request(reader),
                                                            _REQUEST_TIMEOUT)
            if method == "POST":
                return await self._post(reader, target, length)
            if method != "GET":
                return 405, _JSON, _error(f"method {method} not allowed; use GET")
            return route(target, self.status)
        except BadRequest as exc:
            return 400, _JSON, _error(str(exc))
        except TimeoutError:
            return 408, _JSON, _error("request not received in time")
        except (ConnectionError, asyncio.IncompleteReadError):
            return 400, _JSON, _error("connection closed mid-request")
        except Exception as exc:  # status() itself failed: say so, keep serving
            log.exception("status API: cannot build the answer")
            return 500, _JSON, _error(f"status unavailable: {type(exc).__name__}: {exc}")


    async def _post(self, reader: asyncio.StreamReader, target: str,
                    length: int) -> tuple[int, str, bytes]:
        parts = urlsplit(target)
        if parts.path not in POST_ROUTES or self.post is None:
            return 405, _JSON, _error(f"POST not allowed on {parts.path!r}")
        if length > _MAX_BODY:
            return 413, _JSON, _error(f"body over {_MAX_BODY} bytes")
        body = await asyncio.wait_for(reader.readexactly(length), _REQUEST_TIMEOUT)
        params = _params(parts.query, _POST_PARAMS[parts.path])
        code, answer = await self.post(parts.path, params, body)
        return code, _JSON, (json.dumps(_finite(answer), sort_keys=True) + "\n").encode()


def _error(message: str) -> bytes:
    return (json.dumps({"error": message}) + "\n").encode()


async def start_api(host: str, port: int, status: StatusFn,
                    post: PostFn | None = None) -> asyncio.Server:
    """Start serving on ``host:port`` (port 0: an ephemeral port, see
    ``server.sockets[0].getsockname()``); ``post`` answers the POST routes.
    The caller closes the server."""
    server = _Server(status, post)
    return await asyncio.start_server(server.handle, host, port, limit=_LINE_LIMIT)

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
* ``GET /events[?mirror=M][&since=SEQ][&limit=N]`` — the event history
  (``ha/events.py``): ``{"events": [...], "last_seq": N}``, events with a
  sequence number above ``since`` (default 0), at most ``limit`` (100,
  at most 1000), oldest first, every mirror merged in time order when
  ``mirror`` is left out.

Read-only: every other method is 405 ``Allow: GET``. What changes state
(``POST /resync``, ``POST /repair``, and every later mutating route) is
served only on the root-only control socket (``api/control_socket.py``,
routes in ``api/control.py``); a POST here answers 405 with a pointer to it.

The server underneath (``api/server.py``, shared with the control socket)
bounds lines, headers, connections and time, and evicts slow clients; this
API reads no body at all (a POST is answered 405 at once). An unknown
query parameter is a 400 rather than ignored, so a typo in a health check
(``?lagg=5``) cannot silently pass. keepalived does not ask this API: it
reads the primary file (``api/primary_file.py``), which no client of the
API can delay.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from prometheus_client import CollectorRegistry

from mirrorkit.agent.api.metrics import CONTENT_TYPE as METRICS_TYPE
from mirrorkit.agent.api.metrics import StatusCollector, metrics_text
from mirrorkit.agent.api.server import (
    BadRequest,
    HttpServer,
    Limits,
    Listener,
    Request,
    Response,
    error_body,
    listen_tcp,
)
from mirrorkit.agent.api.server import json_body as _json_body

__all__ = ["Answer", "BadRequest", "Response", "check_health", "check_primary",
           "check_replica", "error_body", "json_body", "parse_params", "start_api"]

StatusFn = Callable[[], dict[str, Any]]
MetricsFn = Callable[[], bytes]  # the /metrics body
Answer = tuple[int, dict[str, Any]]


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


# GET /events?mirror=M&since=SEQ&limit=N: (mirror or None, since, limit) -> answer
EventsFn = Callable[[str | None, int, int], Answer]
EVENTS_LIMIT = 100
EVENTS_MAX = 1000


def _count(params: Mapping[str, str], key: str, default: int, top: int) -> int:
    raw = params.get(key)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 19 or int(raw) > top:
        raise BadRequest(f"{key} must be an integer from 0 to {top}, got {raw[:40]!r}")
    return int(raw)


def route(target: str, status: StatusFn, metrics: MetricsFn | None = None,
          events: EventsFn | None = None) -> tuple[int, str, bytes]:
    """Answer one GET: (code, content type, body). Raises BadRequest."""
    parts = urlsplit(target)
    path, query = parts.path, parts.query
    if path == "/events" and events is not None:
        params = parse_params(query, ("mirror", "since", "limit"))
        since = _count(params, "since", 0, (1 << 63) - 1)
        limit = _count(params, "limit", EVENTS_LIMIT, EVENTS_MAX)
        code, body = events(params.get("mirror"), since, limit)
        return json_body(code, body)
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
        known = "/health, /primary, /replica, /status, /metrics, /events"
        code, body = 404, {"error": f"no such endpoint {path!r} (known: {known})"}
    return json_body(code, body)


def json_body(code: int, body: Any) -> Response:
    """One JSON answer (NaN/Inf as null, keys sorted)."""
    return _json_body(code, _finite(body))


class _StatusServer(HttpServer):
    """The loopback TCP status API: GET only, and no body is ever read."""

    def __init__(self, status: StatusFn, control_socket: str | None,
                 metrics: MetricsFn | None = None, limits: Limits | None = None,
                 events: EventsFn | None = None) -> None:
        super().__init__(limits)
        self.status = status
        self.events = events
        self.control_socket = control_socket
        self.metrics = metrics if metrics is not None else status_metrics(status)

    async def dispatch(self, request: Request, reader: asyncio.StreamReader) -> Response:
        if request.method == "GET":
            return route(request.target, self.status, self.metrics, self.events)
        if request.method != "POST":
            return error_body(405, f"method {request.method} not allowed; use GET")
        # The body is not read (the lingering close drops it, bounded).
        where = (f"the root-only control socket {self.control_socket}"
                 if self.control_socket else "the agent's root-only control socket")
        return error_body(405, "this status API is read-only (GET); what changes state is "
                               f"served on {where}: run `mirrorkit-agent resync` or "
                               "`mirrorkit-agent repair` as root on this host")


async def start_api(host: str, port: int, status: StatusFn,
                    control_socket: str | None = None,
                    metrics: MetricsFn | None = None,
                    limits: Limits | None = None,
                    events: EventsFn | None = None) -> Listener:
    """Start the read-only status API on ``host:port`` (port 0: an ephemeral
    port, see ``listener.sockets[0].getsockname()``); ``control_socket`` is
    named in the answer to a POST; ``metrics`` renders ``/metrics`` (default:
    the status gauges alone, see :func:`status_metrics`). The caller closes
    the listener. Raises OSError when it cannot listen."""
    server = _StatusServer(status, control_socket, metrics, limits, events)
    sock = await asyncio.to_thread(listen_tcp, host, port)
    return Listener(sock, server)

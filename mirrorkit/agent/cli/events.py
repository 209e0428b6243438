"""``mirrorkit-agent events``: this host's event history, from the loopback
status API's ``GET /events``.

``GET /events?mirror=M&since=SEQ&limit=N`` answers ``{"events": [{"seq",
"time" (epoch), "mirror", "kind", "message", "term", ...extra}], "last_seq"}``:
the events after ``since`` (exclusive), oldest first, at most ``limit``
(default 100, at most 1000). Every failover decision — and every decision
*not* to fail over — is one event, with its reason.

``mirrorkit-agent events [--mirror M] [--since N] [--limit N] [--json]``
prints them one a line (``--json``: the API's answer as is, which is what
``mirrorkit events`` reads); exit 0, 1 when the API does not answer, 2 for
a usage error. :func:`format_event` is also the controller's line format.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import urllib.parse
from typing import Any

from mirrorkit.agent.cli import api_client
from mirrorkit.agent.util.logsafe import escape_controls

__all__ = ["MAX_LIMIT", "add_parser", "check_answer", "cmd_events", "format_event"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Fields every event has; anything else is shown as key=value after the message.
_CORE = ("seq", "time", "mirror", "kind", "message", "term")
_MAX_EXTRA = 200  # characters of one extra value shown in a line


def _count(low: int, high: int | None) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"{value} is out of range: give {bound}")
        return value
    return parse


def add_parser(sub: Any) -> None:
    ev = sub.add_parser("events", help="print this host's event history (failover decisions, "
                                       "hooks, role changes)")
    ev.add_argument("--mirror", default="", help="only this mirror's events")
    ev.add_argument("--since", type=_count(0, None), default=0, metavar="SEQ",
                    help="only events after this sequence number (default 0: from the oldest)")
    ev.add_argument("--limit", type=_count(1, MAX_LIMIT), default=DEFAULT_LIMIT, metavar="N",
                    help=f"at most N events (default {DEFAULT_LIMIT}, at most {MAX_LIMIT})")
    ev.add_argument("--json", action="store_true", help="print the API's answer as JSON")
    ev.add_argument("--api-port", type=int, default=0)


def check_answer(answer: Any) -> str | None:
    """Why ``answer`` is not an ``/events`` answer, or None when it is one."""
    if not isinstance(answer, dict):
        return "the answer is not a JSON object"
    events, last = answer.get("events"), answer.get("last_seq")
    if not isinstance(events, list) or isinstance(last, bool) or not isinstance(last, int):
        return "the answer has no events list and last_seq"
    for event in events:
        if not isinstance(event, dict):
            return "an event is not a JSON object"
        seq, time = event.get("seq"), event.get("time")
        if isinstance(seq, bool) or not isinstance(seq, int):
            return "an event has no integer seq"
        if isinstance(time, bool) or not isinstance(time, int | float):
            return "an event has no numeric time"
    return None


def _when(epoch: float) -> str:
    try:
        stamp = dt.datetime.fromtimestamp(epoch, tz=dt.UTC)
    except (OverflowError, ValueError, OSError):
        return f"{epoch!r:>24}"
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _text(value: Any, limit: int | None = None) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return escape_controls(text)  # peer data never starts a line of its own


def format_event(event: dict[str, Any], host: str | None = None) -> str:
    """One line: UTC time, [host], mirror, #seq, term, kind, message, extras."""
    parts = [_when(float(event["time"]))]
    if host is not None:
        parts.append(f"{_text(host):<12}")
    term = event.get("term")
    parts += [f"{_text(event.get('mirror', '?')):<12}", f"#{event['seq']:<6}",
              f"term {'-' if term is None else _text(term):<4}",
              f"{_text(event.get('kind', '?')):<18}", _text(event.get("message", ""))]
    extras = [f"{_text(k)}={_text(v, _MAX_EXTRA)}" for k, v in sorted(event.items())
              if k not in _CORE]
    line = "  ".join(parts)
    return line + (f"  ({', '.join(extras)})" if extras else "")


def cmd_events(args: argparse.Namespace) -> int:
    query = {"since": str(args.since), "limit": str(args.limit)}
    if args.mirror:
        query["mirror"] = args.mirror
    try:
        code, body = api_client.get(api_client.api_port(args),
                                    f"/events?{urllib.parse.urlencode(query)}")
    except OSError as exc:
        print(f"mirrorkit-agent: cannot reach the local agent API: {exc}", file=sys.stderr)
        return 1
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if code != 200:
        error = answer.get("error") if isinstance(answer, dict) else None
        print(f"mirrorkit-agent: /events answered {code}"
              + (f": {error}" if error else ""), file=sys.stderr)
        return 1
    problem = check_answer(answer)
    if problem is not None:
        print(f"mirrorkit-agent: unexpected /events answer: {problem}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, sort_keys=True))
        return 0
    for event in answer["events"]:
        print(format_event(event))
    return 0

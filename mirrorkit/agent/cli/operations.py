"""The planned and forced operations on this host's agent: ``mirrorkit-agent
maintenance``, ``switchover`` and ``promote``, clients of the root-only
control socket (``api/control.py``), like ``resync``.

Routes (query string, no body, JSON answers; refusals are ``{"error"}``
with 400, 404 or 409):

* ``POST /maintenance?mirror=M&on=0|1`` → ``{"mirror", "maintenance": bool,
  "changed": bool}``: the mirror's no-failover flag on this member.
* ``POST /switchover?mirror=M[&to=HOST][&at=EPOCH][&cancel=1]``, on the
  primary → ``{"mirror", "result": "done"|"scheduled"|"cancelled", "term",
  "primary", "pause_seconds", "at", "message"}``; 409 when this host is not
  the primary or the mirror is not healthy enough.
* ``POST /promote?mirror=M[&force=1]``, on a backup → ``{"mirror", "result":
  "done", "term", "gap_lsns", "message"}``; 409 when the old primary may
  still be writable and ``force`` is not given.

Commands (exit 0 done, 1 refused or no answer, 2 usage error; ``--json``
prints the answer, which is what the controller's commands read):

* ``mirrorkit-agent maintenance on|off --mirror M``
* ``mirrorkit-agent switchover --mirror M [--to HOST] [--at TIME] [--cancel]``;
  TIME is converted to epoch seconds here (``util/timespec.py``)
* ``mirrorkit-agent promote --mirror M [--force]``; ``--force`` prints
  :data:`FORCE_RISK` first

The ``format_*`` functions are the lines both this command and the
controller's ``mirrorkit switchover|promote|maintenance`` print.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from mirrorkit.agent.cli import control_client
from mirrorkit.agent.util.logsafe import escape_controls
from mirrorkit.agent.util.timespec import TimeSpecError, format_epoch, parse_time

__all__ = ["FORCE_RISK", "OPERATION_TIMEOUT", "add_parsers", "cmd_maintenance",
           "cmd_promote", "cmd_switchover", "format_maintenance", "format_promote",
           "format_switchover", "switchover_usage_error"]

# A switchover or promotion answers once it is done: drain, term + 1,
# on_demote and on_promote (each up to hook_timeout, 30 s by default).
# The wait is bounded; giving up does not stop the operation.
OPERATION_TIMEOUT = 300.0
MAINTENANCE_TIMEOUT = 10.0

FORCE_RISK = (
    "--force promotes this member although the old primary may still be writable. "
    "If the old primary is still running and its clients still reach it (it may be cut "
    "off only from this member and the arbiter), there will be TWO writable primaries: "
    "writes accepted by the old one after the split are not on the new one, and when it "
    "rejoins they are quarantined with a report, not merged. Force only when the old "
    "primary is known to be down or fenced (powered off, or cut off from its clients), "
    "or when losing those writes is acceptable."
)


def add_parsers(sub: Any) -> None:
    mt = sub.add_parser("maintenance", help="turn a mirror's no-failover flag on or off "
                                            "on this member")
    mt.add_argument("state", choices=("on", "off"))
    mt.add_argument("--mirror", required=True)
    mt.add_argument("--json", action="store_true")
    control_client.add_argument(mt)

    so = sub.add_parser("switchover", help="planned switchover of a mirror, run on its "
                                           "primary: now, at a time, or cancel a scheduled one")
    so.add_argument("--mirror", required=True)
    so.add_argument("--to", default="", metavar="HOST",
                    help="the member to switch to (default: the active backup)")
    so.add_argument("--at", default="", metavar="TIME",
                    help="schedule it on this agent: ISO 8601 with a zone "
                         "(2026-12-02T03:00:00Z), +30s/+5m/+2h/+1d, or @EPOCH")
    so.add_argument("--cancel", action="store_true", help="cancel the scheduled switchover")
    so.add_argument("--json", action="store_true")
    control_client.add_argument(so)

    pr = sub.add_parser("promote", help="promote this member to primary of a mirror")
    pr.add_argument("--mirror", required=True)
    pr.add_argument("--force", action="store_true",
                    help="even if the old primary may still be writable (explains the risk)")
    pr.add_argument("--json", action="store_true")
    control_client.add_argument(pr)


def switchover_usage_error(to: str, at: str, cancel: bool) -> str | None:
    """Why this combination of switchover options makes no sense, or None."""
    if cancel and (to or at):
        return "--cancel takes no --to or --at: it cancels the scheduled switchover"
    return None


# -- what is printed ------------------------------------------------------------------


def _s(value: Any) -> str:
    return escape_controls(str(value))


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    parts += [f"{hours}h"] if hours else []
    parts += [f"{minutes}m"] if minutes else []
    return " ".join([*parts, f"{secs}s"]) if secs or not parts else " ".join(parts)


def _message(answer: dict[str, Any]) -> str:
    message = answer.get("message")
    return f" ({_s(message)})" if message else ""


def format_maintenance(answer: dict[str, Any]) -> str:
    on = bool(answer.get("maintenance"))
    state = "on" if on else "off"
    what = ("no automatic failover until it is turned off" if on
            else "automatic failover allowed again")
    if answer.get("changed"):
        return f"{_s(answer.get('mirror'))}: maintenance {state}: {what}"
    return f"{_s(answer.get('mirror'))}: maintenance was already {state}: {what}"


def format_switchover(answer: dict[str, Any], to: str = "", now: float | None = None) -> str:
    mirror = _s(answer.get("mirror"))
    result = answer.get("result")
    if result == "scheduled":
        at = answer.get("at")
        when = "at an unknown time"
        if isinstance(at, int | float) and not isinstance(at, bool):
            left = at - (time.time() if now is None else now)
            when = f"for {format_epoch(at)} (in {_duration(left)})"
        target = _s(to) if to else "the active backup"
        return (f"{mirror}: switchover to {target} scheduled {when} on {_s(answer.get('primary'))}"
                f"{_message(answer)}; it runs only if the mirror is healthy then; cancel "
                "with --cancel")
    if result == "cancelled":
        return f"{mirror}: scheduled switchover cancelled{_message(answer)}"
    pause = answer.get("pause_seconds")
    paused = (f", writes paused {pause:.3f} s" if isinstance(pause, int | float)
              and not isinstance(pause, bool) else "")
    return (f"{mirror}: switchover {_s(result)}: {_s(answer.get('primary'))} is the primary "
            f"in term {_s(answer.get('term'))}{paused}{_message(answer)}")


def format_promote(answer: dict[str, Any], host: str = "this host") -> str:
    gap = answer.get("gap_lsns")
    line = (f"{_s(answer.get('mirror'))}: promotion {_s(answer.get('result'))}: {_s(host)} is "
            f"the primary in term {_s(answer.get('term'))}{_message(answer)}")
    if isinstance(gap, int) and not isinstance(gap, bool):
        if gap == 0:
            return line + "; LSN gap 0: it had everything the old primary had logged"
        return (line + f"; LSN gap {gap}: {gap} log record(s) of the old primary never reached "
                "it; they are quarantined with a report when the old primary rejoins")
    return line


# -- the commands ------------------------------------------------------------------


def _post(args: argparse.Namespace, route: str, query: dict[str, str],
          timeout: float) -> tuple[int, dict[str, Any]] | None:
    """POST to the control socket; None (after printing why) if no answer."""
    try:
        return control_client.post(control_client.socket_path(args),
                                   f"/{route}?{urllib.parse.urlencode(query)}", timeout=timeout)
    except control_client.ControlUnavailable as exc:
        text = str(exc)
        if "timed out" in text and route != "maintenance":
            text += (f" (no answer within {timeout:g} s: the {route} may still be running; "
                     f"see mirrorkit-agent events --mirror {args.mirror})")
        if args.json:
            print(json.dumps({"error": text}, sort_keys=True))
        print(f"mirrorkit-agent: {text}", file=sys.stderr)
        return None


def _answered(args: argparse.Namespace, what: str, code: int, answer: dict[str, Any],
              needs: tuple[str, ...]) -> bool:
    """Print a refusal or a malformed answer; True when ``answer`` is a success."""
    if args.json:
        print(json.dumps(answer, sort_keys=True))
    if code != 200:
        if not args.json:
            print(f"mirrorkit-agent: {what} refused ({code}): {_s(answer.get('error'))}",
                  file=sys.stderr)
        return False
    missing = [k for k in needs if k not in answer]
    if missing:
        print(f"mirrorkit-agent: unexpected {what} answer (no {', '.join(missing)}): "
              f"{_s(json.dumps(answer, sort_keys=True))[:300]}", file=sys.stderr)
        return False
    return True


def _operation(args: argparse.Namespace, route: str, what: str, query: dict[str, str],
               line: Callable[[dict[str, Any]], str]) -> int:
    """Post a switchover or promotion, print its answer: the exit status."""
    got = _post(args, route, query, OPERATION_TIMEOUT)
    if got is None or not _answered(args, what, *got, needs=("result",)):
        return 1
    if not args.json:
        print(line(got[1]))
    return 0


def cmd_maintenance(args: argparse.Namespace) -> int:
    got = _post(args, "maintenance", {"mirror": args.mirror, "on": "1" if args.state == "on"
                                      else "0"}, MAINTENANCE_TIMEOUT)
    if got is None:
        return 1
    if not _answered(args, "maintenance", *got, needs=("maintenance", "changed")):
        return 1
    if not args.json:
        print(format_maintenance(got[1]))
    return 0


def cmd_switchover(args: argparse.Namespace) -> int:
    problem = switchover_usage_error(args.to, args.at, args.cancel)
    query = {"mirror": args.mirror}
    if problem is None and args.at:
        try:
            query["at"] = f"{parse_time(args.at, time.time()):.3f}"
        except TimeSpecError as exc:
            problem = f"--at: {exc}"
    if problem is not None:
        print(f"mirrorkit-agent switchover: error: {problem}", file=sys.stderr)
        return 2
    if args.to:
        query["to"] = args.to
    if args.cancel:
        query["cancel"] = "1"
    return _operation(args, "switchover", "switchover", query,
                      lambda answer: format_switchover(answer, args.to))


def cmd_promote(args: argparse.Namespace) -> int:
    if args.force:
        print(f"WARNING: {FORCE_RISK}", file=sys.stderr)
    query = {"mirror": args.mirror}
    if args.force:
        query["force"] = "1"
    return _operation(args, "promote", "promotion", query, format_promote)

"""`mirrorkit events INVENTORY [--mirror M] [--last N] [--follow]`: every
member's event history, merged in time order, one line each with the host.

Each member's agent is asked (``mirrorkit-agent events --json``, over SSH
like ``mirrorkit status``) for the events after the last one already seen
from it, at most 1000 per request. Without ``--mirror`` every mirror of the
inventory is shown (it only reads). ``--follow`` asks again every second
until Ctrl-C (exit 130); a member that does not answer is reported once
and asked again at the next poll. Exit 0, 1 when a member could not be
asked (without ``--follow``), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from mirrorkit.agent.cli.events import MAX_LIMIT, check_answer, format_event
from mirrorkit.agent.util.logsafe import escape_controls
from mirrorkit.commands.common import add_inventory_argument, load_valid_inventory
from mirrorkit.commands.live import add_mirror_argument, on_each, pick_mirror
from mirrorkit.remote import AgentRunner, SshAgents

POLL_SECONDS = 1.0
EVENTS_TIMEOUT = 30.0
DEFAULT_LAST = 50
# Pages of 1000 read from one member for the first display; older events
# than that are left out (say so) rather than read without end.
MAX_FIRST_PAGES = 20


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "events",
        help="show every member's events (failover decisions, hooks, role changes) in time "
             "order",
        description=(
            "Merge the event history of every member of the mirror (of every mirror without "
            "--mirror) in time order. Exit 0; 1 when a member could not be asked; 2 on a "
            "usage error; 130 when --follow is stopped with Ctrl-C."
        ),
    )
    add_inventory_argument(parser)
    add_mirror_argument(parser)
    parser.add_argument("--last", type=_positive, default=DEFAULT_LAST, metavar="N",
                        help=f"show the N latest events first (default {DEFAULT_LAST})")
    parser.add_argument("--follow", action="store_true",
                        help="keep asking every second and print new events; Ctrl-C stops")
    parser.set_defaults(func=run)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"{value} is out of range: give 1 to 100000")
    return value


@dataclass
class Cursor:
    """Where we are in one member's history."""

    since: int = 0
    reported: str | None = None  # the last problem printed for this member


@dataclass
class Poll:
    """One round of asking: new events (host, event) and problems per host."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    more: set[str] = field(default_factory=set)  # hosts that had a full page
    notes: list[str] = field(default_factory=list)


def _query(mirror: str | None, since: int) -> list[str]:
    words = ["events", "--json", "--since", str(since), "--limit", str(MAX_LIMIT)]
    return words + (["--mirror", mirror] if mirror else [])


def poll_once(run: AgentRunner, cursors: dict[str, Cursor], mirror: str | None,
              mirrors: set[str]) -> Poll:
    """Ask every host once for the events after its cursor; advance the cursors."""
    results = on_each(cursors, lambda h: run(h, _query(mirror, cursors[h].since),
                                             EVENTS_TIMEOUT))
    poll = Poll()
    for host, result in results.items():
        answer, why = result.json()
        problem = why if answer is None else check_answer(answer)
        if problem is not None or answer is None:
            poll.problems[host] = f"no events: {problem}"
            continue
        cursor = cursors[host]
        if answer["last_seq"] < cursor.since:
            # Sequence numbers went back: the member's history started again.
            poll.notes.append(f"{host}: its event history restarted (last_seq "
                              f"{answer['last_seq']} < {cursor.since}); reading it from the start")
            cursor.since = 0
        for event in answer["events"]:
            cursor.since = max(cursor.since, event["seq"])
            if event.get("mirror") in mirrors:
                poll.events.append((host, event))
        if len(answer["events"]) >= MAX_LIMIT:
            poll.more.add(host)
    poll.events.sort(key=lambda he: (float(he[1]["time"]), he[0], he[1]["seq"]))
    return poll


def first_page(run: AgentRunner, cursors: dict[str, Cursor], mirror: str | None,
               mirrors: set[str], last: int) -> Poll:
    """Read every host's history up to now (bounded) and keep the ``last``
    latest events of all of them."""
    merged = Poll()
    kept: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
    pending = set(cursors)
    for _ in range(MAX_FIRST_PAGES):
        poll = poll_once(run, {h: cursors[h] for h in pending}, mirror, mirrors)
        kept.extend(poll.events)
        # Keep at most `last` per host while paging, so memory stays bounded.
        if len(kept) > last * max(1, len(cursors)) * 2:
            kept = collections.deque(_latest(list(kept), last))
        merged.problems.update(poll.problems)
        merged.notes += poll.notes
        pending = poll.more
        if not pending:
            break
    else:
        merged.notes.append(f"{', '.join(sorted(pending))}: more than "
                            f"{MAX_FIRST_PAGES * MAX_LIMIT} events; showing the latest read")
    merged.events = _latest(list(kept), last)
    return merged


def _latest(events: list[tuple[str, dict[str, Any]]], n: int) -> list[tuple[str, dict[str, Any]]]:
    events.sort(key=lambda he: (float(he[1]["time"]), he[0], he[1]["seq"]))
    return events[-n:]


def show(poll: Poll, cursors: dict[str, Cursor], out: TextIO, err: TextIO) -> None:
    for host, event in poll.events:
        print(format_event(event, host), file=out)
    for note in poll.notes:
        print(f"mirrorkit events: {escape_controls(note)}", file=err)
    for host, cursor in cursors.items():
        problem = poll.problems.get(host)
        if problem is not None and problem != cursor.reported:
            print(f"mirrorkit events: {host}: {escape_controls(problem)}", file=err)
        elif problem is None and cursor.reported is not None:
            print(f"mirrorkit events: {host}: answering again", file=err)
        cursor.reported = problem
    out.flush()


def follow(run: AgentRunner, hosts: Iterable[str], mirror: str | None, mirrors: set[str],
           last: int, *, keep_following: bool, out: TextIO = sys.stdout,
           err: TextIO = sys.stderr, sleep: Callable[[float], None] = time.sleep,
           max_polls: int | None = None) -> int:
    """Print the latest ``last`` events, then (``keep_following``) new ones
    every second, ``max_polls`` times at most (None: until interrupted)."""
    cursors = {h: Cursor() for h in hosts}
    poll = first_page(run, cursors, mirror, mirrors, last)
    show(poll, cursors, out, err)
    if not keep_following:
        return 1 if poll.problems else 0
    polls = 0
    while max_polls is None or polls < max_polls:
        sleep(POLL_SECONDS)
        show(poll_once(run, cursors, mirror, mirrors), cursors, out, err)
        polls += 1
    return 0


def run(args: argparse.Namespace) -> int:
    inventory = load_valid_inventory(args.inventory)
    if args.mirror or len(inventory.mirrors) == 1:
        chosen = [pick_mirror(inventory, args.mirror)]
    else:
        chosen = list(inventory.mirrors.values())
    hosts = sorted({h for m in chosen for h in m.members()})
    names = {m.name for m in chosen}
    only = chosen[0].name if len(chosen) == 1 else None
    with SshAgents(inventory.hosts) as agents:
        try:
            return follow(agents, hosts, only, names, args.last, keep_following=args.follow)
        except KeyboardInterrupt:
            print("", file=sys.stderr)
            return 130

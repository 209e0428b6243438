"""What the operations commands (events, maintenance, switchover, promote)
share: the ``--mirror`` default, asking several members at once, and the
live primary — learnt from the agents, never from the inventory.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from mirrorkit.errors import MirrorkitError, UsageError
from mirrorkit.inventory.model import Inventory, Mirror
from mirrorkit.remote import AgentResult, AgentRunner

STATUS_TIMEOUT = 30.0
MAX_PARALLEL = 16
T = TypeVar("T")


def add_mirror_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mirror", default="", metavar="M",
                        help="the mirror (may be left out when the inventory has one)")


def pick_mirror(inventory: Inventory, name: str) -> Mirror:
    """The mirror named ``name``, or the inventory's only mirror when
    ``name`` is empty; a UsageError listing the mirrors otherwise."""
    names = ", ".join(sorted(inventory.mirrors)) or "none"
    if not name:
        if len(inventory.mirrors) == 1:
            return next(iter(inventory.mirrors.values()))
        raise UsageError(f"the inventory has {len(inventory.mirrors)} mirrors ({names}): "
                         "name one with --mirror M")
    mirror = inventory.mirrors.get(name)
    if mirror is None:
        raise UsageError(f"no mirror {name!r} in the inventory (mirrors: {names})")
    return mirror


def on_each(hosts: Iterable[str], call: Callable[[str], T]) -> dict[str, T]:
    """``call(host)`` for every host, in parallel; results in ``hosts`` order."""
    order = list(dict.fromkeys(hosts))
    if not order:
        return {}
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(order))) as pool:
        return dict(zip(order, pool.map(call, order), strict=True))


@dataclass(frozen=True)
class LiveView:
    """Each member's own answer about one mirror (``status --json``)."""

    mirror: str
    states: dict[str, dict[str, object]]  # host -> its /status entry for the mirror
    errors: dict[str, str]  # host -> why it gave none

    def primaries(self) -> list[tuple[str, int]]:
        """(host, term) of every member that says it is the primary."""
        out = []
        for host, state in self.states.items():
            if state.get("role") == "primary":
                term = state.get("term")
                out.append((host, term if isinstance(term, int) else -1))
        return out


def live_view(run: AgentRunner, mirror: Mirror, hosts: Iterable[str] | None = None) -> LiveView:
    """Ask ``hosts`` (default: every member) for their state of ``mirror``."""
    results = on_each(hosts if hosts is not None else mirror.members(),
                      lambda h: run(h, ["status", "--json"], STATUS_TIMEOUT))
    return view_from_results(mirror.name, results)


def view_from_results(mirror: str, results: dict[str, AgentResult]) -> LiveView:
    states: dict[str, dict[str, object]] = {}
    errors: dict[str, str] = {}
    for host, result in results.items():
        answer, why = result.json()
        if answer is None:
            errors[host] = f"agent not answering: {why}"
            continue
        entry = (answer.get("mirrors") or {}).get(mirror)
        if isinstance(entry, dict):
            states[host] = entry
        else:
            errors[host] = f"its agent does not serve mirror {mirror}"
    return LiveView(mirror, states, errors)


def operation_answer(result: AgentResult, refused: str) -> dict[str, Any]:
    """The answer of a switchover or promotion; a MirrorkitError starting
    with ``refused`` and giving the agent's reason otherwise."""
    answer, why = result.json()
    if answer is None or "error" in answer or "result" not in answer:
        reason = (answer or {}).get("error") or why or "unexpected answer"
        raise MirrorkitError(f"{refused}: {reason}")
    return answer


def live_primary(view: LiveView) -> str:
    """The one member that says it is the primary; a MirrorkitError (which
    names who answered what) when none or several do."""
    primaries = view.primaries()
    if len(primaries) == 1:
        return primaries[0][0]
    if primaries:
        claims = ", ".join(f"{h} (term {t})" for h, t in sorted(primaries))
        raise MirrorkitError(
            f"{view.mirror}: several members say they are the primary: {claims}; not acting "
            "until only one does (the lower term steps down when it hears the higher one; "
            "see mirrorkit status)")
    unreachable = "; ".join(f"{h}: {e}" for h, e in sorted(view.errors.items()))
    roles = ", ".join(f"{h} {s.get('role')}" for h, s in sorted(view.states.items()))
    raise MirrorkitError(
        f"{view.mirror}: no member says it is the primary (answers: {roles or 'none'}"
        + (f"; no answer from {unreachable}" if unreachable else "") + ")")

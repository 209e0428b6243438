"""The switchover's HANDOVER between real agents on loopback: the old
primary tells the arbiter the new term before it hands over, so a later
promotion can never take that term a second time.

Found by the integration suite: after a restoration from a DR member
(dr1 -> node1), node1 was primary of term 3 but only node1 and dr1 knew it
(a DR member that steps down has no arbiter link); node2, seeing dr1 silent,
promoted itself to term 3 as well.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from four_cluster import (  # type: ignore[import-not-found]
    failed,
    print_logs,
    route_through_proxy,
    start_four,
    stop_four,
)
from test_failover_agents import control, events, primary_of, write_and_replicate
from test_loopback import MIRROR, Cluster, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def node1_arbiter_cut(tmp_path: Path,
                      request: pytest.FixtureRequest) -> Iterator[tuple[Cluster, Any]]:
    """The four members; node1's link to the arbiter runs through a proxy."""
    proxies: list[Any] = []
    try:
        c = start_four(tmp_path, lambda c: proxies.append(
            route_through_proxy(c, "node1", "arb1")))
        try:
            yield c, proxies[0]
        finally:
            if failed(request):
                print_logs(c)
            stop_four(c)
    finally:
        for proxy in proxies:
            proxy.close()


def test_the_arbiter_knows_the_new_term_before_the_new_primary_tells_it(
        node1_arbiter_cut: tuple[Cluster, Any]) -> None:
    c, proxy = node1_arbiter_cut
    code, body = control(c, "node1", f"/switchover?mirror={MIRROR}&to=dr1")
    assert code == 200 and body["handover"] == "accepted", body
    wait_for(primary_of(c, "dr1"), "dr1 primary of term 2")
    wait_for(lambda: c.mirror("node1").get("connected") and c.mirror("node2").get("connected"),
             "node1 and node2 follow dr1")
    write_and_replicate(c, "dr1", "at-dr.txt", "term 2\n", "node1", "node2")
    # node1 cannot reach the arbiter now: only dr1, stepping down, can tell it term 3
    proxy.partition()
    code, body = control(c, "dr1", f"/switchover?mirror={MIRROR}&to=node1")
    assert code == 200 and body["term"] == 3 and body["handover"] == "accepted", body
    wait_for(lambda: c.mirror("arb1").get("term") == 3, "the arbiter at term 3", timeout=10)
    # node2 learns term 3 from the arbiter. node1 cannot get a lease while cut
    # from the arbiter with node2 not yet following it, so node2 may well
    # promote itself; but to term 4, never to term 3 a second time.
    proxy.heal()
    wait_for(lambda: len(writable_primaries(c)) == 1 and all(
        c.mirror(n).get("connected") for n in ("node1", "node2", "dr1")
        if n not in writable_primaries(c)), "one writable primary, the others following it")
    (primary,) = writable_primaries(c)
    write_and_replicate(c, primary, "after.txt", "one primary\n",
                        *[n for n in ("node1", "node2", "dr1") if n != primary])
    claims = [(e["term"], n) for n in ("node1", "node2", "dr1") for e in events(c, n)
              if e["kind"] == "role" and e.get("role") == "primary"]
    terms = [t for t, _ in claims]
    assert len(terms) == len(set(terms)), f"a term with two primaries: {claims}"


def writable_primaries(c: Cluster) -> list[str]:
    return [n for n in ("node1", "node2", "dr1") if primary_of(c, n)()]

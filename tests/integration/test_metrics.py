"""/metrics and /status of live agents: the library's histograms and counters
are fed by the running primary and receiver; /status reports the loop stall."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from test_loopback import (
    MIRROR,
    Cluster,
    cluster_factory,  # noqa: F401 - fixture
    wait_for,
)

pytestmark = pytest.mark.integration


def test_live_agents_export_histograms_counters_and_loop_stall(
    cluster_factory: Callable[..., Cluster],  # noqa: F811
) -> None:
    c = cluster_factory({"node1": ("primary", None), "node2": ("backup", None)})
    for name in c.nodes:
        c.start(name)
    root = c.nodes["node1"].root
    wait_for(lambda: c.mirror("node2").get("connected"), "node2 connects")
    for i in range(10):
        (root / f"f{i}").write_bytes(os.urandom(5000))
    wait_for(lambda: c.converged("node1", "node2"), "node2 converges")
    wait_for(lambda: c.mirror("node2").get("applied_lsn") == c.mirror("node1").get("lsn"),
             "node2 applied everything")

    def own(node: str) -> dict[str, str]:
        return {"mirror": MIRROR, "member": node}

    p = c.metrics("node1")
    b = c.metrics("node2")

    def val(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
            **labels: str) -> float:
        return samples.get((name, frozenset(labels.items())), 0.0)

    # the primary: its log appends (fsync histogram, counters) and what it sent
    assert val(p, "mirrorkit_log_fsync_seconds_count", **own("node1")) > 0
    assert val(p, "mirrorkit_log_records_total", **own("node1")) >= 10
    assert val(p, "mirrorkit_log_bytes_total", **own("node1")) > 50_000
    assert val(p, "mirrorkit_sent_records_total", **own("node2")) >= 10
    assert val(p, "mirrorkit_sent_bytes_total", **own("node2")) > 50_000
    # the receiver: its own log appends and the apply latency per batch
    assert val(b, "mirrorkit_log_fsync_seconds_count", **own("node2")) > 0
    assert val(b, "mirrorkit_apply_seconds_count", **own("node2")) > 0
    assert val(b, "mirrorkit_apply_seconds_bucket", **own("node2"), le="+Inf") == \
        val(b, "mirrorkit_apply_seconds_count", **own("node2"))
    assert val(b, "mirrorkit_applied_records_total", **own("node2")) >= 10
    assert val(b, "mirrorkit_refused_records_total", **own("node2")) == 0
    # both: the loop stall probe runs, and the status gauges are still there
    for node, samples in (("node1", p), ("node2", b)):
        assert val(samples, "mirrorkit_loop_stall_seconds_count", member=node) > 0
        assert (samples[("mirrorkit_loop_stall_max_seconds", frozenset({("member", node)}))]
                >= 0)
        assert val(samples, "mirrorkit_up", member=node) == 1
        assert val(samples, "mirrorkit_lsn", **own(node)) > 0
        status = c.status(node)
        assert status is not None
        stall = status["loop_stall"]
        assert stall["samples"] > 0
        assert 0 <= stall["p50_ms"] <= stall["p99_ms"] <= stall["max_ms"]

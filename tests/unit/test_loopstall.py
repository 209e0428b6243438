"""The event loop's stall probe (mirrorkit/agent/util/loopstall.py)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mirrorkit.agent.api.metrics import metrics_text
from mirrorkit.agent.util.loopstall import LoopStallProbe
from mirrorkit.agent.util.stats import AgentMetrics


def block_the_loop_for(seconds: float) -> None:
    time.sleep(seconds)  # what a blocking disk read or hash does to the loop


async def run_probe(probe: LoopStallProbe, until: asyncio.Event) -> None:
    task = asyncio.create_task(probe.run())
    try:
        await asyncio.wait_for(until.wait(), 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_blocked_loop_is_recorded_as_a_stall() -> None:
    metrics = AgentMetrics("node1")
    probe = LoopStallProbe(metrics.loop_stall().observe, interval=0.02)

    async def main() -> None:
        done = asyncio.Event()
        runner = asyncio.create_task(run_probe(probe, done))
        await asyncio.sleep(0.2)  # some unblocked wake-ups first
        asyncio.get_running_loop().call_soon(block_the_loop_for, 0.3)
        await asyncio.sleep(0.2)  # the probe wakes up again after the block
        done.set()
        await runner

    asyncio.run(main())
    # The probe's timer fell inside the 0.3 s block: it woke at least
    # 0.3 s - one interval late.
    assert probe.max_ever >= 0.25
    summary = probe.summary()
    assert summary["max_ms"] >= 250 and summary["samples"] > 5
    assert summary["p50_ms"] < summary["max_ms"]
    families = {f.name: f for f in
                text_string_to_metric_families(metrics_text(metrics.registry).decode())}
    hist = families["mirrorkit_loop_stall_seconds"]
    assert hist.type == "histogram"
    samples = {(s.name, s.labels.get("le")): s.value for s in hist.samples}
    assert samples[("mirrorkit_loop_stall_seconds_count", None)] == summary["samples"]
    # exactly the blocked wake-up(s) are above 0.25 s
    assert samples[("mirrorkit_loop_stall_seconds_bucket", "0.25")] < \
        samples[("mirrorkit_loop_stall_seconds_bucket", "+Inf")]


def test_a_long_stall_is_warned_about_naming_where_the_loop_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    probe = LoopStallProbe(interval=0.02, warn_after=0.1, warn_every=3600)

    async def main() -> None:
        done = asyncio.Event()
        runner = asyncio.create_task(run_probe(probe, done))
        await asyncio.sleep(0.1)
        for _ in range(2):  # two stalls: the second is rate-limited
            asyncio.get_running_loop().call_soon(block_the_loop_for, 0.6)
            await asyncio.sleep(0.1)
        done.set()
        await runner

    with caplog.at_level(logging.WARNING, logger="mirrorkit.agent.util.loopstall"):
        asyncio.run(main())
    warnings = [r.getMessage() for r in caplog.records if "event loop stalled" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "block_the_loop_for" in warnings[0] and "test_loopstall.py" in warnings[0]
    assert probe.warnings == 1


def test_summary_of_an_idle_probe_is_zero() -> None:
    s = LoopStallProbe().summary()
    assert s["p50_ms"] == s["p99_ms"] == s["max_ms"] == 0.0 and s["samples"] == 0

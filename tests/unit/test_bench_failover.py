"""The pure helpers of the failover benchmark (bench/failover.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "failover.py"
    spec = importlib.util.spec_from_file_location("bench_failover", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load()
A = bench.Attempt


def test_max_gap_is_the_longest_stretch_without_a_success() -> None:
    attempts = [A(0.0, 1.0, True, "n1"), A(1.0, 1.5, False), A(1.5, 2.0, False),
                A(2.0, 3.2, True, "n2"), A(3.2, 3.4, True, "n2")]
    assert bench.max_gap(attempts, 0.5, 4.0) == pytest.approx(2.2)


def test_max_gap_counts_the_window_edges() -> None:
    attempts = [A(0.0, 1.0, True, "n1")]
    assert bench.max_gap(attempts, 0.0, 5.0) == pytest.approx(4.0)
    assert bench.max_gap([], 2.0, 3.5) == pytest.approx(1.5)
    # successes outside the window do not shorten the gap inside it
    assert bench.max_gap([A(9.0, 10.0, True, "n1")], 0.0, 2.0) == pytest.approx(2.0)


def test_first_ok_after_wants_a_success_sent_after_start_on_that_host() -> None:
    attempts = [A(0.0, 0.9, True, "n1"), A(1.0, 1.2, True, "n1"), A(1.2, 1.3, False),
                A(1.3, 2.5, True, "n2"), A(2.5, 2.6, True, "n2")]
    got = bench.first_ok_after(attempts, 0.95, "n2")
    assert got is not None and got.done == 2.5
    got_any = bench.first_ok_after(attempts, 0.95)
    assert got_any is not None and got_any.done == 1.2
    assert bench.first_ok_after(attempts, 3.0) is None


def test_term_changes_count_only_increases() -> None:
    assert bench.count_term_changes([3, 3, 4, 4, 4, 6]) == 2
    assert bench.count_term_changes([]) == 0


def test_summary_gives_median_and_range() -> None:
    assert bench.summary([1.0, 3.0, 2.0]) == "2.00 (1.00-3.00)"
    assert bench.summary([0.5]) == "0.50"
    assert bench.summary([]) == "—"


def test_floor_config_has_its_own_vip_and_router_id_and_no_track_script() -> None:
    conf = bench.floor_config("node1", "198.18.7.11", "198.18.7.12", 150, 0.1)
    assert f"virtual_router_id {bench.FLOOR_ROUTER_ID}" in conf
    assert f"{bench.FLOOR_VIP}/24" in conf
    assert "advert_int 0.1" in conf and "track" not in conf


def test_floor_counts_only_probes_started_after_the_kill_returned() -> None:
    samples = [(0.9, True), (1.0, True), (1.05, False), (1.1, True), (1.2, False), (1.9, True)]
    assert bench.first_success_from(samples, 1.15) == 1.9
    assert bench.first_success_from(samples, 1.0) == 1.0
    assert bench.first_success_from([(0.5, True), (1.5, False)], 1.0) is None

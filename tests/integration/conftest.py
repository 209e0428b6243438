"""Integration-test plumbing: remember each test's outcome so that fixtures
can print the agents' logs when it failed; ``four``, the four-member cluster
of four_cluster.py, fresh for each test that asks for it (test_ops_playbooks.py
overrides it with one shared by its tests that start from a restored one)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from four_cluster import failed, print_logs, start_four, stop_four  # type: ignore[import-not-found]
from test_loopback import Cluster  # type: ignore[import-not-found]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]
    return rep


def _own_four(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = start_four(tmp_path)
    try:
        yield c
    finally:
        if failed(request):
            print_logs(c)
        stop_four(c)


@pytest.fixture
def four(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """node1 primary, node2 backup, arb1 arbiter, dr1 async; hooks write markers."""
    yield from _own_four(tmp_path, request)


@pytest.fixture
def fresh_four(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A cluster of this test's own, just started (term 1), also where ``four``
    is overridden by a shared one (test_ops_playbooks.py)."""
    yield from _own_four(tmp_path, request)

"""MirrorWorker.stop: a task that swallowed its cancellation (see
util/aio.wait_for) is cancelled again, and said so, instead of the stop
waiting for it forever (a member left "mirror not running: starting")."""

from __future__ import annotations

import asyncio
import logging

import pytest

import mirrorkit.agent.stream.worker as worker_mod
from mirrorkit.agent.stream.worker import MirrorWorker


def test_a_task_that_swallows_one_cancel_is_cancelled_again(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(worker_mod, "STOP_GRACE", 0.1)
    worker = MirrorWorker.__new__(MirrorWorker)  # only what stop() touches
    worker.name, worker.servers, worker.sessions = "records[backup]", [], set()
    swallowed: list[int] = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append(1)  # like 3.11's wait_for: the first cancel is lost

    async def main() -> None:
        worker.tasks = [asyncio.get_running_loop().create_task(stubborn(), name="receive")]
        await asyncio.sleep(0)
        await asyncio.wait_for(worker.stop(), 10)
        assert worker.tasks[0].cancelled()

    with caplog.at_level(logging.ERROR, logger="mirrorkit.agent.stream.worker"):
        asyncio.run(main())
    assert swallowed == [1]
    assert "still running" in caplog.text and "receive" in caplog.text

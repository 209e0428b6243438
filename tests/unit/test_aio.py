"""util/aio.py: the agent's wait_for keeps a cancellation that coincides with
the awaited thing completing (Python 3.11's asyncio.wait_for drops it)."""

from __future__ import annotations

import asyncio

import pytest

from mirrorkit.agent.util.aio import wait_for


def _cancel_as_it_completes() -> str:
    async def main() -> str:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def waiter() -> str:
            await wait_for(fut, 5.0)
            await asyncio.sleep(0)  # a swallowed cancellation lets it get here
            return "ran on"

        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        fut.set_result(1)  # completes ...
        task.cancel()  # ... in the same loop iteration as the cancel
        try:
            return await task
        except asyncio.CancelledError:
            return "cancelled"

    return asyncio.run(main())


def test_a_cancellation_that_coincides_with_completion_is_kept() -> None:
    # A stopped receiver's reconnect loop ran on after a switchover this way,
    # and the member stayed "mirror not running: starting".
    assert all(_cancel_as_it_completes() == "cancelled" for _ in range(50))


def test_wait_for_times_out_and_passes_results() -> None:
    async def main() -> None:
        assert await wait_for(asyncio.sleep(0, "x"), 1.0) == "x"
        assert await wait_for(asyncio.sleep(0, "y"), None) == "y"
        with pytest.raises(TimeoutError):
            await wait_for(asyncio.sleep(10), 0.05)

    asyncio.run(main())

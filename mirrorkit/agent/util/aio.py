"""asyncio helpers: reconnect backoff, racing coroutines, and a ``wait_for``
that keeps cancellations."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

__all__ = ["Backoff", "race", "wait_for"]

T = TypeVar("T")


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """Await ``aw`` for at most ``timeout`` seconds (TimeoutError after).

    Use this, never ``asyncio.wait_for``: on Python 3.11 the latter drops a
    cancellation that arrives in the same loop iteration as the awaited
    thing completes (CPython gh-86296, fixed in 3.12). A worker being
    stopped then ran on: the receiver's reconnect loop outlived its cancel
    during a connection's close, the stop waited for it forever, and the
    member stayed "mirror not running: starting" after a switchover.
    ``asyncio.timeout`` keeps the cancellation."""
    if timeout is None:
        return await aw
    async with asyncio.timeout(timeout):
        return await aw


class Backoff:
    """Exponential reconnect delay with jitter, so members do not reconnect in step."""

    def __init__(self, initial: float = 0.2, cap: float = 5.0) -> None:
        self.initial = initial
        self.cap = cap
        self.current = initial

    def next(self) -> float:
        delay = self.current * random.uniform(0.8, 1.2)
        self.current = min(self.current * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.current = self.initial


async def race(*coros: Coroutine[Any, Any, None]) -> None:
    """Run coroutines until the first ends; cancel the rest; re-raise its error."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in done:
        t.result()

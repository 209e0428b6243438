"""asyncio helpers: reconnect backoff and racing coroutines."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any

__all__ = ["Backoff", "race"]


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

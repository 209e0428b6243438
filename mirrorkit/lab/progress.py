"""Step-by-step progress lines with timings, on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


def say(message: str) -> None:
    print(f"lab: {message}", file=sys.stderr, flush=True)


@contextmanager
def step(label: str, hint: str = "") -> Iterator[None]:
    """Print LABEL, run the block, then print how long it took (or that it failed)."""
    say(f"{label}{' (' + hint + ')' if hint else ''} ...")
    start = time.monotonic()
    try:
        yield
    except BaseException:
        say(f"{label}: failed after {time.monotonic() - start:.1f} s")
        raise
    say(f"{label}: done in {time.monotonic() - start:.1f} s")

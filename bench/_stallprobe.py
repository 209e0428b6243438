#!/usr/bin/env python3
"""Run the mirrorkit agent with an event-loop stall probe, without changing the agent.

    MK_STALLPROBE_OUT=/tmp/stall.txt python bench/_stallprobe.py --config agent.yml

Every asyncio loop this process runs gets a self-rescheduling callback
(``loop.call_at``) due every ``MK_STALLPROBE_INTERVAL_MS`` (default 10 ms);
each time it runs it records how late it woke up (actual minus scheduled,
both ``loop.time()`` = ``time.monotonic()``, the system-wide CLOCK_MONOTONIC,
so a bench process can cut the samples into its own time windows). Samples
are appended to ``MK_STALLPROBE_OUT`` as ``<due> <lateness>`` lines (seconds)
by a background thread every 0.5 s and at exit; the first line is a ``#``
header naming the agent entry point and the mirrorkit package that ran.

With ``MK_STALLPROBE_STACKS_MS=N`` a watchdog thread also samples the loop
thread's Python stack every ~5 ms while the probe is more than N ms overdue,
and appends ``<time> <ms since its last look> <stack>`` lines to
``<OUT>.stacks`` (a diagnosis aid: the extra thread perturbs a little).

The probe is the bench's own, on purpose: once the agent exports a stall
metric of its own, before and after are still measured the same way. The
agent's entry point is found whatever the package layout (it is being
reorganised): the first of ``ENTRY_POINTS`` that exists is imported. Without
``MK_STALLPROBE_OUT`` the agent runs unprobed (the bench uses that for the
agent's CLI, so both resolve the entry point alike).
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ENTRY_POINTS = [
    ("mirrorkit.agent.entry", "main"),
    ("mirrorkit.agent.cli.main", "main"),
    ("mirrorkit.agent.cli", "main"),
    ("mirrorkit.agent.main", "main"),
]
FLUSH_SECONDS = 0.5


class Probe:
    """Lateness samples of every probed loop of this process, and their writer."""

    def __init__(self, out: Path, interval: float, stacks_ms: float) -> None:
        self.out = out
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self.lock = threading.Lock()
        self.stack_samples: list[tuple[float, float, str]] = []
        self.stack_threshold = stacks_ms / 1000.0
        self.due = 0.0  # of the loop thread's probe; 0 = not armed
        self.loop_thread = 0
        self._stop = threading.Event()
        self._header_done = False

    # -- the probe callback, on the loop ---------------------------------------
    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        if getattr(loop, "_mk_stallprobe", False):
            return
        loop._mk_stallprobe = True  # type: ignore[attr-defined]
        state = {"due": loop.time() + self.interval}

        def tick() -> None:
            now = loop.time()
            self.samples.append((state["due"], max(0.0, now - state["due"])))
            state["due"] = now + self.interval  # a stall gives one late sample, no catch-up
            self.due = state["due"]
            loop.call_at(state["due"], tick)

        self.due = state["due"]
        self.loop_thread = threading.get_ident()
        loop.call_at(state["due"], tick)

    # -- writing -------------------------------------------------------------
    def flush(self, header: str = "") -> None:
        with self.lock:
            taken, self.samples = self.samples, []
            lines = []
            if not self._header_done:
                lines.append(f"# {header}\n" if header else "# stallprobe\n")
                self._header_done = True
            lines.extend(f"{due:.6f} {late:.6f}\n" for due, late in taken)
            with open(self.out, "a") as f:
                f.writelines(lines)
            if self.stack_threshold > 0:
                stacks, self.stack_samples = self.stack_samples, []
                with open(f"{self.out}.stacks", "a") as f:
                    f.writelines(f"{t:.6f} {step * 1000:.1f} {key}\n" for t, step, key in stacks)

    def writer(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self.flush()

    def watchdog(self) -> None:
        """Sample the loop thread's stack while the probe is overdue."""
        last = time.monotonic()
        while not self._stop.wait(0.005):
            now = time.monotonic()
            step, last = now - last, now
            if not self.due or not self.loop_thread or now - self.due < self.stack_threshold:
                continue
            frame = sys._current_frames().get(self.loop_thread)
            if frame is None:
                continue
            self.stack_samples.append((now, step, stack_key(traceback.extract_stack(frame))))

    def start(self, header: str) -> None:
        self.flush(header)
        threading.Thread(target=self.writer, name="stallprobe-writer", daemon=True).start()
        if self.stack_threshold > 0:
            threading.Thread(target=self.watchdog, name="stallprobe-watchdog",
                             daemon=True).start()
        atexit.register(self.close)

    def close(self) -> None:
        self._stop.set()
        self.flush()


def stack_key(stack: traceback.StackSummary) -> str:
    """The innermost mirrorkit frames below the entry point, then the leaf: enough
    to name what holds the loop. A leaf in ``select`` while the probe is overdue
    means the loop thread woke but waits for the GIL (or a CPU)."""
    mk = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in stack
          if "mirrorkit" in f.filename
          and Path(f.filename).name not in ("entry.py", "main.py", "__main__.py")][-3:]
    leaf = stack[-1]
    return " > ".join(mk or ["(loop)"]) + f" | {Path(leaf.filename).name}:{leaf.lineno} {leaf.name}"


def install_probe(probe: Probe) -> None:
    """Probe every loop: those made by the policy (``asyncio.run``) and, as a
    fallback, any other loop when it starts running (a custom loop factory)."""
    base_policy = type(asyncio.get_event_loop_policy())

    class ProbedPolicy(base_policy):  # type: ignore[misc, valid-type]
        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            loop = super().new_event_loop()
            probe.install(loop)
            return loop

    asyncio.set_event_loop_policy(ProbedPolicy())
    run_forever = asyncio.BaseEventLoop.run_forever

    def probed_run_forever(self: asyncio.BaseEventLoop) -> None:
        probe.install(self)
        run_forever(self)

    asyncio.BaseEventLoop.run_forever = probed_run_forever  # type: ignore[method-assign]


def _missing(exc: ModuleNotFoundError, module: str) -> bool:
    """True when ``exc`` says ``module`` (or a parent package) does not exist,
    not that something it imports is missing (that is a real error)."""
    name = exc.name or ""
    return module == name or module.startswith(name + ".")


def find_main() -> tuple[str, Callable[[], Any]]:
    if str(REPO) not in sys.path[:1]:
        sys.path.insert(0, str(REPO))  # this checkout's mirrorkit, not an installed one
    tried = []
    for module, attr in ENTRY_POINTS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if _missing(exc, module):
                tried.append(module)
                continue
            raise
        fn = getattr(mod, attr, None)
        if callable(fn):
            return f"{module}:{attr}", fn
        tried.append(f"{module} (no {attr})")
    raise SystemExit(f"_stallprobe: no agent entry point found (tried {', '.join(tried)})")


def main() -> None:
    out = os.environ.get("MK_STALLPROBE_OUT")
    probe = None
    if out:
        probe = Probe(Path(out), float(os.environ.get("MK_STALLPROBE_INTERVAL_MS", "10")) / 1000,
                      float(os.environ.get("MK_STALLPROBE_STACKS_MS", "0")))
        install_probe(probe)
    name, fn = find_main()
    if probe is not None:
        import mirrorkit

        probe.start(f"stallprobe pid={os.getpid()} main={name} "
                    f"mirrorkit={Path(mirrorkit.__file__).parent} "
                    f"interval_ms={probe.interval * 1000:g} python={sys.version.split()[0]}")
    rc = fn()  # reads sys.argv[1:], the agent's own arguments
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()

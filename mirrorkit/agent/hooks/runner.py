"""Running an operator's hook command (``on_promote``, ``on_demote``,
``on_role_change``, ``health_check``): :func:`run_hook`.

The command runs through ``/bin/sh -c`` in its own process group, with the
mirror's facts in its environment (``MIRRORKIT_MIRROR``, ``MIRRORKIT_ROLE``,
``MIRRORKIT_OLD_ROLE``, ``MIRRORKIT_TERM``, ``MIRRORKIT_PRIMARY``,
``MIRRORKIT_HOOK``), stdin from /dev/null, stdout and stderr together. It
never blocks the event loop (an asyncio subprocess). After ``timeout``
seconds the whole process group is killed (a hook that starts a service
and forgets a child must not hang the next decision). Output is kept up to
``MAX_OUTPUT`` bytes (its tail), so a chatty hook costs bounded memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass

from mirrorkit.agent.util.aio import wait_for

__all__ = ["MAX_OUTPUT", "HookResult", "run_hook"]

MAX_OUTPUT = 64 << 10
_READ = 8 << 10


@dataclass(frozen=True, slots=True)
class HookResult:
    hook: str
    command: str
    exit_status: int | None  # None: killed at the timeout, or could not start
    seconds: float
    output: str  # the tail, at most MAX_OUTPUT bytes, decoded with replacement
    timed_out: bool = False
    error: str | None = None  # why it could not start

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def summary(self) -> str:
        if self.error is not None:
            return f"{self.hook} could not run: {self.error}"
        if self.timed_out:
            return f"{self.hook} killed after {self.seconds:.1f} s (timeout)"
        return f"{self.hook} exited {self.exit_status} after {self.seconds:.2f} s"


async def run_hook(hook: str, command: str, timeout: float,
                   env: Mapping[str, str]) -> HookResult:
    started = time.monotonic()
    full_env = {**os.environ, **env, "MIRRORKIT_HOOK": hook}
    try:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=full_env, start_new_session=True)
    except OSError as exc:
        return HookResult(hook, command, None, time.monotonic() - started, "",
                          error=str(exc))
    tail = bytearray()

    async def collect() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(_READ):
            tail.extend(chunk)
            if len(tail) > MAX_OUTPUT:
                del tail[:len(tail) - MAX_OUTPUT]
        await proc.wait()

    timed_out = False
    try:
        await wait_for(collect(), timeout)
    except TimeoutError:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await wait_for(proc.wait(), 5.0)
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    status = None if timed_out else proc.returncode
    return HookResult(hook, command, status, time.monotonic() - started,
                      tail.decode("utf-8", "replace"), timed_out)

"""ha/loop.py AppHooks: one hook at a time, and a reload's new hooks run.

Found in review (issue 8): a redo() during the retry wait after a failed
hook started a second runner (two on_promote at once), and a redo() while
the old command ran was forgotten once it finished."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import mirrorkit.agent.ha.loop as ha_loop


class _Result:
    def __init__(self, ok: bool) -> None:
        self.ok = ok


class _FakeHa:
    """What AppHooks needs of its HA loop; hooks that count themselves."""

    def __init__(self, outcomes: list[tuple[float, bool]]) -> None:
        self.outcomes = outcomes  # (seconds, ok) per call; the last repeats
        self.calls = 0
        self.running = 0
        self.most_at_once = 0

    def track(self, task: asyncio.Task[Any]) -> None:
        pass

    def term(self) -> int:
        return 1

    async def hook(self, name: str) -> _Result:
        seconds, ok = self.outcomes[min(self.calls, len(self.outcomes) - 1)]
        self.calls += 1
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.sleep(seconds)
            return _Result(ok)
        finally:
            self.running -= 1


async def _until(pred: Any, what: str) -> None:
    for _ in range(500):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_redo_during_the_retry_wait_does_not_run_two_hooks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ha_loop, "HOOK_RETRY", 0.2)

    async def main() -> None:
        ha = _FakeHa([(0.1, False), (0.4, True)])
        app = ha_loop.AppHooks(ha)  # type: ignore[arg-type]
        app.want("up")
        await asyncio.sleep(0.15)  # the first run failed; in the retry wait now
        app.redo()
        await _until(lambda: app.state == "up", "up")
        await asyncio.sleep(0.5)
        # the retry wait ended while the redo's run (0.4 s) ran: a second
        # runner would have started a hook beside it
        assert ha.most_at_once == 1 and ha.calls == 2

    asyncio.run(main())


def test_a_redo_while_the_old_hook_runs_runs_the_new_one_after_it() -> None:
    async def main() -> None:
        ha = _FakeHa([(0.2, True)])
        app = ha_loop.AppHooks(ha)  # type: ignore[arg-type]
        app.want("up")
        await _until(lambda: ha.running == 1, "the old on_promote running")
        app.redo()  # the hooks changed under it
        await _until(lambda: ha.calls == 2 and app.state == "up", "the new one ran too")
        assert ha.most_at_once == 1

    asyncio.run(main())

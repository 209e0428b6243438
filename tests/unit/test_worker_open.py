"""A worker opens its mirror log (the full recovery scan) off the event loop."""

from __future__ import annotations

import asyncio
import copy
import threading
from pathlib import Path
from typing import Any

import pytest
from test_agent_config import GOOD

from mirrorkit.agent.config import parse_config
from mirrorkit.agent.ha.roles import create_worker
from mirrorkit.agent.log import segments
from mirrorkit.agent.log.records import Op, OpKind, Record
from mirrorkit.agent.state import MirrorState, RoleOwner, StateStore


def config(tmp_path: Path, host: str) -> Any:
    raw = copy.deepcopy(GOOD)
    raw["host"] = host
    raw["state_dir"] = str(tmp_path / host / "state")
    m = raw["mirrors"]["records"]
    m["role"] = m["members"][host]["role"]
    m["paths"] = [str(tmp_path / "data")]
    m["targets"] = [str(tmp_path / host / "replica")]
    return parse_config(raw)


@pytest.mark.parametrize("host", ["node1", "node2"])
def test_open_scans_the_log_in_a_worker_thread(tmp_path: Path, host: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(tmp_path, host)
    log_dir = cfg.mirror_dir("records") / "log"
    log_dir.mkdir(parents=True)
    old = segments.MirrorLog(log_dir)
    old.append([Record(lsn, 1, Op(OpKind.MKDIR, 0, f"d{lsn}")) for lsn in (1, 2, 3)])
    old.close()
    store = StateStore(cfg.mirror_dir("records"))
    role = cfg.mirrors["records"].role
    store.save(MirrorState(1, role, "node1"))
    if host == "node2":  # applied.json ahead of the log: the log restarts there
        store.save_applied(10)
    roles = RoleOwner.load(store, "failover", role, "node1")
    opened_on: list[str] = []
    real_init = segments.MirrorLog.__init__

    def spy(self: segments.MirrorLog, *args: Any, **kwargs: Any) -> None:
        opened_on.append(threading.current_thread().name)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(segments.MirrorLog, "__init__", spy)

    async def main() -> tuple[int, int]:
        worker = create_worker(cfg, cfg.mirrors["records"], roles)
        assert not hasattr(worker, "log")  # constructing a worker reads no log
        await worker.open()
        await worker.open()  # idempotent
        try:
            return worker.log.first_lsn, worker.log.last_lsn  # type: ignore[attr-defined]
        finally:
            await worker.stop()

    first, last = asyncio.run(main())
    assert len(opened_on) == 1 and opened_on[0] != threading.main_thread().name
    assert (first, last) == ((1, 3) if host == "node1" else (11, 10))

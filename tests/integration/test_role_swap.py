"""One owner of role and term: a running backup becomes primary and back,
inside the running agents (no process restart), while replication continues.

The agents run in this test's own event loop (real TLS on loopback, real
files), so the test can call the role owner directly: the very call the
failover state machine of a later issue makes. A mirror whose state file is
damaged refuses to start while the host's other mirror keeps running.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_loopback import differences, make_cluster, wait_for

from mirrorkit.agent import daemon
from mirrorkit.agent.api.http import check_health, check_primary
from mirrorkit.agent.config import load_config
from mirrorkit.agent.daemon import Agent
from mirrorkit.agent.stream.receiver import ReceiverMirror
from mirrorkit.agent.stream.sender import PrimaryMirror

pytestmark = pytest.mark.integration
M = "records"


async def until(pred: Callable[[], Awaitable[bool] | bool], what: str,
                timeout: float = 90.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = pred()
        if isinstance(got, Awaitable):
            got = await got
        if got:
            return
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.2)


def test_backup_becomes_primary_and_back_while_replication_continues(tmp_path: Path) -> None:
    c = make_cluster(tmp_path, {"node1": ("primary", None), "node2": ("backup", None),
                                "dr1": ("async", "dr"), "arb1": ("arbiter", None)})
    agents = {n: Agent(load_config(node.config)) for n, node in c.nodes.items()}
    root = {n: node.root for n, node in c.nodes.items()}

    def sup(name: str) -> Any:
        return agents[name].supervisors[M]

    async def same(src: str, *dst: str) -> bool:
        diffs = [await asyncio.to_thread(differences, root[src], root[d]) for d in dst]
        return not any(diffs)

    async def switch(old: str, new: str, term: int) -> None:
        # the shape of a switchover: the old primary stops first, then the new one starts
        await sup(old).roles.change("backup", term, new, "test: switchover")
        await sup(new).roles.change("primary", term, new, "test: switchover")
        await until(lambda: isinstance(sup(new).worker, PrimaryMirror)
                    and isinstance(sup(old).worker, ReceiverMirror), f"{new} runs as primary")

    async def main() -> None:
        runs = [asyncio.create_task(a.run(signals=False)) for a in agents.values()]
        try:
            await until(lambda: all(sup(n).running for n in agents), "all mirrors running")
            (root["node1"] / "one.txt").write_text("written on node1, term 1\n")
            await until(lambda: same("node1", "node2", "dr1"), "term 1 replicates")

            await switch("node1", "node2", 2)
            assert sup("node1").roles.state.role == "backup"
            assert check_primary(agents["node1"].status(), M)[0] == 503
            (root["node2"] / "two.txt").write_text("written on node2, term 2\n")
            (root["node2"] / "one.txt").write_text("changed on node2\n")
            await until(lambda: same("node2", "node1", "dr1"), "term 2 replicates")
            assert check_primary(agents["node2"].status(), M)[0] == 200

            await switch("node2", "node1", 3)
            (root["node1"] / "three.txt").write_text("back on node1, term 3\n")
            await until(lambda: same("node1", "node2", "dr1"), "term 3 replicates")
            assert (root["dr1"] / "one.txt").read_text() == "changed on node2\n"
            for n in ("node1", "node2"):
                assert sup(n).role_changes == 2
                st = agents[n].status()["mirrors"][M]
                assert st["term"] == 3 and st.get("divergences", 0) == 0
            history = json.loads((c.nodes["node1"].state_dir / M / "terms.json").read_text())
            assert [t for t, _ in history["history"]] == [1, 2, 3]
            assert not (c.nodes["node1"].state_dir / M / "quarantine").exists()
        finally:
            for a in agents.values():
                a.stop()
            await asyncio.gather(*runs, return_exceptions=True)

    asyncio.run(main())


def test_a_damaged_state_file_stops_only_its_mirror(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon, "RETRY_SECONDS", 0.3)
    c = make_cluster(tmp_path, {"node1": ("primary", None), "node2": ("backup", None)})
    cfg = yaml.safe_load(c.nodes["node1"].config.read_text())
    other = json.loads(json.dumps(cfg["mirrors"][M]))  # a second mirror on the same host
    other_root = tmp_path / "other"
    other_root.mkdir()
    other.update(paths=[str(other_root)], targets=[str(other_root)], members={
        "node1": {"address": "127.0.0.1", "role": "primary",
                  "port": cfg["mirrors"][M]["port"] + 1}})
    cfg["mirrors"]["other"] = other
    c.nodes["node1"].config.write_text(yaml.safe_dump(cfg))
    state = c.nodes["node1"].state_dir / M / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"term": 2, "role": "prim')  # torn, e.g. by a disk fault
    agent = Agent(load_config(c.nodes["node1"].config))

    async def main() -> None:
        run = asyncio.create_task(agent.run(signals=False))
        try:
            await until(lambda: agent.supervisors["other"].running, "the other mirror runs")
            status = agent.status()
            bad = status["mirrors"][M]
            assert bad["alive"] is False and str(state) in bad["error"]
            assert "Damaged or missing state" in bad["error"]
            assert check_health(status)[0] == 503
            assert check_primary(status, M)[0] == 503
            assert check_primary(status, "other")[0] == 200
            assert state.read_text() == '{"term": 2, "role": "prim'  # untouched
            # the operator repairs it (docs: Damaged or missing state); no restart
            state.write_text(json.dumps({"term": 2, "role": "primary", "primary": "node1"}))
            await until(lambda: agent.supervisors[M].running, "the repaired mirror starts")
            assert check_primary(agent.status(), M)[0] == 200
        finally:
            agent.stop()
            await run

    asyncio.run(main())


def test_reload_keeps_what_it_can(tmp_path: Path) -> None:
    c = make_cluster(tmp_path, {"node1": ("primary", None), "node2": ("backup", None)})
    agents = {n: Agent(load_config(node.config), node.config) for n, node in c.nodes.items()}
    root = {n: node.root for n, node in c.nodes.items()}
    config = c.nodes["node1"].config

    def sup(name: str) -> Any:
        return agents[name].supervisors[M]

    def rewrite(change: Callable[[dict[str, Any]], None]) -> None:
        cfg = yaml.safe_load(config.read_text())
        change(cfg["mirrors"][M])
        config.write_text(yaml.safe_dump(cfg))

    async def main() -> None:
        runs = [asyncio.create_task(a.run(signals=False)) for a in agents.values()]
        try:
            await until(lambda: sup("node2").worker is not None
                        and sup("node2").worker.connected, "node2 connects")
            worker, session = sup("node1").worker, sup("node1").worker.peers["node2"].task
            # a timeout change is applied in place: same worker, same connection
            rewrite(lambda m: m["timeouts"].update(heartbeat=0.25))
            assert await agents["node1"].reload()
            assert sup("node1").worker is worker and worker.cfg.timeouts.heartbeat == 0.25
            assert worker.peers["node2"].task is session
            # a config that does not validate changes nothing
            good = config.read_text()
            config.write_text(good.replace("mode: async", "mode: sideways"))
            assert not await agents["node1"].reload()
            assert sup("node1").worker is worker
            assert "sideways" in agents["node1"].status()["last_reload"]["error"]
            config.write_text(good)
            # anything else restarts that mirror's worker; role and term stay
            rewrite(lambda m: m.update(exclude=["*.tmp", "*.bak"]))
            assert await agents["node1"].reload()
            assert sup("node1").worker is not worker
            assert sup("node1").roles.state.role == "primary" and sup("node1").roles.term == 1
            (root["node1"] / "after-reload.txt").write_text("still replicating\n")
            await until(lambda: (root["node2"] / "after-reload.txt").exists(),
                        "replication after the restart")
            assert agents["node1"].status()["reloads"] == 2
            status = agents["node1"].status()
            assert status["config_digest"] == hashlib.sha256(config.read_bytes()).hexdigest()
            assert status["last_reload"]["ok"] and status["last_reload"]["restarted"] == [M]
            # a certificate rotated in place (same path, new bytes) restarts the mirror
            worker = sup("node1").worker
            cert = Path(yaml.safe_load(config.read_text())["mirrors"][M]["tls"]["cert"])
            cert.write_bytes(cert.read_bytes() + b"\n")
            assert await agents["node1"].reload()
            assert sup("node1").worker is not worker
            assert agents["node1"].status()["last_reload"]["restarted"] == [M]
        finally:
            for a in agents.values():
                a.stop()
            await asyncio.gather(*runs, return_exceptions=True)

    asyncio.run(main())


def test_sighup_reloads_a_running_agent(tmp_path: Path) -> None:
    c = make_cluster(tmp_path, {"node1": ("primary", None), "node2": ("backup", None)})
    try:
        node = c.start("node1")
        wait_for(lambda: c.mirror("node1").get("role") == "primary", "node1 runs")
        assert node.proc is not None
        node.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: (c.status("node1") or {}).get("reloads") == 1, "the reload")
        assert node.proc.poll() is None and "reload of" in node.log_text()
    finally:
        c.stop_all()


def test_a_restarting_primary_stays_primary_while_its_log_opens(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening a big log takes seconds (its recovery scan); keepalived must not
    release the VIP meanwhile: /primary answers 200 ("starting")."""
    c = make_cluster(tmp_path, {"node1": ("primary", None), "node2": ("backup", None)})
    opened = PrimaryMirror.open
    gate = asyncio.Event()

    async def slow_open(self: PrimaryMirror) -> None:
        await gate.wait()  # as if scanning a large log
        await opened(self)

    monkeypatch.setattr(PrimaryMirror, "open", slow_open)
    state = c.nodes["node1"].state_dir / M / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"term": 4, "role": "primary", "primary": "node1"}))
    agent = Agent(load_config(c.nodes["node1"].config))

    async def main() -> None:
        run = asyncio.create_task(agent.run(signals=False))
        try:
            await until(lambda: agent.status()["mirrors"][M].get("starting")
                        and agent.status()["mirrors"][M]["alive"], "its log opening")
            status = agent.status()
            assert status["mirrors"][M]["term"] == 4
            assert check_primary(status, M)[0] == 200 and check_health(status)[0] == 200
            gate.set()
            await until(lambda: agent.supervisors[M].running, "the worker runs")
            assert check_primary(agent.status(), M)[0] == 200
        finally:
            agent.stop()
            await run

    asyncio.run(main())


def test_shutdown_is_cut_short_when_a_mirror_hangs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """An upgrade restarts the agent: a stop that hangs (a peer that never says
    goodbye) must not hold the restart, or keepalived releases the VIP."""
    c = make_cluster(tmp_path, {"node1": ("primary", None), "node2": ("backup", None)})
    stopped = PrimaryMirror.stop

    async def hanging_stop(self: PrimaryMirror) -> None:
        await asyncio.Event().wait()  # never returns by itself
        await stopped(self)

    monkeypatch.setattr(PrimaryMirror, "stop", hanging_stop)
    agent = Agent(load_config(c.nodes["node1"].config))

    async def main() -> None:
        run = asyncio.create_task(agent.run(signals=False))
        await until(lambda: agent.supervisors[M].running, "the primary runs")
        agent.stop()
        await asyncio.wait_for(run, 60)  # a hang guard, not a speed check

    asyncio.run(main())
    assert "still stopping after" in caplog.text and "cut short" in caplog.text


def test_an_on_promote_added_by_a_reload_runs_at_once(tmp_path: Path) -> None:
    # Reported in issue 8's note: a hook added by a reload waited for the next
    # change of writability, so a primary never started its application.
    c = make_cluster(tmp_path, {"node1": ("primary", None), "node2": ("backup", None)})
    config = c.nodes["node1"].config
    agent = Agent(load_config(config), config)
    marker = tmp_path / "promoted"

    async def main() -> None:
        run = asyncio.create_task(agent.run(signals=False))
        try:
            await until(lambda: agent.supervisors[M].ha.app.state == "up",
                        "node1 writable, its (empty) on_promote done")
            worker = agent.supervisors[M].worker
            cfg = yaml.safe_load(config.read_text())
            cfg["mirrors"][M]["hooks"] = {"on_promote": f"echo $MIRRORKIT_ROLE >> {marker}"}
            config.write_text(yaml.safe_dump(cfg))
            assert await agent.reload()
            assert agent.supervisors[M].worker is worker  # in place, no restart
            await until(lambda: marker.exists(), "the new on_promote ran")
            assert marker.read_text() == "primary\n"
        finally:
            agent.stop()
            await run

    asyncio.run(main())

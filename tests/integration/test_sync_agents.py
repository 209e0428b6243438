"""Sync mode between real agents on loopback (issue 9 part 2, the HA side):
node1 primary with the ``mount`` capture (a real mirrorkit-mountd), node2
backup, arb1 arbiter, all in ``mode: sync``, default timings (heartbeat
0.25 s, qos 1 s, arbiter 2 s).

What ``sync_acked_lsn`` (what an fsync on the mount may be acknowledged
through) does when the backup stops answering: it stays at what the backup
has until the arbiter has confirmed and persisted that the primary runs
without it; the backup is then not active, so when the primary dies too it
is *not* promoted (it would lose acknowledged writes); once the backup is
back and has everything, acknowledgements wait for it again and the flag is
cleared. Every wait is a poll with a generous deadline.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from four_cluster import (  # type: ignore[import-not-found]
    DEFAULT_TIMEOUTS,
    failed,
    print_logs,
    route_through_proxy,
    stop_four,
)
from mountd_proc import Mountd, needs_fuse  # type: ignore[import-not-found]
from test_loopback import MIRROR, Cluster, make_cluster, wait_for  # type: ignore[import-not-found]

pytestmark = [pytest.mark.integration, needs_fuse]

MEMBERS = {"node1": ("primary", None), "node2": ("backup", None), "arb1": ("arbiter", None)}


def _sync_cluster(base: Path, proxy_backup: bool,
                  prepare: Callable[[Cluster], None] | None = None
                  ) -> tuple[Cluster, Mountd, Any, Mountd]:
    c = make_cluster(base, MEMBERS, extra={"mode": "sync", "timeouts": DEFAULT_TIMEOUTS})
    if prepare is not None:
        prepare(c)
    mountd = Mountd(base / "mountd", backing=c.nodes["node1"].root, sync=True)
    # node2's own mountd, serving its replica read-only, as on a real member:
    # a backup counts itself active only once its mountd has said the mount
    # holds nothing the log lacks (stream/mount_rejoin.py).
    mountd2 = Mountd(base / "mountd2", backing=c.nodes["node2"].root, sync=True)
    for name, served in (("node1", mountd), ("node2", mountd2)):
        # Both failover members: sync needs the mount.
        cfg = yaml.safe_load(c.nodes[name].config.read_text())
        cfg["mirrors"][MIRROR]["capture"] = "mount"
        cfg["mirrors"][MIRROR]["mount_socket"] = str(served.socket)
        c.nodes[name].config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proxy = route_through_proxy(c, "node2", "node1") if proxy_backup else None
    mountd.start()
    mountd2.start()
    for name in ("arb1", "node2", "node1"):
        c.start(name)
    return c, mountd, proxy, mountd2


@pytest.fixture(params=[False], ids=["direct"])
def sync_cluster(tmp_path: Path, request: pytest.FixtureRequest
                 ) -> Iterator[tuple[Cluster, Mountd, Any]]:
    # param: True (node2 reaches node1 through a proxy a test can cut), or a
    # function that prepares the cluster before it starts
    param = getattr(request, "param", False)
    c, mountd, proxy, mountd2 = _sync_cluster(tmp_path, param is True,
                                              param if callable(param) else None)
    try:
        yield c, mountd, proxy
    finally:
        if failed(request):
            print_logs(c)
            print(mountd.logfile.read_text()[-4000:])
        stop_four(c)
        mountd.stop()
        mountd2.stop()
        if proxy is not None:
            proxy.close()


def writable(mnt: Path) -> bool:
    try:
        (mnt / ".w").write_bytes(b"")
        (mnt / ".w").unlink()
        return True
    except OSError:
        return False


def sync_of(c: Cluster) -> dict[str, Any]:
    m = c.mirror("node1")
    return {"lsn": m.get("lsn"), "acked": m.get("sync_acked_lsn"),
            **(m.get("sync") or {})}


def events(c: Cluster, name: str, kind: str) -> list[str]:
    code, body = c.get(name, f"/events?mirror={MIRROR}&limit=1000")
    return [e["message"] for e in body.get("events", []) if e["kind"] == kind] \
        if code == 200 else []


def synced(c: Cluster) -> Callable[[], bool]:
    """Everything node1 logged is acknowledged, in sync with node2."""
    def check() -> bool:
        s = sync_of(c)
        return s.get("state") == "sync" and s["lsn"] is not None and s["acked"] == s["lsn"]
    return check


def write(mountd: Mountd, name: str, data: bytes) -> None:
    with open(mountd.mnt / name, "wb") as f:
        f.write(data)
        os.fsync(f.fileno())


def arbiter_flag(c: Cluster) -> dict[str, Any] | None:
    flag: dict[str, Any] | None = c.mirror("arb1").get("backup_out")
    return flag


def go_alone(c: Cluster, mountd: Mountd, name: str) -> int:
    """With node2 unable to answer: write, see acknowledgements wait, then
    (after qos, the arbiter confirming) follow the log's end. Returns the
    LSN node2 had."""
    had = sync_of(c)["acked"]
    # In a thread: once the mount waits for sync_acked_lsn, this fsync
    # returns only after the arbiter confirmed.
    writer = threading.Thread(target=write, args=(mountd, name, os.urandom(20_000)))
    writer.start()
    wait_for(lambda: sync_of(c)["lsn"] > had, "node1 logs the write")
    samples: list[dict[str, Any]] = []

    def alone() -> bool:
        still_waiting = writer.is_alive()  # read before the state: see below
        s = sync_of(c)
        samples.append({**s, "fsync_waiting": still_waiting})
        return s.get("state") == "alone"

    wait_for(alone, "node1 to run without node2 (arbiter confirmed)", timeout=60, interval=0.05)
    writer.join(60)
    assert not writer.is_alive(), "the fsync did not return once running alone"
    waiting = [s for s in samples if s.get("state") in ("sync", "asking")]
    assert waiting, samples  # it did wait, and while it waited ...
    assert all(s["acked"] == had for s in waiting), waiting  # ... acknowledged nothing new
    # mountd --sync: the application's fsync had not returned while the
    # primary still waited for node2 (it returned only once running alone).
    assert all(s["fsync_waiting"] for s in waiting), waiting
    wait_for(lambda: sync_of(c)["acked"] == sync_of(c)["lsn"],
             "sync_acked_lsn to follow the log's end")
    confirmed = [m for m in events(c, "node1", "sync") if "confirms: continuing without" in m]
    assert confirmed and f"from LSN {had}" in confirmed[-1] and "term 1" in confirmed[-1]
    assert arbiter_flag(c) == {"term": 1, "primary": "node1", "from_lsn": had}
    state = json.loads((c.nodes["arb1"].state_dir / MIRROR / "state.json").read_text())
    assert state["backup_out"] == 1  # persisted at the arbiter
    return int(had)


def test_a_stopped_backup_holds_acknowledgements_until_the_arbiter_confirms(
        sync_cluster: tuple[Cluster, Mountd, Any]) -> None:
    c, mountd, _ = sync_cluster
    wait_for(lambda: writable(mountd.mnt), "node1's mount to become writable", 60)
    write(mountd, "before", b"in sync")
    wait_for(synced(c), "node2 to acknowledge the first write")
    os.kill(c.nodes["node2"].proc.pid, signal.SIGSTOP)
    go_alone(c, mountd, "while-stopped")
    write(mountd, "alone", b"acknowledged without node2")
    wait_for(lambda: sync_of(c)["acked"] == sync_of(c)["lsn"], "acknowledged alone")
    # node2 comes back: it catches up, fsync waits for it again, the flag goes
    os.kill(c.nodes["node2"].proc.pid, signal.SIGCONT)
    wait_for(synced(c), "node1 back in sync with node2", timeout=90)
    assert arbiter_flag(c) is None
    msgs = events(c, "node1", "sync")
    assert any("caught up" in m and "fsync waits for it again" in m for m in msgs), msgs
    assert any("active again" in m for m in msgs), msgs
    wait_for(lambda: c.mirror("node2").get("ha", {}).get("active") is True,
             "node2 active again")
    assert (c.nodes["node2"].root / "alone").read_bytes() == b"acknowledged without node2"
    # and from now on acknowledgements wait for node2 again
    write(mountd, "after", b"in sync again")
    wait_for(synced(c), "node2 to acknowledge the write after")
    assert c.mirror("node2")["applied_lsn"] >= sync_of(c)["acked"]


@pytest.mark.parametrize("sync_cluster", [True], ids=["partitioned"], indirect=True)
def test_a_backup_the_primary_ran_without_is_not_promoted_when_the_primary_dies(
        sync_cluster: tuple[Cluster, Mountd, Any]) -> None:
    c, mountd, proxy = sync_cluster
    wait_for(lambda: writable(mountd.mnt), "node1's mount to become writable", 60)
    write(mountd, "before", b"in sync")
    wait_for(synced(c), "node2 to acknowledge the first write")
    proxy.partition()  # node2 <-> node1 only: both still hear the arbiter
    had = go_alone(c, mountd, "acknowledged-alone")
    # the arbiter's answer tells node2 it is out of sync: not active
    wait_for(lambda: "is out of sync" in (c.mirror("node2").get("ha", {}).get("reason") or ""),
             "node2 to hear from arb1 that node1 runs without it")
    assert c.mirror("node2")["ha"]["active"] is False
    # (it may hold a little more than node1 knows: records in flight at the cut)
    assert had <= c.mirror("node2")["applied_lsn"] < sync_of(c)["acked"]
    c.stop("node1", signal.SIGKILL)
    # arb1 loses node1 too: by the rules node2 would promote, but node1
    # acknowledged writes node2 never received: it stays backup, and says why
    def declined() -> bool:
        ha = c.mirror("node2").get("ha", {})
        return ha.get("decision") == "not-active" and "arbiter arb1 has not heard it" in (
            ha.get("reason") or "")

    wait_for(declined, "node2 to decline the promotion", timeout=60)
    m = c.mirror("node2")
    assert m["role"] == "backup" and m["term"] == 1, m
    reason = m["ha"]["reason"]
    assert "is out of sync" in reason and f"from LSN {had}" in reason
    assert reason in events(c, "node2", "decision")
    assert "is out of sync" in c.nodes["node2"].log_text()


def _arbiter_told_backup_primary_lost(c: Cluster) -> None:
    """arb1's state as after telling node2, in term 1, that node1 had been
    silent for the arbiter timeout (node2 might have promoted on it)."""
    d = c.nodes["arb1"].state_dir / MIRROR
    d.mkdir(parents=True, exist_ok=True)
    (d / "state.json").write_text(json.dumps(
        {"term": 1, "role": "arbiter", "primary": "node1", "primary_lost": 1}))


@pytest.mark.parametrize("sync_cluster", [_arbiter_told_backup_primary_lost],
                         ids=["arbiter-refuses"], indirect=True)
def test_without_the_arbiters_confirmation_fsync_keeps_waiting(
        sync_cluster: tuple[Cluster, Mountd, Any]) -> None:
    c, mountd, _ = sync_cluster
    wait_for(lambda: writable(mountd.mnt), "node1's mount to become writable", 60)
    write(mountd, "before", b"in sync")
    wait_for(synced(c), "node2 to acknowledge the first write")
    had = sync_of(c)["acked"]
    os.kill(c.nodes["node2"].proc.pid, signal.SIGSTOP)
    writer = threading.Thread(target=write, args=(mountd, "waits", b"not acknowledged alone"))
    writer.start()
    wait_for(lambda: any("has not confirmed running without it" in m
                         for m in events(c, "node1", "sync")),
             "node1 to say the arbiter does not confirm")
    s = sync_of(c)
    assert s["state"] == "asking" and s["acked"] == had < s["lsn"], s
    assert arbiter_flag(c) is None
    assert "refused" in c.nodes["arb1"].log_text()
    # the backup returns: what waited is acknowledged through it
    os.kill(c.nodes["node2"].proc.pid, signal.SIGCONT)
    wait_for(synced(c), "node1 back in sync with node2", timeout=90)
    writer.join(60)
    assert not writer.is_alive()
    assert (c.nodes["node2"].root / "waits").read_bytes() == b"not acknowledged alone"

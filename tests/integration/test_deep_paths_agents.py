"""Deep paths between real agents (docs/architecture.md, "Paths and apply"):
a file 1,200 directories deep on the primary replicates and replication
goes on; one past the path bound is refused by the primary's capture (one
WARNING, counted in status) while everything else replicates; a receiver
that finds a deep record in its logged backlog starts and applies it; and a
past-bound record from a hostile primary stops the member through the
apply-failure mechanism, after which the member still starts.

Deep trees are made and read by descriptors: their absolute paths may be
longer than PATH_MAX, and os.walk / shutil.rmtree recurse once per level.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from test_apply_failures import fake_primary, polled  # type: ignore[import-not-found]
from test_loopback import (  # type: ignore[import-not-found]
    MIRROR,
    Cluster,
    cluster_factory,
    wait_for,
)

from mirrorkit.agent.log.records import Op, OpKind
from mirrorkit.agent.transport.frames import Ack, ApplyFailed
from mirrorkit.agent.util.fs import PATH_MAX
from mirrorkit.agent.util.move import make_dirs
from mirrorkit.agent.util.walk import remove_tree

pytestmark = pytest.mark.integration
__all__ = ["cluster_factory"]

DEEP = "/".join(["d"] * 1200)
# PATH_MAX bytes below the root in 17 components (shallow: quick to make and remove).
PAST = "/".join(["p" * 255] * 15 + ["q" * 200, "f" * 55])


def write_at(root: Path, rel: str, data: bytes) -> None:
    parent, _, name = rel.rpartition("/")
    base = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        dfd = make_dirs(base, parent.split("/"), 0o755)
    finally:
        os.close(base)
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dfd)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    finally:
        os.close(dfd)


def read_at(root: Path, rel: str) -> bytes | None:
    """The content of ``root/rel`` read one component at a time; None if absent."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    try:
        for part in rel.split("/")[:-1]:
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        leaf = os.open(rel.rpartition("/")[2], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    finally:
        os.close(fd)
    try:
        return os.read(leaf, 1 << 16)
    finally:
        os.close(leaf)


def remove_deep(c: Cluster) -> None:
    for node in c.nodes.values():
        for top in (node.root, node.state_dir):
            if not top.is_dir():
                continue
            fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
            try:
                for name in os.listdir(fd):
                    if name in ("d", "p" * 255, "quarantine"):
                        remove_tree(fd, name)
            finally:
                os.close(fd)


def caught_up(c: Cluster) -> bool:
    p, r = c.mirror("node1"), c.mirror("node2")
    return bool(p and r and r.get("applied_lsn") == p.get("lsn") and r.get("alive"))


def test_a_deep_file_replicates_and_one_past_the_bound_is_refused_by_capture(
        cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory({"node1": ("primary", None), "node2": ("backup", None)})
    root, replica = c.nodes["node1"].root, c.nodes["node2"].root
    try:
        write_at(root, DEEP + "/f", b"deep")
        write_at(root, PAST, b"too long")
        (root / "ok").write_bytes(b"ok")
        for name in c.nodes:
            c.start(name)
        wait_for(lambda: read_at(replica, DEEP + "/f") == b"deep", "the deep file on node2")
        wait_for(lambda: c.mirror("node1").get("capture", {}).get("state") == "running",
                 "the primary's first scan")
        wait_for(lambda: caught_up(c), "node2 applies everything")
        first = c.mirror("node2")["applied_lsn"]
        assert (replica / "ok").read_bytes() == b"ok"
        assert read_at(replica, PAST) is None  # its directories fit: they are mirrored
        un = c.mirror("node1")["capture"]["unmirrorable"]
        assert un["paths"] == 1 and f"{PATH_MAX} bytes long" in un["last"]["reason"]
        text = c.nodes["node1"].log_text()
        assert "not mirrored: that path is 4096 bytes long" in text and "WARNING" in text
        # Later writes, deep and shallow, still replicate; applied LSN advances.
        write_at(root, DEEP + "/g", b"later")
        (root / "ok2").write_bytes(b"ok2")
        wait_for(lambda: read_at(replica, DEEP + "/g") == b"later" and
                 (replica / "ok2").exists(), "later writes on node2")
        wait_for(lambda: caught_up(c) and c.mirror("node2")["applied_lsn"] > first,
                 "applied LSN advances")
        assert c.code("node1", "/health") == 200 and c.code("node2", "/health") == 200
        assert c.mirror("node2")["refused"] == 0

        # A restart that replays the deep records from node2's own log (its
        # applied LSN set back, as after a crash before applied.json moved).
        c.stop("node2")
        applied = c.nodes["node2"].state_dir / MIRROR / "applied.json"
        applied.write_text(json.dumps({"lsn": 0}))
        c.start("node2")
        wait_for(lambda: caught_up(c), "node2 starts and replays its log")
        assert "applied logged backlog" in c.nodes["node2"].log_text()
        assert read_at(replica, DEEP + "/g") == b"later"
        assert c.code("node2", "/health") == 200
    finally:
        c.stop_all()
        remove_deep(c)


def test_a_past_bound_record_from_a_hostile_primary_stops_the_member_which_still_starts(
        cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory({"node1": ("primary", None), "node2": ("backup", None)})
    replica = c.nodes["node2"].root

    async def script() -> None:
        async with fake_primary(c) as fake:
            await fake.records(Op(OpKind.WRITE, 0, DEEP + "/f", data=b"deep"),
                               Op(OpKind.WRITE, 0, PAST, data=b"x"),
                               Op(OpKind.WRITE, 0, "after", data=b"x"))
            assert (await fake.expect(Ack)).lsn == 1  # the deep one applies
            failed = await fake.expect(ApplyFailed)
            assert (failed.lsn, failed.resync) == (2, 0)
            m = await polled(lambda: (lambda m: m if m.get("alive") is False else None)(
                c.mirror("node2")), "node2 stops")
            assert "REFUSED record LSN 2 (WRITE" in m["error"]
            assert f"is {PATH_MAX} bytes long" in m["error"]
            assert m["apply_failure"]["action"] == "stopped" and m["applied_lsn"] == 1
            assert await asyncio.to_thread(c.code, "node2", "/health") == 503

    def restarted() -> dict[str, object] | None:
        m = c.mirror("node2")
        return m if m.get("role") == "backup" and m.get("alive") and \
            m.get("applied_lsn") == 1 else None


    try:
        asyncio.run(script())
        # The agent restarts (no primary to talk to now): the mirror starts,
        # its log ending before the refused record; no failed start.
        c.stop("node2")
        c.start("node2")
        m = wait_for(restarted, "node2 starts again")
        assert "error" not in m and not m.get("failed_starts")
        assert read_at(replica, DEEP + "/f") == b"deep"
        assert sorted(os.listdir(replica)) == ["d"]
        assert "Traceback" not in c.nodes["node2"].log_text()
    finally:
        c.stop_all()
        remove_deep(c)

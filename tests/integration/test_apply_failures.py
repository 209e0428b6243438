"""A record a member cannot apply is never "skipped and acknowledged": a
real backup against a scripted primary (to send what a real one would not),
and against a real primary whose records meet an immutable file.

Every wait is a poll with a generous deadline; nothing asserts speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from test_loopback import (  # type: ignore[import-not-found]
    MIRROR,
    Cluster,
    cluster_factory,
    differences,
    wait_for,
)

from mirrorkit.agent.config import load_config
from mirrorkit.agent.log.records import Op, OpKind, Record
from mirrorkit.agent.transport.conn import Connection, serve, server_context, server_handshake
from mirrorkit.agent.transport.frames import (
    Ack,
    ApplyFailed,
    Heartbeat,
    Hello,
    Manifest,
    ManifestEnd,
    Message,
    Records,
    ResyncBegin,
    ResyncEnd,
)

pytestmark = pytest.mark.integration
__all__ = ["cluster_factory"]  # the fixture, re-exported for this module
M = TypeVar("M")


class FakePrimary:
    """Serves node1's port: a handshake, heartbeats, and what the test sends."""

    def __init__(self, c: Cluster) -> None:
        self.cfg = load_config(c.nodes["node1"].config).mirrors[MIRROR]
        self.port = c.nodes["node1"].port
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.ready = asyncio.Event()
        self.conn: Connection | None = None
        self.lsn = 0
        self.resync_id = 0

    async def _session(self, conn: Connection) -> None:
        assert self.conn is None, "the backup reconnected: the test expects one session"
        await server_handshake(conn, self.cfg, Hello(MIRROR, "node1", "primary", 1, self.lsn,
                                                        [[1, 1]] if self.lsn else []),
                               ("backup",))
        self.conn = conn
        self.ready.set()

        async def beat() -> None:
            while True:
                await conn.send(Heartbeat(1, self.lsn, "primary"))
                await asyncio.sleep(0.2)

        task = asyncio.create_task(beat())
        try:
            while True:
                await self.inbox.put(await conn.recv(30))
        finally:
            task.cancel()

    async def expect(self, kind: type[M]) -> M:
        """The next message that is not a heartbeat; it must be a ``kind``."""
        while True:
            msg = await asyncio.wait_for(self.inbox.get(), 60)
            if not isinstance(msg, Heartbeat):
                assert isinstance(msg, kind), msg
                return msg

    async def records(self, *ops: Op) -> None:
        assert self.conn is not None
        first = self.lsn + 1
        self.lsn += len(ops)
        await self.conn.send(Records(1, records=[Record(first + i, 1, op)
                                              for i, op in enumerate(ops)]))

    async def resync(self, *ops: Op) -> Ack:
        """A checksum resync at our LSN that sends ``ops``; the backup's ACK."""
        assert self.conn is not None
        self.resync_id += 1
        await self.conn.send(ResyncBegin(self.lsn, 1, "checksum", 0, 64 * 1024,
                                         self.resync_id))
        while not isinstance(await self.expect((Manifest, ManifestEnd)), ManifestEnd):
            pass
        await self.conn.send(Records(1, records=[Record(0, 1, op) for op in ops]))
        await self.conn.send(ResyncEnd(self.lsn, 1))
        return await self.expect(Ack)


@contextlib.asynccontextmanager
async def fake_primary(c: Cluster) -> AsyncIterator[FakePrimary]:
    fake = FakePrimary(c)
    server = await serve("127.0.0.1", fake.port, server_context(fake.cfg.tls), fake._session,
                         "fake-primary", set())
    try:
        c.start("node2")
        await asyncio.wait_for(fake.ready.wait(), 60)
        yield fake
    finally:
        server.close()


async def polled(fn: Callable[[], Any], what: str) -> Any:
    """``wait_for`` without stopping the fake primary's heartbeats."""
    return await asyncio.to_thread(wait_for, fn, what)


@pytest.fixture
def backup_only(cluster_factory: Callable[..., Cluster],
                request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = cluster_factory({"node1": ("primary", None), "node2": ("backup", None)})
    yield c
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(c.dump_logs())


def test_a_refused_record_stops_the_member_until_a_resync(backup_only: Cluster) -> None:
    c = backup_only
    replica = c.nodes["node2"].root

    async def script() -> None:
        async with fake_primary(c) as fake:
            await fake.records(Op(OpKind.MKDIR, 0, "ok", value=0o755),
                               Op(OpKind.WRITE, 0, "../escape", data=b"x"),
                               Op(OpKind.WRITE, 0, "ok/after", data=b"x"))
            assert (await fake.expect(Ack)).lsn == 1
            failed = await fake.expect(ApplyFailed)
            assert (failed.lsn, failed.resync) == (2, 0)
            await fake.records(Op(OpKind.WRITE, 0, "ok/later", data=b"y"))  # dropped
            m = await polled(lambda: (lambda m: m if m.get("alive") is False else None)(
                c.mirror("node2")), "node2 stops")
            assert "REFUSED record LSN 2 (WRITE '../escape')" in m["error"]
            assert m["applied_lsn"] == 1 and m["apply_failure"]["action"] == "stopped"
            assert await asyncio.to_thread(c.code, "node2", "/health") == 503
            assert not (replica / "ok" / "after").exists()
            assert not (replica / "ok" / "later").exists()
            # The way back: a resync from the primary (an operator's).
            ack = await fake.resync(Op(OpKind.MKDIR, 0, "ok", value=0o755),
                                    Op(OpKind.WRITE, 0, "ok/good", data=b"good"))
            assert ack.lsn == fake.lsn == 4
            m = await polled(lambda: (lambda m: m if m.get("alive") else None)(
                c.mirror("node2")), "node2 resumes")
            assert m["apply_failure"] is None and "error" not in m and m["resyncs"] == 1
            assert await asyncio.to_thread(c.code, "node2", "/health") == 200
            await fake.records(Op(OpKind.WRITE, 0, "ok/streamed", data=b"z"))
            assert (await fake.expect(Ack)).lsn == 5

    asyncio.run(script())
    assert (replica / "ok" / "good").read_bytes() == b"good"
    assert (replica / "ok" / "streamed").read_bytes() == b"z"
    assert not (replica.parent / "escape").exists()


def test_a_conflicting_record_is_resynced_never_acknowledged_past(backup_only: Cluster) -> None:
    c = backup_only
    replica = c.nodes["node2"].root
    huge = Op(OpKind.WRITE, 0, "d/huge", value=1 << 50, data=b"x")  # EFBIG on the replica

    async def script() -> None:
        async with fake_primary(c) as fake:
            await fake.records(Op(OpKind.MKDIR, 0, "d", value=0o755), huge,
                               Op(OpKind.WRITE, 0, "d/after", data=b"a"))
            assert (await fake.expect(Ack)).lsn == 1
            failed = await fake.expect(ApplyFailed)
            assert (failed.lsn, failed.resync) == (2, 1)  # asks for a resync
            assert "cannot apply record LSN 2 (WRITE 'd/huge')" in failed.reason
            m = c.mirror("node2")
            assert m["alive"] is True and m["apply_failure"]["action"] == "resync"
            assert m["applied_lsn"] == 1 and m["conflicts"] == 1
            assert await asyncio.to_thread(c.code, "node2", f"/replica?mirror={MIRROR}") \
                == 503
            ack = await fake.resync(Op(OpKind.MKDIR, 0, "d", value=0o755),
                                    Op(OpKind.WRITE, 0, "d/after", data=b"a"))
            assert ack.lsn == 3
            m = c.mirror("node2")
            assert m["apply_failure"] is None and m["applied_lsn"] == 3
            assert await asyncio.to_thread(c.code, "node2", f"/replica?mirror={MIRROR}") \
                == 200
            # The same conflict again and again: after 3 resyncs in a row, it stops.
            for attempt in range(4):
                await fake.records(huge)
                assert (await fake.expect(Ack)).lsn == fake.lsn - 1  # what it has
                failed = await fake.expect(ApplyFailed)
                if attempt < 2:  # the first of the series came before the resync above
                    assert failed.resync == 1
                    assert (await fake.resync()).lsn == fake.lsn
                else:
                    assert failed.resync == 0
                    break
            m = c.mirror("node2")
            assert m["alive"] is False and "still conflicts after 3 resyncs" in m["error"]

    asyncio.run(script())
    assert (replica / "d" / "after").read_bytes() == b"a"
    assert not (replica / "d" / "huge").exists() or (replica / "d" / "huge").stat().st_size == 0


def chattr(flag: str, path: Path) -> bool:
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_a_conflict_the_resync_cannot_fix_stops_until_an_operator_resync(
        cluster_factory: Callable[..., Cluster]) -> None:
    """A real primary: a file made immutable on the backup (EPERM even for
    root) is a conflict; the primary resyncs the backup on its request; the
    resync meets the same file, so the backup stops until the operator fixed
    it and asked for a resync."""
    c = cluster_factory({"node1": ("primary", None), "node2": ("backup", None)})
    root, replica = c.nodes["node1"].root, c.nodes["node2"].root
    (root / "f").write_text("version 1\n")
    for name in c.nodes:
        c.start(name)
    wait_for(lambda: c.converged("node1", "node2"), "first copy")
    if not chattr("+i", replica / "f"):
        pytest.skip("chattr +i is not available here")
    try:
        (root / "f").write_text("version 2\n")
        m = wait_for(lambda: (lambda m: m if m.get("alive") is False else None)(
            c.mirror("node2")), "the backup stops")
        assert "failed during a resync" in m["error"] and "(WRITE 'f')" in m["error"]
        p = c.mirror("node1")
        peer = p["peers"]["node2"]
        assert peer["resync"]["requested_by"] == "auto"  # it was asked for
        assert peer["acked_lsn"] < p["lsn"] and peer["lag_records"] > 0  # not acknowledged
        wait_for(lambda: c.mirror("node1")["peers"]["node2"]["state"] == "apply-failed",
                 "the primary shows why")
        assert "failed during a resync" in c.mirror("node1")["peers"]["node2"]["apply_error"]
        assert c.code("node2", "/health") == 503
        assert (replica / "f").read_text() == "version 1\n"
    finally:
        chattr("-i", replica / "f")
    got = subprocess.run([sys.executable, "-m", "mirrorkit.agent.cli.main",
                          "--config", str(c.nodes["node1"].config), "resync",
                          "--mirror", MIRROR, "--member", "node2"],
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stdout + got.stderr
    wait_for(lambda: c.mirror("node2").get("alive") is True and
             c.mirror("node1")["peers"]["node2"]["acked_lsn"] == c.mirror("node1")["lsn"],
             "the backup resumes after the operator's resync")
    assert differences(root, replica) == []
    assert c.mirror("node1")["peers"]["node2"]["apply_error"] is None
    assert c.code("node2", "/health") == 200
    assert os.path.exists(replica / "f")

"""Online verification with real agents on loopback: primary, backup, async.

The controller's algorithm (mirrorkit/verification.py) runs against a
transport that invokes the real agent commands (`mirrorkit-agent manifest`,
`mirrorkit-agent repair`) as local processes instead of over SSH; manifests,
barriers and repairs are the agents' own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from test_loopback import (
    MIRROR,
    Cluster,
    cluster_factory,  # noqa: F401 - fixture
    differences,
    wait_for,
)

from mirrorkit.agent.verify.manifest import Key, parse_manifest
from mirrorkit.verification import Manifest, VerifyFailed, verify_mirror

pytestmark = pytest.mark.integration

RECEIVERS = {"node2": "backup", "dr1": "async"}


class LocalTransport:
    """The agent commands as local processes (the SSH transport's stand-in)."""

    def __init__(self, cluster: Cluster) -> None:
        self.c = cluster

    def _agent(self, host: str, args: Sequence[str], stdin: str | None = None) -> str:
        cmd = [sys.executable, "-m", "mirrorkit.agent.cli.main",
               "--config", str(self.c.nodes[host].config), *args]
        got = subprocess.run(cmd, input=stdin or "", capture_output=True, text=True,
                             timeout=300)
        if got.returncode != 0:
            raise VerifyFailed(f"{host}: {got.stderr.strip() or got.stdout.strip()}")
        return got.stdout

    def primary_lsn(self, host: str, mirror: str) -> int:
        url = f"http://127.0.0.1:{self.c.nodes[host].api_port}/status"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(json.loads(resp.read())["mirrors"][mirror]["lsn"])

    def manifest(self, host: str, mirror: str, at_lsn: int | None,
                 only: Sequence[Key] | None) -> Manifest:
        args = ["manifest", "--mirror", mirror]
        if at_lsn is not None:
            args += ["--at-lsn", str(at_lsn), "--timeout", "120"]
        stdin = None
        if only is not None:
            args.append("--paths-stdin")
            stdin = json.dumps([list(k) for k in only])
        return parse_manifest(self._agent(host, args, stdin).splitlines())

    def repair(self, host: str, mirror: str, paths: Sequence[str]) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "mirrorkit.agent.cli.main", "--config",
               str(self.c.nodes[host].config), "repair", "--mirror", mirror, *paths]
        got = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        answer: dict[str, Any] = json.loads(got.stdout)
        return answer


@pytest.fixture
def trio(cluster_factory: Callable[..., Cluster],  # noqa: F811
         request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = cluster_factory({"node1": ("primary", None), "node2": ("backup", None),
                         "dr1": ("async", "dr")})
    root = c.nodes["node1"].root
    (root / "docs" / "sub").mkdir(parents=True)
    for i in range(20):
        (root / "docs" / f"f{i}.txt").write_bytes(os.urandom(1000 + 7000 * i))
    (root / "docs" / "sub" / "deep.bin").write_bytes(os.urandom(200_000))
    (root / "skip.tmp").write_text("excluded")
    (root / "ln").symlink_to("docs/f1.txt")
    for name in c.nodes:
        c.start(name)
    wait_for(lambda: all(not differences(root, c.nodes[r].root) for r in RECEIVERS),
             "replicas converge", timeout=90)
    yield c
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(c.dump_logs())


def member(report: dict[str, Any], host: str) -> dict[str, Any]:
    found: dict[str, Any] = next(m for m in report["members"] if m["host"] == host)
    return found


def test_all_copies_match(trio: Cluster) -> None:
    report = verify_mirror(LocalTransport(trio), MIRROR, "node1", RECEIVERS)
    assert report["ok"], report
    for host in RECEIVERS:
        m = member(report, host)
        # 20 files + deep.bin + docs + docs/sub + ln; skip.tmp is excluded
        assert (m["compared"], m["matched"]) == (24, 24)
        assert m["different"] == m["missing"] == m["orphans"] == []


def test_differences_are_listed_per_member_and_repaired(trio: Cluster) -> None:
    c = trio
    primary_root = c.nodes["node1"].root
    # Behind the agents' backs: corrupt a file on node2 (same size and mtime),
    # delete one on dr1, add an orphan on node2.
    victim = c.nodes["node2"].root / "docs" / "f3.txt"
    st = victim.stat()
    with open(victim, "r+b") as f:
        f.seek(100)
        f.write(b"CORRUPT")
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    (c.nodes["dr1"].root / "docs" / "sub" / "deep.bin").unlink()
    (c.nodes["node2"].root / "docs" / "orphan.txt").write_text("only here")

    t = LocalTransport(c)
    report = verify_mirror(t, MIRROR, "node1", RECEIVERS)
    assert not report["ok"]
    n2, dr = member(report, "node2"), member(report, "dr1")
    f3 = f"{primary_root}/docs/f3.txt"
    deep = f"{primary_root}/docs/sub/deep.bin"
    orphan = f"{primary_root}/docs/orphan.txt"
    assert n2["different"] == [{"path": f3, "fields": ["digest"]}]
    assert (n2["missing"], n2["orphans"]) == ([], [orphan])
    assert (dr["different"], dr["missing"], dr["orphans"]) == ([], [deep], [])
    assert (n2["matched"], dr["matched"]) == (23, 23)

    report = verify_mirror(t, MIRROR, "node1", RECEIVERS, repair=True)
    assert sorted(report["repair"]["resent"]) == sorted([f3, deep])
    n2, dr = member(report, "node2"), member(report, "dr1")
    assert (n2["different"], n2["missing"], n2["orphans"]) == ([], [], [orphan])
    assert (dr["different"], dr["missing"], dr["orphans"], dr["ok"]) == ([], [], [], True)
    assert not report["ok"]  # the orphan is still a difference; repair never deletes
    assert victim.read_bytes() == (primary_root / "docs" / "f3.txt").read_bytes()
    deep_copy = c.nodes["dr1"].root / "docs" / "sub" / "deep.bin"
    assert deep_copy.read_bytes() == (primary_root / "docs" / "sub" / "deep.bin").read_bytes()
    # and the rest of the members got the re-sent state too, without damage
    assert differences(primary_root, c.nodes["dr1"].root) == []
    assert "REFUSED" not in c.nodes["node2"].log_text()


def test_no_false_differences_while_the_primary_is_written(trio: Cluster) -> None:
    c = trio
    root = c.nodes["node1"].root
    stop = threading.Event()
    rounds = [0]

    def writer() -> None:
        i = 0
        while not stop.is_set():
            (root / "docs" / f"f{i % 5}.txt").write_bytes(os.urandom(5000 + i % 3000))
            (root / "docs" / f"new{i}.txt").write_bytes(b"x" * i)
            if i >= 10:
                (root / "docs" / f"new{i - 10}.txt").unlink()
            i += 1
            rounds[0] = i
            stop.wait(0.02)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(lambda: rounds[0] > 20, "the writer is writing")
        reports = [verify_mirror(LocalTransport(c), MIRROR, "node1", RECEIVERS)
                   for _ in range(2)]
    finally:
        stop.set()
        thread.join()
    for report in reports:
        for host in RECEIVERS:
            m = member(report, host)
            assert (m["different"], m["missing"], m["orphans"]) == ([], [], []), m
        assert report["ok"]

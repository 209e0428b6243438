"""Real agents on loopback: primary, backup, async DR copy and arbiter as processes.

Every wait is a poll with a generous deadline; nothing asserts speed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mirrorkit.agent.config import TlsConfig, load_config
from mirrorkit.agent.log.records import Op, OpKind, Record
from mirrorkit.agent.transport.conn import (
    Connection,
    client_context,
    connect,
    serve,
    server_context,
    server_handshake,
)
from mirrorkit.agent.transport.frames import Ack, ApplyFailed, Error, Hello, Records
from mirrorkit.pki import ensure_mirror_pki, member_files

MIRROR = "records"
T = TypeVar("T")


_HANDED_OUT: set[int] = set()


def _port_range() -> tuple[int, int]:
    """Where free_port picks: below the kernel's ephemeral range, and under
    pytest-xdist (``make integration`` runs two workers) a slice of it per
    worker, so that two workers never hand out the same port: a port handed
    out is bound only once its agent starts, and free again while a test
    has that agent stopped."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    start, end = 10000, max(low, 10001)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if worker.startswith("gw") and worker[2:].isdigit() and count > 1:
        size = (end - start) // count
        start += int(worker[2:]) * size
        end = start + size
    return start, end


def free_port() -> int:
    """A bindable loopback port *below* the kernel's ephemeral range, so that
    no agent's outgoing connection can take it before the agent listens."""
    start, end = _port_range()
    while True:
        port = random.randrange(start, end)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port


def wait_for(pred: Callable[[], T], what: str, timeout: float = 60.0,
             interval: float = 0.2) -> T:
    """Poll ``pred`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: T = pred()
    while not last:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)
        last = pred()
    return last


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """What must be identical between primary and replica, per relative path.
    An entry that vanishes while we look (the agent is applying) is recorded
    as such, so the comparison simply fails this round."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if name.endswith(".tmp"):  # the mirror's exclude pattern
                continue
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            try:
                st = os.lstat(p)
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISLNK(st.st_mode):
                    out[rel] = ("link", os.readlink(p))
                elif stat.S_ISDIR(st.st_mode):
                    out[rel] = ("dir", mode)
                else:
                    out[rel] = ("file", mode, st.st_mtime_ns, p.read_bytes())
            except OSError as exc:
                out[rel] = ("vanished", str(exc))
    return out


def differences(a: Path, b: Path) -> list[str]:
    sa, sb = snapshot(a), snapshot(b)
    diffs = [f"only on primary: {k}" for k in sa.keys() - sb.keys()]
    diffs += [f"only on replica: {k}" for k in sb.keys() - sa.keys()]
    for k in sa.keys() & sb.keys():
        if sa[k] != sb[k]:
            diffs.append(f"differs: {k}: {sa[k][:3]} vs {sb[k][:3]}")
    return sorted(diffs)


@dataclass
class Node:
    name: str
    role: str
    config: Path
    state_dir: Path
    root: Path
    api_port: int
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def control_socket(self) -> Path:
        """This agent's own control socket (its config's ``control_socket``)."""
        return self.config.parent / "run" / "control.sock"


@dataclass
class Cluster:
    base: Path
    pki: Path
    nodes: dict[str, Node] = field(default_factory=dict)

    def start(self, name: str) -> Node:
        node = self.nodes[name]
        assert node.proc is None, f"{name} already running"
        node.starts += 1
        logf = open(node.log_path, "ab")  # noqa: SIM115 - handed to the child
        logf.write(f"--- start {node.starts}\n".encode())
        logf.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        node.proc = subprocess.Popen(
            [sys.executable, "-m", "mirrorkit.agent.cli.main", "--config", str(node.config)],
            stdout=logf, stderr=subprocess.STDOUT, env=env,
        )
        logf.close()
        return node

    def stop(self, name: str, sig: int = signal.SIGTERM) -> int | None:
        node = self.nodes[name]
        proc, node.proc = node.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                return proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                return None
        return proc.returncode

    def stop_all(self) -> None:
        for name in self.nodes:
            self.stop(name)

    def status(self, name: str) -> dict[str, Any] | None:
        node = self.nodes[name]
        url = f"http://127.0.0.1:{node.api_port}/status"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                data: dict[str, Any] = json.loads(resp.read())
                return data
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def get(self, name: str, path: str) -> tuple[int, dict[str, Any]]:
        """GET ``path`` on ``name``'s API: (status code, JSON body); (0, {})
        when nothing answers."""
        url = f"http://127.0.0.1:{self.nodes[name].api_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return int(resp.status), json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
        except OSError:
            return 0, {}

    def code(self, name: str, path: str) -> int:
        return self.get(name, path)[0]

    def mirror(self, name: str) -> dict[str, Any]:
        st = self.status(name)
        if not st:
            return {}
        m: dict[str, Any] = st["mirrors"].get(MIRROR, {})
        return m

    def metrics(self, name: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """``/metrics`` of ``name``, parsed by prometheus_client:
        {(sample name, labels): value}."""
        url = f"http://127.0.0.1:{self.nodes[name].api_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        return {(s.name, frozenset(s.labels.items())): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    def metric(self, name: str, sample: str, **labels: str) -> float | None:
        return self.metrics(name).get((sample, frozenset(labels.items())))

    def converged(self, primary: str, replica: str) -> bool:
        return not differences(self.nodes[primary].root, self.nodes[replica].root)

    def dump_logs(self) -> str:
        return "\n".join(f"===== {n}\n{node.log_text()[-6000:]}" for n, node in
                         self.nodes.items())


def make_cluster(base: Path, members: dict[str, tuple[str, str | None]],
                 pki_members: dict[str, tuple[str, str]] | None = None,
                 extra: dict[str, Any] | None = None) -> Cluster:
    """Write PKI and agent configs for ``members`` (name -> (role, kind));
    ``extra`` adds fields to every member's mirror config."""
    pki = base / "pki"
    classes = {"primary": "failover", "backup": "failover", "arbiter": "arbiter",
               "async": "async"}
    ensure_mirror_pki(pki, MIRROR, pki_members or {
        n: ("127.0.0.1", classes[role]) for n, (role, _) in members.items()})
    cluster = Cluster(base, pki)
    ports = {n: free_port() for n in members}
    primary = next(n for n, (r, _) in members.items() if r == "primary")
    data_path = base / primary / "data"
    for name, (role, kind) in members.items():
        home = base / name
        home.mkdir(parents=True, exist_ok=True)
        root = data_path if role == "primary" else home / "replica"
        if role == "primary":
            root.mkdir(parents=True, exist_ok=True)
        ca, crt, key = member_files(pki, MIRROR, name)
        mirror: dict[str, Any] = {
            "role": role, "kind": kind, "mode": "async", "port": ports[name],
            "listen": "127.0.0.1",
            "paths": [str(data_path)], "exclude": ["*.tmp"], "targets": [str(root)],
            "timeouts": {"heartbeat": 0.2, "qos": 2.0, "arbiter": 3.0},
            "tls": {"ca": str(ca), "cert": str(crt), "key": str(key)},
            "members": {n: {"address": "127.0.0.1", "role": r, "port": ports[n],
                            **({"kind": k} if k else {})}
                        for n, (r, k) in members.items()},
            "hooks": {},
            **(extra or {}),
        }
        if role == "arbiter":
            del mirror["paths"], mirror["targets"]
        api_port = free_port()
        cfg = {"host": name, "api": {"listen": "127.0.0.1", "port": api_port},
               "control_socket": str(home / "run" / "control.sock"),
               "state_dir": str(home / "state"), "mirrors": {MIRROR: mirror}}
        config = home / "agent.yml"
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        cluster.nodes[name] = Node(name, role, config, home / "state", root,
                                   api_port, ports[name], home / "agent.log")
    return cluster


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def factory(members: dict[str, tuple[str, str | None]], **kw: Any) -> Cluster:
        c = make_cluster(tmp_path / f"c{len(made)}", members, **kw)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.stop_all()


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster],
            request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """node1 primary, node2 backup, dr1 async (dr), arb1 arbiter; all started."""
    c = cluster_factory({"node1": ("primary", None), "node2": ("backup", None),
                         "dr1": ("async", "dr"), "arb1": ("arbiter", None)})
    for name in c.nodes:
        c.start(name)
    yield c
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(c.dump_logs())



pytestmark = pytest.mark.integration

RECEIVERS = ("node2", "dr1")


def all_converged(c: Cluster) -> bool:
    return all(c.converged("node1", r) for r in RECEIVERS)


def wait_converged(c: Cluster, what: str) -> None:
    def check() -> bool:
        return all_converged(c)

    try:
        wait_for(check, what, timeout=90)
    except BaseException:
        for r in RECEIVERS:
            print(r, differences(c.nodes["node1"].root, c.nodes[r].root)[:20])
        print(c.dump_logs())
        raise


def test_changes_arrive_identically(cluster: Cluster) -> None:
    c = cluster
    root = c.nodes["node1"].root
    wait_for(lambda: all(c.mirror(r).get("connected") for r in RECEIVERS), "receivers connect")
    # create, and a large file
    (root / "hello.txt").write_text("hello\n")
    big = os.urandom(4 << 20)
    (root / "big.bin").write_bytes(big)
    (root / "gone.tmp").write_text("excluded")
    wait_converged(c, "initial files")
    assert not any((c.nodes[r].root / "gone.tmp").exists() for r in RECEIVERS)
    lsn_before = c.mirror("node1")["lsn"]
    # modify the middle of the large file
    with open(root / "big.bin", "r+b") as f:
        f.seek(2 << 20)
        f.write(b"X" * 5000)
    wait_converged(c, "write in the middle of a large file")
    # only changed blocks ship: far fewer bytes than the file
    shipped = c.mirror("node1")["log_bytes"]
    assert c.mirror("node1")["lsn"] > lsn_before
    assert shipped < 2 * len(big) + (1 << 20)
    # truncate, rename, unlink
    os.truncate(root / "big.bin", 1 << 20)
    os.rename(root / "hello.txt", root / "renamed.txt")
    (root / "doomed").write_text("x")
    wait_converged(c, "truncate and rename")
    os.unlink(root / "doomed")
    # mkdir, nested content, rmdir
    (root / "d1" / "d2").mkdir(parents=True)
    (root / "d1" / "d2" / "f").write_text("nested")
    (root / "empty").mkdir()
    wait_converged(c, "mkdir")
    (root / "empty").rmdir()
    # symlink (inside and pointing out), chmod, mtime
    os.symlink("renamed.txt", root / "link")
    os.symlink("/etc/hostname", root / "abs-link")
    os.chmod(root / "renamed.txt", 0o600)
    os.chmod(root / "d1", 0o750)
    os.utime(root / "big.bin", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    wait_converged(c, "rmdir, symlink, chmod, mtime")
    for r in RECEIVERS:
        replica = c.nodes[r].root
        assert (replica / "renamed.txt").read_text() == "hello\n"
        assert os.readlink(replica / "link") == "renamed.txt"
        assert (replica / "big.bin").stat().st_mtime_ns == 1_500_000_000_000_000_000
        assert not (replica / "empty").exists()
    # status: receivers caught up, acknowledged by the primary
    def caught_up() -> bool:
        p = c.mirror("node1")
        return all(p["peers"][r]["acked_lsn"] == p["lsn"] and p["peers"][r]["connected"]
                   for r in RECEIVERS)

    wait_for(caught_up, "acks reach the primary")
    for r in RECEIVERS:
        m = c.mirror(r)
        assert m["applied_lsn"] == c.mirror("node1")["lsn"]
        assert m["refused"] == 0
    # the arbiter sees both failover members
    arb = c.mirror("arb1")
    wait_for(lambda: all(c.mirror("arb1")["peers"][n]["connected"] for n in ("node1", "node2")),
             "arbiter sees primary and backup")
    assert arb["role"] == "arbiter"


def test_receiver_restart_resumes_without_recopy(cluster: Cluster) -> None:
    c = cluster
    root = c.nodes["node1"].root
    for i in range(50):
        (root / f"f{i}").write_bytes(os.urandom(10_000))
    wait_converged(c, "initial copy")
    wait_for(lambda: c.mirror("node2").get("applied_lsn") == c.mirror("node1").get("lsn"),
             "backup applied everything")
    total = c.mirror("node1")["lsn"]
    assert c.stop("node2") == 0  # SIGTERM: clean shutdown, exit 0
    (root / "while-down").write_text("missed while down")
    os.unlink(root / "f3")
    wait_for(lambda: c.mirror("node1").get("lsn", 0) > total, "primary logs the changes")
    c.start("node2")
    wait_converged(c, "catch-up after restart")
    wait_for(lambda: c.mirror("node2").get("applied_lsn") == c.mirror("node1").get("lsn"),
             "backup applied the tail")
    m = c.mirror("node2")
    missed = c.mirror("node1")["lsn"] - total
    assert m["received_records"] == missed  # exactly the tail, not the tree again
    assert m["resyncs"] == 0
    assert re.search(rf"we are at LSN {total}\b", c.nodes["node2"].log_text())


def _foreign_client_context(cluster: Cluster, tmp_path: Path) -> ssl.SSLContext:
    """A valid-looking member certificate (CN node2, OU failover) from another CA,
    trusting the real CA so that only the server's check can refuse it."""
    other = tmp_path / "other-pki"
    ensure_mirror_pki(other, MIRROR, {"node2": ("127.0.0.1", "failover")})
    _, crt, key = member_files(other, MIRROR, "node2")
    ca, _, _ = member_files(cluster.pki, MIRROR, "node2")
    return client_context(TlsConfig(ca, crt, key))


async def _try_hello(ctx: ssl.SSLContext, port: int, hello: Hello) -> object:
    """Connect, say hello, return what came back (a message or an exception)."""
    try:
        conn = await connect("127.0.0.1", port, ctx)
        await conn.send(hello)
        reply = await conn.recv(10)
        await conn.close()
        return reply
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        return exc


def test_foreign_ca_and_wrong_role_are_refused(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    primary = c.nodes["node1"]
    wait_for(lambda: c.mirror("node1").get("role") == "primary", "primary up")
    # a certificate from another CA: TLS refuses it, the primary logs why
    hello = Hello(MIRROR, "node2", "backup", 1, 0)
    got = asyncio.run(_try_hello(_foreign_client_context(c, tmp_path), primary.port, hello))
    assert not isinstance(got, Hello), got
    wait_for(lambda: "TLS handshake failed" in primary.log_text(), "refusal logged")
    # a valid async certificate claiming the backup role
    cfg = load_config(c.nodes["dr1"].config).mirrors[MIRROR]
    got = asyncio.run(_try_hello(client_context(cfg.tls), primary.port,
                                 Hello(MIRROR, "dr1", "backup", 1, 0)))
    assert isinstance(got, Error) and "does not allow role 'backup'" in got.reason, got
    # a valid certificate claiming another member's name
    got = asyncio.run(_try_hello(client_context(cfg.tls), primary.port,
                                 Hello(MIRROR, "node2", "async", 1, 0)))
    assert isinstance(got, Error) and "claims to be member 'node2'" in got.reason, got
    # an arbiter certificate may not receive data
    arb = load_config(c.nodes["arb1"].config).mirrors[MIRROR]
    got = asyncio.run(_try_hello(client_context(arb.tls), primary.port,
                                 Hello(MIRROR, "arb1", "arbiter", 1, 0)))
    assert isinstance(got, Error) and "not accepted here" in got.reason, got
    log = primary.log_text()
    assert "refused peer" in log and "Traceback" not in log
    # the real members are unaffected
    wait_for(lambda: all(c.mirror(r).get("connected") for r in RECEIVERS), "members connected")


def test_escaping_records_from_a_primary_certificate_are_refused(
    cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    """A (compromised) primary sends records whose paths leave the replica root:
    the first one stops the mirror on the member, nothing after it is applied
    or acknowledged (recovery: tests/integration/test_apply_failures.py)."""
    c = cluster_factory({"node1": ("primary", None), "node2": ("backup", None)})
    replica = c.nodes["node2"].root
    outside = replica.parent / "outside"
    outside.mkdir()
    bad = [
        Op(OpKind.MKDIR, 0, "ok", value=0o755),
        Op(OpKind.WRITE, 0, "../outside/evil", data=b"x"),
        Op(OpKind.WRITE, 0, "/" + str(outside / "evil").lstrip("/"), data=b"x"),
        Op(OpKind.SYMLINK, 0, "out", target=str(outside)),
        Op(OpKind.WRITE, 0, "out/evil", data=b"x"),
        Op(OpKind.RENAME, 0, "ok", target="../outside/moved"),
        Op(OpKind.WRITE, 0, "ok/good", data=b"good"),
    ]
    primary_cfg = load_config(c.nodes["node1"].config).mirrors[MIRROR]
    acked: list[int] = []
    failed: list[ApplyFailed] = []

    async def fake_primary() -> None:
        done = asyncio.Event()

        async def session(conn: Connection) -> None:
            await server_handshake(conn, primary_cfg, Hello(MIRROR, "node1", "primary", 1, 0),
                                   ("backup",))
            await conn.send(Records(1, records=[Record(i + 1, 1, op) for i, op in enumerate(bad)]))
            while True:
                msg = await conn.recv(30)
                if isinstance(msg, Ack):
                    acked.append(msg.lsn)
                elif isinstance(msg, ApplyFailed):
                    failed.append(msg)
                    done.set()
                    return

        server = await serve("127.0.0.1", c.nodes["node1"].port,
                             server_context(primary_cfg.tls), session, "fake-primary", set())
        try:
            await asyncio.wait_for(done.wait(), 60)
        finally:
            server.close()

    c.start("node2")
    asyncio.run(fake_primary())
    assert acked == [1]  # the record before the refused one, and not one more
    assert [(f.lsn, f.resync) for f in failed] == [(2, 0)]
    assert "REFUSED record LSN 2 (WRITE '../outside/evil')" in failed[0].reason
    assert os.listdir(outside) == []
    assert (replica / "ok").is_dir() and not (replica / "ok" / "good").exists()
    assert not (replica / "out").is_symlink()
    m = wait_for(lambda: c.mirror("node2") or None, "node2 answers")
    assert m["refused"] == 1 and m["alive"] is False and m["applied_lsn"] == 1
    assert "REFUSED record LSN 2" in m["error"] and "mirror stopped" in m["error"]


def test_cli_status_and_probe(cluster: Cluster) -> None:
    c = cluster
    wait_for(lambda: c.mirror("node2").get("connected"), "backup connected")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mirrorkit.agent.cli.main", *args],
                              capture_output=True, text=True, timeout=60)

    for name, expected in (("node1", 0), ("node2", 1), ("dr1", 1), ("arb1", 1)):
        got = cli("--config", str(c.nodes[name].config), "probe", "primary", "--mirror", MIRROR)
        assert got.returncode == expected, (name, got.stderr)
    got = cli("status", "--json", "--api-port", str(c.nodes["node2"].api_port))
    assert got.returncode == 0
    assert json.loads(got.stdout)["mirrors"][MIRROR]["role"] == "backup"
    got = cli("--config", str(c.nodes["node1"].config), "status")
    assert got.returncode == 0 and "primary" in got.stdout
    assert cli("--check-config", str(c.nodes["dr1"].config)).returncode == 0
    # no agent: not a primary, a clear error for status
    port = str(free_port())
    nowhere = str(c.base / "no-agent-here")
    assert cli("probe", "primary", "--mirror", MIRROR, "--runtime-dir", nowhere).returncode == 1
    got = cli("status", "--api-port", port)
    assert got.returncode == 1 and "cannot reach" in got.stderr


def test_crashed_receiver_resumes_from_durable_lsn(cluster: Cluster) -> None:
    c = cluster
    root = c.nodes["node1"].root
    wait_for(lambda: c.mirror("node2").get("connected"), "backup connected")
    for i in range(100):
        (root / f"k{i}").write_bytes(os.urandom(20_000))
    # Killed once it has logged part of the stream (a kill before it received
    # anything would make a full resend the right outcome, not a failure).
    wait_for(lambda: c.mirror("node2").get("received_records", 0) > 0, "backup receiving")
    c.stop("node2", signal.SIGKILL)
    for i in range(100, 200):  # the stream goes on while the backup is down
        (root / f"k{i}").write_bytes(os.urandom(20_000))
    c.start("node2")
    wait_converged(c, "convergence after a crash")
    m = c.mirror("node2")
    assert m["resyncs"] == 0 and m["refused"] == 0
    assert m["received_records"] < c.mirror("node1")["lsn"]


def lsn_above(c: Cluster, lsn: int) -> bool:
    return bool(c.mirror("node1").get("lsn", 0) > lsn)


def outrun_the_log(c: Cluster, root: Path, lsn_away: int) -> None:
    """Write batches on the primary until its (small) log no longer holds
    what a member away since ``lsn_away`` has not seen."""
    for i in range(12):  # several batches, so that the log rolls segments
        lsn = c.mirror("node1")["lsn"]
        (root / f"bulk{i}").write_bytes(os.urandom(30_000))
        wait_for(functools.partial(lsn_above, c, lsn), "primary logs a batch")
    wait_for(lambda: c.mirror("node1").get("log_first_lsn", 0) > lsn_away + 1,
             "the primary's log drops what the absent member has not seen")


def test_receiver_behind_the_log_gets_a_full_resync(
    cluster_factory: Callable[..., Cluster],
) -> None:
    c = cluster_factory({"node1": ("primary", None), "node2": ("backup", None),
                         "dr1": ("async", "dr")},
                        extra={"log_max_bytes": 64 * 1024, "log_segment_bytes": 16 * 1024})
    root = c.nodes["node1"].root
    (root / "early").write_text("before")
    (root / "stale-on-replica").write_text("will be deleted while dr1 is away")
    for name in c.nodes:
        c.start(name)
    wait_for(lambda: all(c.converged("node1", r) for r in ("node2", "dr1")), "first copy")
    assert c.stop("dr1") == 0
    lsn_away = c.mirror("node1")["lsn"]
    os.unlink(root / "stale-on-replica")
    outrun_the_log(c, root, lsn_away)
    c.start("dr1")
    wait_for(lambda: c.mirror("dr1").get("resyncs") == 1, "dr1 resyncs")
    (root / "after").write_text("streamed after the resync")
    wait_for(lambda: (c.nodes["dr1"].root / "after").exists(), "streaming resumes")
    assert differences(root, c.nodes["dr1"].root) == []
    # the file deleted while dr1 was away went to quarantine, not into the void
    quarantine = c.nodes["dr1"].state_dir / MIRROR / "quarantine"
    moved = list(quarantine.rglob("stale-on-replica"))
    assert len(moved) == 1 and moved[0].read_text() == "will be deleted while dr1 is away"
    assert "orphan" in c.nodes["dr1"].log_text()
    # ... and both ends count the resync and the quarantined file
    dr1 = {"mirror": MIRROR, "member": "dr1"}
    assert c.metric("dr1", "mirrorkit_resyncs_total", **dr1, result="done") == 1
    assert c.metric("dr1", "mirrorkit_quarantined_files_total", **dr1, reason="orphan") == 1
    wait_for(lambda: c.metric("node1", "mirrorkit_resyncs_total", **dr1, result="done"),
             "the primary counts the resync it sent")
    assert c.converged("node1", "node2")
    wait_for(lambda: c.mirror("dr1").get("applied_lsn") == c.mirror("node1").get("lsn"),
             "dr1 applied everything")

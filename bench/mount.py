"""The ``mount`` capture measured against a plain local directory (issue 9 part 6).

    PYTHONPATH=. .venv/bin/python bench/mount.py                  # ~3 min: local, async
    PYTHONPATH=. .venv/bin/python bench/mount.py --sync           # + the sync mount (~4 min)
    PYTHONPATH=. .venv/bin/python bench/mount.py --quick --output bench/work/mount-quick.md
    PYTHONPATH=. .venv/bin/python bench/mount.py --render-only    # RESULTS.md from mount.json

Targets, side by side in one run:

* **local**: a plain directory on the same file system as the backing stores;
* **async mount**: a real cluster on loopback (``tests/integration``'s
  ``make_cluster``: primary node1, backup node2, arbiter arb1, mutual TLS,
  default failover timings) whose primary and backup have ``capture: mount``
  and a real ``mirrorkit-mountd`` each, as in ``test_mount_failover.py``; the
  application writes on node1's mount. An fsync there returns once the change
  is durable in the primary's log;
* **sync mount** (``--sync``): the same cluster with ``mode: sync`` and
  ``mirrorkit-mountd --sync``: an fsync returns once the backup has it.
  Without ``--sync`` its rows say why they are missing (sync mode merged or
  not, read from mountd's source at the time of the run).

Workloads (the application is this process, one thread): 4 KiB ``pwrite`` +
``fdatasync`` in a loop, the fdatasync timed alone (p50/p99); a sequential write
in 1 MiB blocks and 4 KiB random ``pwrite``\\ s into a preallocated file, each
timed through a final ``fsync`` (so a mount's figure includes making the data
durable in its log, as local includes the disk); create + 4 KiB write + close of
small files; SQLite inserts, one transaction each, ``journal_mode=WAL``,
``synchronous=FULL``. Every workload is capped in time. Rounds run the targets
alternately per workload (local, async, sync, local, async, sync, ...); after
each workload on a mount the bench waits (not timed) until the backup has
applied everything, so the next measurement does not share the CPU with the
last one's replication; that wait is reported as the backup's catch-up time.

Also measured each round: one loopback TCP round trip (64 bytes ping-pong with
an echo process), for the goal "p50 fdatasync on the sync mount <= 2x local +
one round trip"; CPU seconds of mountd, the primary and the backup agent per
workload (from /proc, through to the backup's catch-up). ``--profile`` adds one
pass per mount mode with py-spy on those three processes, after the measured
rounds (it slows what it samples).

Needs root and /dev/fuse (as the mount tests). Writes the section "Mount
capture (issue 9)" of bench/RESULTS.md and the raw rounds to bench/mount.json,
or with ``--output FILE`` the section to FILE only.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))

RESULTS = HERE / "RESULTS.md"
JSON = HERE / "mount.json"
SECTION = "## Mount capture (issue 9)"
MiB = 1024 * 1024
TARGETS = ("local", "async", "sync", "async-paused")
NAMES = {"local": "local directory", "async": "mount, async", "sync": "mount, sync",
         "async-paused": "mount, async, backup paused (diagnosis)"}
NOT_MERGED = "not measured: sync mode not merged at the time of the run"


@dataclass
class Sizes:
    fsyncs: int = 1000
    seq_mib: int = 256
    rand_file_mib: int = 64
    rand_writes: int = 10000
    files: int = 2000
    sqlite_rows: int = 1000
    rtt_pings: int = 2000
    cap_s: float = 3.0  # per workload and target


QUICK = Sizes(fsyncs=200, seq_mib=32, rand_file_mib=8, rand_writes=1000, files=300,
              sqlite_rows=200, rtt_pings=500, cap_s=2.0)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_seconds(pid: int | None) -> float:
    """User+system CPU of a process (all threads) so far; 0 when it is gone."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def q(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100)[pct - 1] if len(values) > 1 else values[0]


# -- workloads: (root, sizes, settle) -> (figures, ops done) -----------------------------
# ``settle()`` waits (untimed) until the mirror has caught up: used between a
# workload's preparation and its timed part.

Settle = Callable[[], object]


def w_fsync(root: Path, s: Sizes, settle: Settle) -> tuple[dict[str, Any], int]:
    data = os.urandom(4096)
    p = root / "fsync.bin"
    sync_lat: list[float] = []
    write_lat: list[float] = []
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        start = time.perf_counter()
        for i in range(s.fsyncs):
            t0 = time.perf_counter()
            os.pwrite(fd, data, i * 4096)
            t1 = time.perf_counter()
            os.fdatasync(fd)
            t2 = time.perf_counter()
            write_lat.append(t1 - t0)
            sync_lat.append(t2 - t1)
            if t2 - start > s.cap_s:
                break
        wall = time.perf_counter() - start
    finally:
        os.close(fd)
    os.unlink(p)
    n = len(sync_lat)
    return {"p50_ms": q(sync_lat, 50) * 1e3, "p99_ms": q(sync_lat, 99) * 1e3,
            "write_p50_ms": q(write_lat, 50) * 1e3, "per_s": n / wall, "n": n}, n


def w_seq(root: Path, s: Sizes, settle: Settle) -> tuple[dict[str, Any], int]:
    block = os.urandom(MiB)
    p = root / "seq.bin"
    t0 = time.perf_counter()
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    n = 0
    try:
        for n in range(1, s.seq_mib + 1):  # noqa: B007
            os.write(fd, block)
            if time.perf_counter() - t0 > s.cap_s:
                break
        os.fsync(fd)
    finally:
        os.close(fd)
    dt = time.perf_counter() - t0
    settle()
    os.unlink(p)
    return {"mib_s": n / dt, "n": n, "s": dt}, n


def w_rand(root: Path, s: Sizes, settle: Settle) -> tuple[dict[str, Any], int]:
    p = root / "rand.bin"
    block = os.urandom(MiB)
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(s.rand_file_mib):
            os.write(fd, block)
        os.fsync(fd)
        settle()  # the 64 MiB preparation replicated before the clock starts
        rng = random.Random(9)
        small = os.urandom(4096)
        blocks = s.rand_file_mib * MiB // 4096
        t0 = time.perf_counter()
        n = 0
        for n in range(1, s.rand_writes + 1):
            os.pwrite(fd, small, rng.randrange(blocks) * 4096)
            if n % 256 == 0 and time.perf_counter() - t0 > s.cap_s:
                break
        os.fsync(fd)
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
    settle()
    os.unlink(p)
    return {"per_s": n / dt, "mib_s": n * 4096 / MiB / dt, "n": n}, n


def w_files(root: Path, s: Sizes, settle: Settle) -> tuple[dict[str, Any], int]:
    d = root / "small"
    d.mkdir()
    data = os.urandom(4096)
    t0 = time.perf_counter()
    n = 0
    for n in range(1, s.files + 1):
        fd = os.open(d / f"f{n:05d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
        if n % 64 == 0 and time.perf_counter() - t0 > s.cap_s:
            break
    dt = time.perf_counter() - t0
    settle()
    shutil.rmtree(d)
    return {"per_s": n / dt, "n": n}, n


def w_sqlite(root: Path, s: Sizes, settle: Settle) -> tuple[dict[str, Any], int]:
    p = root / "db.sqlite"
    con = sqlite3.connect(p, isolation_level=None)
    try:
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        con.execute("PRAGMA synchronous=FULL")
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        payload = os.urandom(100)
        t0 = time.perf_counter()
        n = 0
        for n in range(1, s.sqlite_rows + 1):
            con.execute("INSERT INTO t (v) VALUES (?)", (payload,))
            if n % 32 == 0 and time.perf_counter() - t0 > s.cap_s:
                break
        dt = time.perf_counter() - t0
        ok = con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()
    settle()
    for suffix in ("", "-wal", "-shm"):
        Path(str(p) + suffix).unlink(missing_ok=True)
    return {"per_s": n / dt, "n": n, "journal_mode": mode, "integrity": ok}, n


WORKLOADS: list[tuple[str, Callable[[Path, Sizes, Settle], tuple[dict[str, Any], int]]]] = [
    ("fsync", w_fsync), ("seq", w_seq), ("rand", w_rand), ("files", w_files),
    ("sqlite", w_sqlite),
]


# -- one loopback round trip ------------------------------------------------------------

_ECHO = """
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while (b := c.recv(64)):
    c.sendall(b)
"""


def loopback_rtt(pings: int) -> dict[str, float]:
    """64-byte TCP ping-pong with an echo process on 127.0.0.1 (TCP_NODELAY)."""
    echo = subprocess.Popen([sys.executable, "-c", _ECHO], stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None
        port = int(echo.stdout.readline())
        lat: list[float] = []
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            msg = b"x" * 64
            for _ in range(pings):
                t0 = time.perf_counter()
                c.sendall(msg)
                got = 0
                while got < len(msg):
                    got += len(c.recv(64))
                lat.append(time.perf_counter() - t0)
        return {"p50_us": q(lat, 50) * 1e6, "p99_us": q(lat, 99) * 1e6}
    finally:
        echo.kill()
        echo.wait(10)


# -- the clusters ---------------------------------------------------------------------


def sync_merged() -> bool:
    """Whether this checkout's mountd and config accept sync mode (they
    refuse it, saying "not available yet" / "does not provide yet", until
    the agent reports the backup's acknowledgements to the mount)."""
    mountd = (REPO / "mirrorkit/agent/capture/mount/mountd.py").read_text()
    config = (REPO / "mirrorkit/agent/config.py").read_text()
    return "not available yet" not in mountd and "does not provide yet" not in config


class MountCluster:
    """node1 primary, node2 backup, arb1 arbiter on loopback, node1 and node2
    with ``capture: mount`` over a real mountd each; ``mnt`` is node1's mount."""

    def __init__(self, base: Path, sync: bool) -> None:
        import yaml
        from four_cluster import DEFAULT_TIMEOUTS  # type: ignore[import-not-found]
        from mountd_proc import Mountd  # type: ignore[import-not-found]
        from test_loopback import MIRROR, make_cluster  # type: ignore[import-not-found]

        self.sync = sync
        self.mirror = MIRROR
        self.mountds: dict[str, Any] = {}
        self.mnt: Path = base / "mountd-node1" / "mnt"  # Mountd's layout (mountd_proc.py)
        members = {"node1": ("primary", None), "node2": ("backup", None),
                   "arb1": ("arbiter", None)}
        self.c = make_cluster(base, members, extra={
            "timeouts": DEFAULT_TIMEOUTS, "mode": "sync" if sync else "async"})
        try:
            for name in ("node1", "node2"):
                node = self.c.nodes[name]
                m = Mountd(base / f"mountd-{name}", backing=node.root, sync=sync)
                cfg = yaml.safe_load(node.config.read_text())
                cfg["mirrors"][MIRROR]["capture"] = "mount"
                cfg["mirrors"][MIRROR]["mount_socket"] = str(m.socket)
                node.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
                m.start()
                self.mountds[name] = m
            for name in ("arb1", "node2", "node1"):  # the primary last: it finds its peers up
                self.c.start(name)
            self._wait(lambda: self.c.code("node1", f"/primary?mirror={MIRROR}") == 200,
                       "node1 the writable primary", 60)
            self._wait(lambda: self.c.mirror("node2").get("connected"), "node2 connected", 60)
            self._wait(self._writable, "node1's mount writable", 60)
        except BaseException:
            self.close()
            raise
        assert self.mnt == self.mountds["node1"].mnt
        self.work = self.mnt / "bench"
        self.work.mkdir(exist_ok=True)
        self.settle()
        self.idle_cpu = self.measure_idle(2.0)

    def measure_idle(self, seconds: float) -> dict[str, float]:
        """CPU seconds per second each process burns with no application I/O."""
        pids = self.pids()
        before = {k: cpu_seconds(p) for k, p in pids.items()}
        time.sleep(seconds)
        return {k: (cpu_seconds(p) - before[k]) / seconds for k, p in pids.items()}

    def _wait(self, pred: Callable[[], object], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{'sync' if self.sync else 'async'} cluster: timed out "
                                   f"after {timeout:.0f} s waiting for {what}\n"
                                   + self.c.dump_logs()[-4000:])
            time.sleep(0.05)

    def _writable(self) -> bool:
        try:
            (self.mnt / ".w").write_bytes(b"")
            (self.mnt / ".w").unlink()
            return True
        except OSError:
            return False

    def pids(self) -> dict[str, int | None]:
        def pid(p: Any) -> int | None:
            return p.pid if p is not None and p.poll() is None else None
        return {"mountd": pid(self.mountds["node1"].proc),
                "primary": pid(self.c.nodes["node1"].proc),
                "backup": pid(self.c.nodes["node2"].proc)}

    def primary_lsn(self) -> int:
        return int(self.c.mirror("node1").get("lsn") or 0)

    def settle(self, timeout: float = 120) -> float:
        """Until the backup has applied everything done on the mount so far:
        an fsync on the mount returns once the primary's log has every change
        before it, so the primary's LSN read after it covers them all."""
        t0 = time.monotonic()
        marker = self.mnt / ".settle"
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        lsn = self.c.mirror("node1").get("lsn")
        if not isinstance(lsn, int):
            raise RuntimeError(f"node1's /status has no lsn: {self.c.mirror('node1')}")

        def caught_up() -> bool:
            applied = self.c.mirror("node2").get("applied_lsn")
            return isinstance(applied, int) and applied >= lsn
        self._wait(caught_up, f"the backup to apply LSN {lsn}", timeout)
        took = time.monotonic() - t0
        marker.unlink()
        return took

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.c.stop_all()
        for m in self.mountds.values():
            with contextlib.suppress(Exception):
                m.stop()


def trace(c: MountCluster, what: str, count: int) -> list[str]:
    """``count`` x (4 KiB pwrite + fdatasync), or ``count`` SQLite inserts
    (WAL, synchronous=FULL, after the table exists), on the mount, then the
    records the primary logged for them, read back from its log segments: how
    the changes were cut into batches (each batch starts with a mount MARK)."""
    from mirrorkit.agent.log.records import RecordCorrupt
    from mirrorkit.agent.log.segments import decode_all

    if what == "sqlite":
        con = sqlite3.connect(c.work / "trace.db", isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        c.settle()
        lsn0 = c.primary_lsn()
        for _ in range(count):
            con.execute("INSERT INTO t (v) VALUES (?)", (b"v" * 100,))
        lsn1 = c.primary_lsn()
        con.close()
    else:
        lsn0 = c.primary_lsn()
        fd = os.open(c.work / "trace.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for i in range(count):
                os.pwrite(fd, b"t" * 4096, i * 4096)
                os.fdatasync(fd)
        finally:
            os.close(fd)
        lsn1 = c.primary_lsn()
    out = []
    for seg in sorted((c.c.nodes["node1"].state_dir).rglob("*")):
        if not seg.is_file() or seg.stat().st_size == 0:
            continue
        try:
            records = decode_all(seg.read_bytes())
        except (RecordCorrupt, ValueError):
            continue  # not a log segment (state files)
        out += [f"{r.lsn} {r.op.kind.name} {r.op.path or r.op.target}"
                + (f" @{r.op.value} +{len(r.op.data)}" if r.op.kind.name == "WRITE" else "")
                for r in records if lsn0 < r.lsn <= lsn1]
    return out


# -- profiling ------------------------------------------------------------------------


def _frame(f: str) -> str:
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", f.strip())
    if not m:
        return f.strip()
    func, path = m.groups()
    path = path[path.index("mirrorkit"):] if "mirrorkit/" in path else os.path.basename(path)
    return f"{func} ({path})"


# Leaf frames that are a thread blocked, not working: py-spy's idle detection
# (--nonblocking reads the thread state without stopping it) misses some.
WAITING = ("EpollSelector.select", "Condition.wait", "Event.wait", "_worker", "_recv_exact",
           "socket.accept", "_accept", "sleep")


def summarise_profile(path: Path, top: int = 10) -> dict[str, Any]:
    waiting = 0
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        cnt = int(n)
        parts = [f for f in stack.split(";") if f]
        frames = [_frame(f) for f in parts
                  if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += cnt
        if frames[-1].split(" (")[0] in WAITING:
            waiting += cnt
            continue
        self_c[frames[-1]] += cnt
        for f in set(frames):
            if "mirrorkit/" in f:
                incl[f] += cnt
    return {"samples": total, "waiting": waiting, "self": self_c.most_common(top),
            "inclusive": incl.most_common(top)}


@contextlib.contextmanager
def profiled(pids: dict[str, int | None], out: Path, rate: int) -> Iterator[dict[str, Any]]:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    summary: dict[str, Any] = {}
    procs: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
    if not os.access(exe, os.X_OK):
        summary["error"] = "py-spy not found (pip install py-spy: it is in the dev extras)"
        yield summary
        return
    for label, pid in pids.items():
        if pid is None:
            continue
        raw = out / f"profile-{label}.txt"
        log = open(out / f"py-spy-{label}.log", "wb")  # noqa: SIM115 - the child keeps it
        procs.append((label, raw, subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(rate), "--nonblocking",
             "--format", "raw", "--output", str(raw)], stdout=log, stderr=log)))
    time.sleep(1.0)  # py-spy attaches
    try:
        yield summary
    finally:
        for label, raw, p in procs:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
            summary[label] = summarise_profile(raw) if raw.exists() else {"samples": 0}


# -- running ------------------------------------------------------------------------


def run_workload(name: str, fn: Callable[..., tuple[dict[str, Any], int]], target: str,
                 root: Path, s: Sizes, cluster: MountCluster | None,
                 pause_backup: bool = False) -> dict[str, Any]:
    """One workload on one target. ``pause_backup``: the backup agent is
    stopped (SIGSTOP) for the timed part, so its CPU is not shared with the
    primary's (diagnosis: on a real deployment it runs on another host)."""
    root.mkdir(parents=True, exist_ok=True)
    caught: list[float] = []
    pids = cluster.pids() if cluster is not None else {}
    backup = pids.get("backup")

    def settle() -> None:
        if cluster is not None and not pause_backup:
            caught.append(cluster.settle())

    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    log0 = cluster.primary_lsn() if cluster is not None else 0
    t0 = time.monotonic()
    res: dict[str, Any] = {"load_before": loadavg()}
    try:
        if pause_backup and backup is not None:
            os.kill(backup, signal.SIGSTOP)
        try:
            fig, n = fn(root, s, settle)
        finally:
            if pause_backup and backup is not None:
                os.kill(backup, signal.SIGCONT)
        res.update(fig)
        if cluster is not None:
            caught.append(cluster.settle())
    except (OSError, sqlite3.Error, RuntimeError) as exc:
        n = 0
        res["error"] = f"{type(exc).__name__}: {exc}"[:300]
    if cluster is not None:
        wall = time.monotonic() - t0
        # CPU net of what the cluster burns idle (heartbeats, lease renewals).
        res["cpu_s"] = {k: max(0.0, cpu_seconds(p) - cpu0[k] - cluster.idle_cpu[k] * wall)
                        for k, p in pids.items()}
        if n:
            res["cpu_us_per_op"] = {k: v / n * 1e6 for k, v in res["cpu_s"].items()}
            log1 = cluster.primary_lsn()
            # Includes the workload's untimed preparation and clean-up (rand's
            # 64 MiB file, the unlinks) and the bench's settle markers.
            res["records_per_op"] = (log1 - log0) / n
        res["catch_up_s"] = caught[-1] if caught else None
    res["load_after"] = loadavg()
    print(f"  {target:5} {name:6} " + json.dumps(
        {k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()
         if k not in ("load_before", "load_after")}), flush=True)
    return res


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and range of every numeric figure over the rounds without error."""
    ok = [r for r in rounds if "error" not in r]
    out: dict[str, Any] = {"rounds": len(ok)}
    if not ok:
        out["error"] = rounds[0].get("error") if rounds else "no rounds"
        return out
    for k, v in ok[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = [r[k] for r in ok if isinstance(r.get(k), (int, float))]
            out[k] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
        elif k in ("cpu_s", "cpu_us_per_op"):
            out[k] = {p: statistics.median(r[k][p] for r in ok if k in r) for p in v}
        elif k not in ("load_before", "load_after"):
            out[k] = sorted({str(r.get(k)) for r in ok})
    out["load_before"] = rounds[0]["load_before"]
    out["load_after"] = rounds[-1]["load_after"]
    return out


# -- rendering ------------------------------------------------------------------------


def _m(fig: dict[str, Any] | None, key: str, fmt: str, rng: bool = True) -> str:
    if not fig:
        return "—"
    if "error" in fig:
        return "error"
    v = fig.get(key)
    if not isinstance(v, dict):
        return "—"
    text = format(v["median"], fmt)
    if rng and fig.get("rounds", 1) > 1:
        text += f" ({format(v['min'], fmt)}-{format(v['max'], fmt)})"
    return text


def _med(fig: dict[str, Any] | None, key: str) -> float | None:
    if not fig or "error" in fig or not isinstance(fig.get(key), dict):
        return None
    return float(fig[key]["median"])


def goals(run: dict[str, Any]) -> list[str]:
    res = run["results"]
    out = []
    rtt = run["rtt"]["p50_us"]["median"] / 1e3
    local = _med(res["local"].get("fsync"), "p50_ms")
    sync = _med(res.get("sync", {}).get("fsync"), "p50_ms")
    if local is not None and sync is not None:
        bound = 2 * local + rtt
        out.append(f"- p50 fdatasync on the sync mount ≤ 2 x local + one round trip: "
                   f"{sync:.2f} ms against 2 x {local:.2f} + {rtt:.3f} = {bound:.2f} ms: "
                   f"**{'met' if sync <= bound else 'not met'}** ({sync / bound:.1f}x the bound)")
    else:
        out.append("- p50 fdatasync on the sync mount ≤ 2 x local + one round trip: "
                   f"**{run.get('sync_reason') or 'not measured'}**")
    for key, what, unit in (("seq", "sequential write", "mib_s"), ("rand", "4 KiB random write",
                                                                    "per_s")):
        lo = _med(res["local"].get(key), unit)
        am = _med(res.get("async", {}).get(key), unit)
        if lo and am is not None:
            paused = _med(res.get("async-paused", {}).get(key), unit)
            out.append(f"- async mount {what} throughput ≥ 50% of local: {100 * am / lo:.0f}%: "
                       f"**{'met' if am >= 0.5 * lo else 'not met'}**"
                       + (f" (backup paused: {100 * paused / lo:.0f}%)" if paused else ""))
    for key, what in (("files", "small-file creates"), ("sqlite", "SQLite inserts")):
        lo = _med(res["local"].get(key), "per_s")
        am = _med(res.get("async", {}).get(key), "per_s")
        if lo and am is not None:
            out.append(f"- (same measure, not a goal of the issue) async mount {what}: "
                       f"{100 * am / lo:.0f}% of local")
    return out


def render(run: dict[str, Any]) -> str:
    res = run["results"]
    out = [SECTION, "", "Produced by:", "", f"    {run['command']}", ""]
    out.append(f"Figures are medians of {run['rounds']} rounds with their range (min-max) in "
               "brackets; every round runs every target for one workload before the next "
               f"workload ({', '.join(run.get('order', ['local', 'async']) * 2)}, …). "
               "Raw rounds: bench/mount.json.")
    out.append("")
    out.append(f"- date: {run['date']}; duration {run['duration_s'] / 60:.1f} min; `nproc` = "
               f"{run['nproc']}; kernel {run['kernel']}; Python {run['python']}; "
               f"commit {run['commit']}; file system of local and backing stores: {run['fs']}")
    out.append(f"- load average (1/5/15 min) before: {run['load_before']}; after: "
               f"{run['load_after']}" + (f". {run['load_note']}" if run.get("load_note") else ""))
    out.append(f"- sizes: {run['sizes']}")
    out.append("- mounts: a real primary (node1), backup (node2) and arbiter (arb1) on "
               "127.0.0.1, mutual TLS, heartbeat 0.25 s, qos 1 s, arbiter 2 s; node1 and node2 "
               "with `capture: mount` over a real `mirrorkit-mountd` each; the application "
               "writes on node1's mount. Async: fsync returns once the change is in the "
               "primary's log (fdatasync'ed); sync: once the backup acknowledged it.")
    out.append(f"- one loopback round trip (64-byte TCP ping-pong, TCP_NODELAY, median of the "
               f"rounds' p50 / p99): {run['rtt']['p50_us']['median']:.0f} / "
               f"{run['rtt']['p99_us']['median']:.0f} µs")
    out.append("")
    out.append("| target | fdatasync p50 ms | fdatasync p99 ms | seq write MiB/s | "
               "4 KiB random writes/s | small files/s | SQLite WAL FULL inserts/s | "
               "load before → after |")
    out.append("|---|---|---|---|---|---|---|---|")
    names = NAMES
    for t in TARGETS:
        r = res.get(t)
        if not r and t == "async-paused":
            continue  # a diagnosis, only with --diagnose
        if not r:
            reason = run.get("sync_reason") if t == "sync" else "not measured"
            out.append(f"| {names[t]} | {reason} |||||||")
            continue
        figs = [r.get(k) for k, _ in WORKLOADS]
        loads = [f for f in figs if f and "load_before" in f]
        load = f"{loads[0]['load_before']} → {loads[-1]['load_after']}" if loads else "—"
        out.append(f"| {names[t]} | {_m(r.get('fsync'), 'p50_ms', '.2f')} "
                   f"| {_m(r.get('fsync'), 'p99_ms', '.2f')} "
                   f"| {_m(r.get('seq'), 'mib_s', ',.0f')} | {_m(r.get('rand'), 'per_s', ',.0f')} "
                   f"| {_m(r.get('files'), 'per_s', ',.0f')} "
                   f"| {_m(r.get('sqlite'), 'per_s', ',.0f')} | {load} |")
    out.append("")
    mounts = [t for t in ("async", "sync", "async-paused") if res.get(t)]
    if mounts:
        out.append("CPU per application op (median µs, net of the cluster's idle CPU, from "
                   "the start of the workload until the backup caught up: mountd · primary "
                   "agent · backup agent; an op is one write+fdatasync, 1 MiB write, 4 KiB "
                   "pwrite, file or insert), the pwrite's p50 in the fdatasync loop, and the "
                   "backup's catch-up after the application's last call returned:")
        out.append("")
        out.append("| target | " + " | ".join(k for k, _ in WORKLOADS) + " | pwrite p50 ms |")
        out.append("|---|" + "---|" * (len(WORKLOADS) + 1))
        rec = res["async"] if res.get("async") else None
        if rec:
            out.append("| log records per op (async; with the untimed preparation, "
                       "clean-up and settle markers) | " + " | ".join(
                           _m(rec.get(k), "records_per_op", ".1f", rng=False)
                           for k, _ in WORKLOADS) + " | |")
        for t in mounts:
            cells = []
            for k, _ in WORKLOADS:
                f = res[t].get(k) or {}
                cpu = f.get("cpu_us_per_op")
                if not cpu:
                    cells.append("—")
                    continue
                cu = _med(f, "catch_up_s")
                cells.append(" · ".join(f"{cpu[p]:,.0f}" for p in ("mountd", "primary", "backup"))
                             + (f"; catch-up {cu:.2f} s" if cu is not None else ""))
            cells.append(_m(res[t].get("fsync"), "write_p50_ms", ".2f", rng=False))
            out.append(f"| {names[t]} | " + " | ".join(cells) + " |")
        lo = _m(res["local"].get("fsync"), "write_p50_ms", ".3f", rng=False)
        out.append("")
        out.append(f"(local pwrite p50 in the same loop: {lo} ms.)")
        out.append("")
    errors = [(t, k, str(v.get("error"))) for t in TARGETS for k, v in (res.get(t) or {}).items()
              if isinstance(v, dict) and "error" in v]
    errors += [(t, k, e) for t, per in run.get("errors", {}).items() for k, e in per]
    for t, k, e in errors:
        out.append(f"- error, {t} {k}: {e}")
    capped = [(t, k) for t in TARGETS for k in ("seq", "rand", "files", "sqlite", "fsync")
              if isinstance((res.get(t) or {}).get(k), dict)
              and isinstance(res[t][k].get("n"), dict)
              and res[t][k]["n"]["min"] < run["full_counts"][k]]
    if capped:
        out.append("- stopped at the per-workload time cap in at least one round (figure over "
                   "what ran): " + ", ".join(f"{t} {k}" for t, k in capped))
    integ = sorted({i for t in TARGETS for i in ((res.get(t) or {}).get("sqlite") or {})
                    .get("integrity", [])})
    if integ:
        out.append(f"- SQLite integrity_check: {', '.join(integ)}")
    out.append("")
    out.append("Goals (issue 9 part 6):")
    out.append("")
    out.extend(goals(run))
    out.append("")
    if run.get("profiles"):
        out.append(f"Profile: {run['profile_note']}")
        out.append("")
        for mode, per in run["profiles"].items():
            if "error" in per:
                out.append(f"- {mode}: {per['error']}")
                continue
            for label, prof in per.items():
                tot = max(prof.get("samples", 0), 1)
                out.append(f"{mode} mount, {label} ({prof.get('samples', 0):,} samples, "
                           f"idle excluded; of them {100 * prof.get('waiting', 0) / tot:.0f}% "
                           "blocked in select/recv/Condition.wait/an idle pool thread, "
                           "left out of the self column):")
                out.append("")
                out.append("| top self time | share | mirrorkit functions, inclusive | share |")
                out.append("|---|---|---|---|")
                selfs, incl = prof.get("self", []), prof.get("inclusive", [])
                for i in range(max(len(selfs), len(incl))):
                    a = selfs[i] if i < len(selfs) else ("", 0)
                    b = incl[i] if i < len(incl) else ("", 0)
                    out.append(f"| {'`' + a[0] + '`' if a[0] else ''} | "
                               f"{100 * a[1] / tot:.0f}% | {'`' + b[0] + '`' if b[0] else ''} | "
                               f"{f'{100 * b[1] / tot:.0f}%' if b[0] else ''} |")
                out.append("")
    out.append("Reading: bench/mount-notes.md.")
    out.append("")
    return "\n".join(out)


def write_section(text: str) -> None:
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        nxt = old.find("\n## ", start + len(SECTION))
        end = nxt if nxt >= 0 else len(old)
        # Hand-written follow-up subsections (other commands) survive a re-render.
        keep = old.find("\n### Follow-up", start, end)
        kept = old[keep:end].strip("\n") + "\n\n" if keep >= 0 else ""
        new = old[:start] + text.rstrip("\n") + "\n\n" + kept + old[end + 1:]
    RESULTS.write_text(new.rstrip("\n") + "\n")


def _commit() -> str:
    cp = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %s"],
                        capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "mirrorkit"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return (cp.stdout.strip()[:60] or "?") + (" (mirrorkit/ modified)" if dirty else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", type=Path, default=None,
                    help="write the section to this file instead of into bench/RESULTS.md "
                         "(and no bench/mount.json)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every target (default 3)")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--sync", action="store_true",
                    help="also measure a mount in mode: sync (needs sync mode merged)")
    ap.add_argument("--diagnose", action="store_true",
                    help="also run the async mount with its backup agent paused (SIGSTOP) "
                         "during each timed workload: what the primary's side costs alone")
    ap.add_argument("--trace-fsyncs", type=int, default=0, metavar="N",
                    help="only: N x (pwrite + fdatasync) on an async mount, then print the "
                         "primary's log records for them (how changes become batches)")
    ap.add_argument("--trace-sqlite", type=int, default=0, metavar="N",
                    help="only: the same for N SQLite inserts (WAL, synchronous=FULL)")
    ap.add_argument("--profile", action="store_true",
                    help="after the rounds, one pass per mount mode with py-spy on mountd, "
                         "the primary and the backup")
    ap.add_argument("--profile-rate", type=int, default=100, help="py-spy samples/s")
    ap.add_argument("--work", type=Path, default=HERE / "work" / "mount",
                    help="scratch directory (removed first; local and backing stores)")
    ap.add_argument("--render-only", action="store_true",
                    help="re-render the section from bench/mount.json")
    a = ap.parse_args()
    if a.render_only:
        try:
            saved = json.loads(JSON.read_text())
        except (OSError, ValueError) as exc:
            print(f"cannot read {JSON}: {exc}", file=sys.stderr)
            return 2
        write_section(render(saved))
        return 0
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("bench/mount.py needs root and /dev/fuse (the mount is a FUSE file system)",
              file=sys.stderr)
        return 2
    if not 1 <= a.rounds <= 20:
        print(f"--rounds must be between 1 and 20, not {a.rounds}", file=sys.stderr)
        return 2
    if a.sync and not sync_merged():
        print("--sync: this checkout's mountd/config still refuse sync mode ('not available "
              "yet'); run without --sync, or after sync mode is merged", file=sys.stderr)
        return 2
    if a.trace_fsyncs or a.trace_sqlite:
        shutil.rmtree(a.work, ignore_errors=True)
        traced = MountCluster(a.work / "cluster-trace", sync=a.sync)
        try:
            what, n = ("sqlite", a.trace_sqlite) if a.trace_sqlite else ("fsync", a.trace_fsyncs)
            print("\n".join(trace(traced, what, min(n, 1000))))
        finally:
            traced.close()
        return 0
    s = QUICK if a.quick else Sizes()
    modes = ["async"] + (["sync"] if a.sync else [])
    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    t_start = time.time()
    run: dict[str, Any] = {
        "command": "PYTHONPATH=. .venv/bin/python bench/mount.py"
                   + (" --quick" if a.quick else "") + (" --sync" if a.sync else "")
                   + (f" --rounds {a.rounds}" if a.rounds != 3 else "")
                   + (" --diagnose" if a.diagnose else "")
                   + (" --profile" if a.profile else "")
                   + (f" --output {a.output}" if a.output else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": os.cpu_count(), "kernel": os.uname().release,
        "python": sys.version.split()[0], "commit": _commit(),
        "fs": subprocess.run(["df", "--output=fstype,source", str(a.work)], capture_output=True,
                             text=True, check=False).stdout.split()[-2:],
        "load_before": loadavg(), "rounds": a.rounds,
        "sizes": (f"{s.fsyncs} x (4 KiB pwrite + fdatasync); seq {s.seq_mib} MiB in 1 MiB "
                  f"writes + fsync; {s.rand_writes} random 4 KiB pwrites into a "
                  f"{s.rand_file_mib} MiB file + fsync; {s.files} x 4 KiB new files; "
                  f"{s.sqlite_rows} SQLite inserts; cap {s.cap_s:g} s per workload"),
        "full_counts": {"fsync": s.fsyncs, "seq": s.seq_mib, "rand": s.rand_writes,
                        "files": s.files, "sqlite": s.sqlite_rows},
        "sync_reason": None if a.sync else (
            NOT_MERGED if not sync_merged() else "not measured: run without --sync"),
    }
    run["fs"] = " ".join(run["fs"])
    clusters: dict[str, MountCluster] = {}
    order = ["local", *modes, *(["async-paused"] if a.diagnose else [])]
    run["order"] = order
    per_round: dict[str, dict[str, list[dict[str, Any]]]] = {
        t: {k: [] for k, _ in WORKLOADS} for t in order}
    rtts: list[dict[str, float]] = []
    try:
        for mode in modes:
            print(f"starting the {mode} cluster …", flush=True)
            clusters[mode] = MountCluster(a.work / f"cluster-{mode}", sync=mode == "sync")
        local = a.work / "local"
        for i in range(a.rounds):
            rtts.append(loopback_rtt(s.rtt_pings))
            print(f"round {i + 1}: loopback rtt {rtts[-1]}", flush=True)
            for name, fn in WORKLOADS:
                for t in order:
                    c = clusters.get(t.split("-")[0])
                    root = local if c is None else c.work
                    per_round[t][name].append(run_workload(name, fn, t, root, s, c,
                                                           pause_backup=t == "async-paused"))
        if a.profile:
            run["profiles"] = {}
            run["profile_note"] = (f"py-spy record --rate {a.profile_rate} --nonblocking on "
                                   "each process during one extra pass of all workloads per "
                                   "mount mode, after the measured rounds; leaf frames (self) "
                                   "and mirrorkit functions on the stack (inclusive)")
            for mode in modes:
                c = clusters[mode]
                out = a.work / f"profile-{mode}"
                out.mkdir()
                print(f"profiling the {mode} mount …", flush=True)
                with profiled(c.pids(), out, a.profile_rate) as summary:
                    for name, fn in WORKLOADS:
                        run_workload(name, fn, f"{mode}*", c.work, s, c)
                run["profiles"][mode] = summary
    finally:
        for c in clusters.values():
            c.close()
    run["load_after"] = loadavg()
    run["duration_s"] = time.time() - t_start
    # "High": a 1-minute load at or above the core count (the bench itself adds ~1).
    if max(float(run["load_before"].split()[0]),
           float(run["load_after"].split()[0])) >= (os.cpu_count() or 1):
        run["load_note"] = ("**The machine was shared with other engineers' runs**: the load "
                            "average was high; read the figures as noisy")
    run["rtt"] = {k: {"median": statistics.median(r[k] for r in rtts),
                      "min": min(r[k] for r in rtts), "max": max(r[k] for r in rtts)}
                  for k in ("p50_us", "p99_us")}
    run["results"] = {t: {k: median_of(v) for k, v in per.items()} for t, per in per_round.items()}
    run["per_round"] = per_round
    text = render(run)
    if a.output:
        a.output.parent.mkdir(parents=True, exist_ok=True)
        a.output.write_text(text)
    else:
        JSON.write_text(json.dumps(run, indent=1) + "\n")
        write_section(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

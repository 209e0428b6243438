#!/usr/bin/env python3
"""mirrorkit benchmarks, each side by side with its peer, in one run (issue #3 part 9).

    .venv/bin/python bench/run.py            # full sizes, writes bench/RESULTS.md
    .venv/bin/python bench/run.py --quick    # small sizes (smoke run, minutes)
    .venv/bin/python bench/run.py --only lag # one benchmark (initial, resync, lag, burst)

Everything runs on this machine, traffic on 127.0.0.1 only: real agents as
processes with real TLS (as in tests/integration/test_loopback.py), an rsync
daemon on loopback, lsyncd. Data, agent state and logs live under bench/work/
(git-ignored); data dirs are removed at the end, even on failure or when the
overall time bound (--max-minutes) is hit. Logs and profiles of the last run
are kept in bench/work/last/.

These are measurements, never pass/fail thresholds (bench/README.md).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import ctypes.util
import datetime
import hashlib
import json
import os
import random
import re
import select
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / "work"
LAST = WORK / "last"
RESULTS = BENCH / "RESULTS.md"
MIRROR = "bench"
MiB = 1 << 20
BLOCK = 64 * 1024

sys.path.insert(0, str(REPO))


class OutOfTime(Exception):
    """The overall time bound was reached."""


# --------------------------------------------------------------------------- processes


class Runner:
    """Owns every child process and the overall deadline."""

    def __init__(self, max_seconds: float) -> None:
        self.deadline = time.monotonic() + max_seconds
        self.procs: list[subprocess.Popen[bytes]] = []

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check(self) -> None:
        if self.remaining() <= 0:
            raise OutOfTime("overall time bound reached")

    def spawn(self, args: list[str], log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as f:
            f.write(f"--- {' '.join(shlex.quote(a) for a in args)}\n".encode())
            f.flush()
            p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, cwd=cwd,
                                 env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
                                 start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM,
             wait: float = 15) -> None:
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)  # its own session: only what we started
            except ProcessLookupError:
                pass
            try:
                p.wait(wait)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(10)
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in list(reversed(self.procs)):
            self.stop(p, wait=5)


def wait_until(run: Runner, pred: Callable[[], Any], timeout: float,
               interval: float = 0.1) -> Any:
    """Poll ``pred``; return its first truthy value, or None after ``timeout``."""
    end = time.monotonic() + min(timeout, max(run.remaining(), 0))
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            run.check()
            return None
        time.sleep(interval)


_PORTS: set[int] = set()


def free_port() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    while True:
        port = random.randrange(10000, max(low, 10001))
        if port in _PORTS:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PORTS.add(port)
        return port


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wire_bytes_sent(port: int) -> int:
    """Bytes sent (TCP payload, incl. TLS) on established connections whose local port is
    ``port`` (the primary's side of a receiver's connection)."""
    out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    sent = [int(x) for x in re.findall(r"bytes_sent:(\d+)", out)]
    if not sent:
        sent = [int(x) for x in re.findall(r"bytes_acked:(\d+)", out)]
    return sum(sent)


# --------------------------------------------------------------------------- trees


def make_large(root: Path, n: int, size: int, seed: int = 1) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    for i in range(n):
        with open(root / f"large{i:02d}.bin", "wb") as f:
            left = size
            while left:
                chunk = min(left, 8 * MiB)
                f.write(rnd.randbytes(chunk))
                left -= chunk
        # an mtime in the past, as files being mirrored usually have
        os.utime(root / f"large{i:02d}.bin", ns=(1_600_000_000_000_000_000 + i,) * 2)


def make_small(root: Path, count: int, size: int, per_dir: int = 1000) -> None:
    rnd = random.Random(2)
    for i in range(count):
        d = root / f"d{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        with open(d / f"f{i:06d}", "wb") as f:
            f.write(rnd.randbytes(size))


def tree_light(root: Path) -> tuple[int, int]:
    """(files, total bytes) — a cheap check before the full comparison."""
    files = total = 0
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except OSError:
                continue
            files += 1
            total += st.st_size
    return files, total


def manifest(root: Path) -> dict[str, tuple[Any, ...]]:
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode)
            else:
                h = hashlib.blake2b(digest_size=16)
                with open(p, "rb") as f:
                    while chunk := f.read(4 * MiB):
                        h.update(chunk)
                out[rel] = ("file", mode, st.st_size, st.st_mtime_ns, h.hexdigest())
    return out


def compare(a: Path, b: Path) -> list[str]:
    ma, mb = manifest(a), manifest(b)
    diffs = [f"only in source: {k}" for k in sorted(ma.keys() - mb.keys())]
    diffs += [f"only in copy: {k}" for k in sorted(mb.keys() - ma.keys())]
    for k in sorted(ma.keys() & mb.keys()):
        if ma[k] != mb[k]:
            diffs.append(f"differs: {k}: {ma[k][:4]} vs {mb[k][:4]}")
    return diffs


def mutate_blocks(root: Path, fraction: float, seed: int = 3) -> int:
    """Overwrite ``fraction`` of the 64 KiB blocks of every file with random bytes and
    restore the mtime (silent divergence: only a checksum comparison finds it)."""
    rnd = random.Random(seed)
    changed = 0
    for p in sorted(root.iterdir()):
        st = p.stat()
        nblocks = st.st_size // BLOCK
        k = max(1, round(nblocks * fraction))
        with open(p, "r+b") as f:
            for b in rnd.sample(range(nblocks), k):
                f.seek(b * BLOCK)
                f.write(rnd.randbytes(BLOCK))
                changed += 1
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    return changed


def copy_tree(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-a", "--reflink=auto", f"{src}/.", str(dst)], check=True)


def rmtree(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------- agents


@dataclass
class Agent:
    name: str
    config: Path
    api_port: int
    port: int
    root: Path
    log: Path
    state_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    def mirror(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/status",
                                        timeout=2) as r:
                return dict(json.loads(r.read())["mirrors"].get(MIRROR, {}))
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            return {}

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def make_pair(base: Path, primary_root: Path, replica_root: Path,
              primary_extra: dict[str, Any] | None = None) -> dict[str, Agent]:
    import yaml

    from mirrorkit.pki import ensure_mirror_pki, member_files

    pki = base / "pki"
    names = {"node1": "primary", "node2": "backup"}
    ensure_mirror_pki(pki, MIRROR, {n: ("127.0.0.1", "failover") for n in names})
    ports = {n: free_port() for n in names}
    agents: dict[str, Agent] = {}
    for name, role in names.items():
        home = base / name
        home.mkdir(parents=True, exist_ok=True)
        root = primary_root if role == "primary" else replica_root
        ca, crt, key = member_files(pki, MIRROR, name)
        mirror: dict[str, Any] = {
            "role": role, "mode": "async", "port": ports[name], "listen": "127.0.0.1",
            "paths": [str(primary_root)], "targets": [str(root)],
            "tls": {"ca": str(ca), "cert": str(crt), "key": str(key)},
            "members": {n: {"address": "127.0.0.1", "role": r, "port": ports[n]}
                        for n, r in names.items()},
            "hooks": {},
        }
        if role == "primary" and primary_extra:
            mirror.update(primary_extra)
        api_port = free_port()
        cfg = {"host": name, "api": {"listen": "127.0.0.1", "port": api_port},
               "control_socket": str(home / "run" / "control.sock"),
               "state_dir": str(home / "state"), "mirrors": {MIRROR: mirror}}
        config = home / "agent.yml"
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        agents[name] = Agent(name, config, api_port, ports[name], root,
                             LAST / f"{base.parent.name}-{base.name}-{name}.log", home / "state")
    return agents


def start_agent(run: Runner, a: Agent) -> None:
    a.proc = run.spawn([sys.executable, "-m", "mirrorkit.agent.cli.main", "--config",
                        str(a.config)], a.log, cwd=REPO)


def stop_agent(run: Runner, a: Agent) -> None:
    run.stop(a.proc)
    a.proc = None


def caught_up(p: Agent, r: Agent) -> bool:
    pm, rm = p.mirror(), r.mirror()
    if not pm or not rm or not pm.get("lsn"):
        return False
    return bool(rm.get("applied_lsn") == pm["lsn"] and not rm.get("lag_records")
                and not rm.get("resyncing"))


def control_post(a: Agent, path: str) -> tuple[int, str]:
    """POST ``path`` on the agent's root-only control socket."""
    from mirrorkit.agent.cli.control_client import ControlUnavailable, post

    try:
        code, answer = post(a.config.parent / "run" / "control.sock", path, timeout=5)
    except ControlUnavailable as e:
        return 0, str(e)
    return code, json.dumps(answer)


# --------------------------------------------------------------------------- profiling


class Profiler:
    """py-spy on the agents during one case; summarised into RESULTS.md."""

    def __init__(self, run: Runner, tag: str) -> None:
        self.run = run
        self.tag = tag
        self.procs: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
        self.exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")

    def available(self) -> bool:
        return os.access(self.exe, os.X_OK)

    def attach(self, label: str, pid: int) -> None:
        if not self.available():
            return
        out = LAST / f"profile-{self.tag}-{label}.txt"
        p = self.run.spawn([self.exe, "record", "--pid", str(pid), "--rate", "100",
                            "--nonblocking", "--format", "raw", "--output", str(out)],
                           LAST / f"py-spy-{self.tag}-{label}.log")
        self.procs.append((label, out, p))

    def finish(self) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        for label, out, p in self.procs:
            self.run.stop(p, sig=signal.SIGINT, wait=30)
            if out.exists():
                summary[label] = summarise_profile(out)
        return summary


def _frame(f: str) -> str:
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", f.strip())
    if not m:
        return f.strip()
    func, path = m.groups()
    if "mirrorkit" in path:
        path = path[path.index("mirrorkit"):]
    else:
        path = os.path.basename(path)
    return f"{func} ({path})"


def summarise_profile(path: Path) -> dict[str, Any]:
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        cnt = int(n)
        frames = [_frame(f) for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        total += cnt
        self_c[frames[-1]] += cnt
        for f in set(frames):
            if "mirrorkit/" in f:
                incl[f] += cnt
    return {"samples": total,
            "self": [(f, c) for f, c in self_c.most_common(12)],
            "inclusive": [(f, c) for f, c in incl.most_common(14)]}


# --------------------------------------------------------------------------- peers


def start_rsyncd(run: Runner, base: Path, module_dir: Path) -> int:
    base.mkdir(parents=True, exist_ok=True)
    module_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = base / "rsyncd.conf"
    ids = "uid = 0\ngid = 0\n" if os.geteuid() == 0 else ""
    conf.write_text(f"pid file = {base}/rsyncd.pid\nuse chroot = no\n{ids}"
                    f"log file = {base}/rsyncd.log\n\n[mod]\n  path = {module_dir}\n"
                    f"  read only = no\n  munge symlinks = no\n")
    run.spawn(["rsync", "--daemon", "--no-detach", f"--port={port}", "--address=127.0.0.1",
               f"--config={conf}"], LAST / f"rsyncd-{base.name}.log")
    if not wait_until(run, lambda: port_open(port), 15):
        raise RuntimeError("rsync daemon did not start")
    return port


def rsync_stats(out: str) -> dict[str, int]:
    got: dict[str, int] = {}
    for key in ("Total bytes sent", "Total bytes received", "Literal data", "Matched data",
                "Total file size"):
        m = re.search(rf"{key}: ([\d,.]+)", out)
        if m:
            got[key] = int(m.group(1).replace(",", "").replace(".", ""))
    return got


def run_rsync(run: Runner, args: list[str], timeout: float) -> tuple[float, dict[str, int], str]:
    t0 = time.monotonic()
    cp = subprocess.run(args, capture_output=True, text=True,
                        timeout=min(timeout, max(run.remaining(), 1)))
    dt = time.monotonic() - t0
    if cp.returncode != 0:
        raise RuntimeError(f"rsync failed ({cp.returncode}): {cp.stderr[-2000:]}")
    return dt, rsync_stats(cp.stdout), " ".join(shlex.quote(a) for a in args)


def start_lsyncd(run: Runner, base: Path, src: Path, target: str, delay: int) -> Any:
    base.mkdir(parents=True, exist_ok=True)
    conf = base / f"lsyncd-{delay}.lua"
    delay_line = f"  delay = {delay},\n" if delay is not None else ""
    conf.write_text(
        "settings {\n  nodaemon = true,\n"
        f"  logfile = \"{base}/lsyncd-{delay}.log\",\n"
        f"  statusFile = \"{base}/lsyncd-{delay}.status\",\n  insist = true,\n}}\n"
        "sync {\n  default.rsync,\n"
        f"  source = \"{src}/\",\n  target = \"{target}\",\n{delay_line}"
        "  rsync = { archive = true },\n}\n")
    return run.spawn(["lsyncd", "-nodaemon", str(conf)], LAST / f"lsyncd-{delay}.out"), conf


# --------------------------------------------------------------------------- inotify watcher

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x4, 0x8, 0x80, 0x100
IN_Q_OVERFLOW = 0x4000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def content_for(name: str, seq: int, size: int = 200) -> bytes:
    head = f"{name} {seq} ".encode()
    return head + b"." * (size - len(head) - 1) + b"\n"


class ReplicaWatcher(threading.Thread):
    """Watches one flat replica directory; records, per file and sequence number, when
    the replica first shows that content (or a later one) byte for byte."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.fd = _libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        wd = _libc.inotify_add_watch(self.fd, str(root).encode(),
                                     IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_TO
                                     | IN_CREATE)
        if wd < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        self.pending: dict[str, collections.deque[int]] = collections.defaultdict(
            collections.deque)
        self.written: dict[int, float] = {}
        self.visible: dict[int, float] = {}
        self.lock = threading.Lock()
        self.stop_flag = False
        self.overflows = 0

    def expect(self, name: str, seq: int, t: float) -> None:
        with self.lock:
            self.written[seq] = t
            self.pending[name].append(seq)

    def _check(self, name: str, now: float) -> None:
        try:
            with open(self.root / name, "rb") as f:
                data = f.read(4096)
        except OSError:
            return
        parts = data.split(b" ", 2)
        if len(parts) < 3 or parts[0].decode(errors="replace") != name:
            return
        try:
            seq = int(parts[1])
        except ValueError:
            return
        if data != content_for(name, seq):
            return  # partially written: a later event follows
        with self.lock:
            q = self.pending.get(name)
            while q and q[0] <= seq:
                self.visible[q.popleft()] = now

    def run(self) -> None:
        while not self.stop_flag:
            r, _, _ = select.select([self.fd], [], [], 0.2)
            if not r:
                continue
            buf = os.read(self.fd, 1 << 20)
            now = time.monotonic()
            names: list[str] = []
            off = 0
            while off < len(buf):
                _wd, mask, _cookie, ln = struct.unpack_from("iIII", buf, off)
                name = buf[off + 16: off + 16 + ln].rstrip(b"\0").decode(errors="replace")
                off += 16 + ln
                if mask & IN_Q_OVERFLOW:
                    self.overflows += 1
                    names.extend(os.listdir(self.root))
                elif name and not name.startswith("."):
                    names.append(name)
            for name in dict.fromkeys(names):
                self._check(name, now)

    def sweep(self) -> None:
        now = time.monotonic()
        for name in list(self.pending):
            self._check(name, now)

    def close(self) -> None:
        self.stop_flag = True
        self.join(2)
        os.close(self.fd)


def paced_writer(src: Path, watcher: ReplicaWatcher, rate: int, seconds: float,
                 nfiles: int) -> tuple[int, float]:
    total = int(rate * seconds)
    t0 = time.monotonic()
    for i in range(total):
        due = t0 + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        name = f"f{i % nfiles:05d}"
        watcher.expect(name, i, time.monotonic())
        with open(src / name, "wb") as f:
            f.write(content_for(name, i))
    return total, time.monotonic() - t0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


# --------------------------------------------------------------------------- benchmarks


@dataclass
class Ctx:
    run: Runner
    args: argparse.Namespace
    sizes: dict[str, Any]
    base: Path
    results: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def profiled(ctx: Ctx, case: str) -> bool:
    wanted = {x.strip() for x in ctx.args.profile.split(",")}
    return case in wanted or "all" in wanted


def bench_initial(ctx: Ctx) -> None:
    s = ctx.sizes
    cases = [("large", f"{s['large_n']} × {s['large_size'] // MiB} MiB random"),
             ("small", f"{s['small_n']:,} files × {s['small_size'] // 1024} KiB")]
    rows = []
    for kind, label in cases:
        ctx.run.check()
        base = ctx.base / f"initial-{kind}"
        src = base / "src"
        t = time.monotonic()
        if kind == "large":
            make_large(src, s["large_n"], s["large_size"])
        else:
            make_small(src, s["small_n"], s["small_size"])
        print(f"  [{kind}] generated {label} in {time.monotonic() - t:.1f}s", flush=True)
        row: dict[str, Any] = {"dataset": label, "load_before": load()}
        # --- rsync to the daemon on loopback
        dst = base / "rsync-dst"
        port = start_rsyncd(ctx.run, base / "rsyncd", dst)
        dt, st, cmd = run_rsync(ctx.run, ["rsync", "-a", "--stats", f"{src}/",
                                          f"rsync://127.0.0.1:{port}/mod/"], ctx.args.case_timeout)
        row["rsync_s"], row["rsync_cmd"] = dt, cmd
        row["rsync_bytes"] = st.get("Total bytes sent")
        row["rsync_identical"] = not compare(src, dst)
        print(f"  [{kind}] rsync {dt:.2f}s", flush=True)
        rmtree(dst)
        # the same with --fsync: rsync then gives the durability mirrorkit's ACK promises
        dst.mkdir()
        dt, _st, cmd = run_rsync(ctx.run, ["rsync", "-a", "--fsync", f"{src}/",
                                           f"rsync://127.0.0.1:{port}/mod/"],
                                 ctx.args.case_timeout)
        row["rsync_fsync_s"], row["rsync_fsync_cmd"] = dt, cmd
        print(f"  [{kind}] rsync --fsync {dt:.2f}s", flush=True)
        rmtree(dst)
        # --- mirrorkit: primary started on the populated tree + one receiver
        replica = base / "replica"
        agents = make_pair(base / f"mk-{kind}", src, replica)
        p, r = agents["node1"], agents["node2"]
        expect = tree_light(src)
        prof = Profiler(ctx.run, f"initial-{kind}") if profiled(ctx, f"initial-{kind}") \
            else None
        t0 = time.monotonic()
        start_agent(ctx.run, p)
        start_agent(ctx.run, r)
        if prof:
            time.sleep(0.3)
            prof.attach("primary", p.proc.pid)  # type: ignore[union-attr]
            prof.attach("receiver", r.proc.pid)  # type: ignore[union-attr]

        def done() -> bool:
            return caught_up(p, r) and tree_light(replica) == expect

        ok = wait_until(ctx.run, done, ctx.args.case_timeout, 0.1)
        dt_mk = time.monotonic() - t0
        row["mk_wire_bytes"] = wire_bytes_sent(p.port)
        if prof:
            ctx.profiles[f"initial-{kind}"] = prof.finish()
        row["mk_finished"] = bool(ok)
        row["mk_s"] = dt_mk
        pm = p.mirror()
        row["mk_lsn"], row["mk_log_bytes"] = pm.get("lsn"), pm.get("log_bytes")
        stop_agent(ctx.run, r)
        stop_agent(ctx.run, p)
        row["mk_identical"] = (not compare(src, replica)) if ok else False
        row["load_after"] = load()
        print(f"  [{kind}] mirrorkit {'%.2fs' % dt_mk if ok else 'NOT FINISHED'}", flush=True)
        rows.append(row)
        rmtree(base)
    ctx.results["initial"] = rows


def bench_resync(ctx: Ctx) -> None:
    s = ctx.sizes
    base = ctx.base / "resync"
    src = base / "src"
    make_large(src, s["large_n"], s["large_size"])
    row: dict[str, Any] = {"dataset": f"{s['large_n']} × {s['large_size'] // MiB} MiB, 1% of "
                                      "64 KiB blocks differ (mtime restored)",
                           "load_before": load()}
    # --- rsync -c --no-whole-file to the daemon, destination = diverged copy
    dst = base / "rsync-dst"
    dst.mkdir(parents=True)
    copy_tree(src, dst)
    row["blocks_changed"] = mutate_blocks(dst, 0.01)
    port = start_rsyncd(ctx.run, base / "rsyncd", dst)
    dt, st, cmd = run_rsync(ctx.run, ["rsync", "-a", "--no-whole-file", "--checksum", "--stats",
                                      f"{src}/", f"rsync://127.0.0.1:{port}/mod/"],
                            ctx.args.case_timeout)
    row.update(rsync_s=dt, rsync_cmd=cmd, rsync_bytes=st.get("Total bytes sent"),
               rsync_literal=st.get("Literal data"), rsync_identical=not compare(src, dst))
    print(f"  rsync -c {dt:.2f}s, {st.get('Total bytes sent')} bytes sent", flush=True)
    rmtree(dst)
    # --- mirrorkit: receiver fell off the primary's log, its copy differs in 1% of blocks
    replica = base / "replica"
    replica.mkdir(parents=True)
    copy_tree(src, replica)
    mutate_blocks(replica, 0.01)
    agents = make_pair(base / "mk", src, replica,
                       {"log_max_bytes": 4 * MiB, "log_segment_bytes": 1 * MiB})
    p, r = agents["node1"], agents["node2"]
    start_agent(ctx.run, p)
    # the primary scans the tree into its log; retention drops all but the last 4 MiB
    last: list[Any] = [None, time.monotonic()]

    def scanned() -> bool:
        m = p.mirror()
        key = (m.get("lsn"), m.get("log_first_lsn"))
        if key != last[0]:
            last[0], last[1] = key, time.monotonic()
            return False
        return bool(m.get("lsn")) and (m.get("log_first_lsn") or 0) > 1 and \
            time.monotonic() - last[1] > 3
    if not wait_until(ctx.run, scanned, ctx.args.case_timeout, 0.2):
        raise RuntimeError("primary did not finish its scan")
    # Probe the on-demand endpoint with an invalid mode: 400 = the route exists (and nothing
    # is started), 404/405 = not there. The resync measured below is the automatic one.
    code, _body = control_post(p, f"/resync?mirror={MIRROR}&member=node2&mode=__probe__")
    row["endpoint"] = f"POST /resync?…&mode=__probe__ → {code or 'no answer'}"
    endpoint = code == 400
    # The receiver starts with an empty state dir: its next LSN (1) is no longer in the
    # primary's log, so the primary must resync it (checksum mode if it exists).
    t0 = time.monotonic()
    start_agent(ctx.run, r)
    expect = tree_light(src)
    ok = wait_until(ctx.run, lambda: (r.mirror().get("resyncs") or 0) >= 1 and caught_up(p, r)
                    and tree_light(replica) == expect, ctx.args.case_timeout, 0.1)
    dt_mk = time.monotonic() - t0
    row["mk_wire_bytes"] = wire_bytes_sent(p.port)
    row["mk_finished"], row["mk_s"] = bool(ok), dt_mk
    plog = p.log_text()
    m = re.search(r"resync of node2 \((\w+), (\w+)\)", plog)
    if m:
        row["mk_mode"] = f"{m.group(1)} resync ({m.group(2)})"
    elif "checksum resync from the primary" in r.log_text():
        row["mk_mode"] = "checksum resync"
    else:
        row["mk_mode"] = "full resync (checksum mode not yet available)"
    sent = re.search(r"resync of node2 sent: (.*?); streaming", plog)
    row["mk_agent_says"] = sent.group(1) if sent else None
    row["endpoint_available"] = endpoint
    stop_agent(ctx.run, r)
    stop_agent(ctx.run, p)
    row["mk_identical"] = (not compare(src, replica)) if ok else False
    row["load_after"] = load()
    print(f"  mirrorkit {row['mk_mode']}: {dt_mk:.2f}s, {row['mk_wire_bytes']} bytes", flush=True)
    ctx.results["resync"] = row
    rmtree(base)


def tear_down(ctx: Ctx, agents: dict[str, Any], procs: list[Any], base: Path,
              row: dict[str, Any]) -> None:
    """Stop a case's agents and peer processes, note the load, remove its files."""
    for a in agents.values():
        stop_agent(ctx.run, a)
    for proc in procs:
        ctx.run.stop(proc)
    row["load_after"] = load()
    rmtree(base)


def lag_case(ctx: Ctx, tool: str, delay: int | None) -> dict[str, Any]:
    s = ctx.sizes
    base = ctx.base / f"lag-{tool}-{delay}"
    src, replica = base / "src", base / "replica"
    src.mkdir(parents=True)
    replica.mkdir(parents=True)
    row: dict[str, Any] = {"tool": tool, "delay": delay, "load_before": load()}
    procs: list[Any] = []
    agents: dict[str, Agent] = {}
    prof: Profiler | None = None
    try:
        if tool == "mirrorkit":
            agents = make_pair(base / "mk", src, replica)
            for a in agents.values():
                start_agent(ctx.run, a)
            if not wait_until(ctx.run, lambda: agents["node2"].mirror().get("connected"), 30):
                raise RuntimeError("receiver did not connect")
            row["how"] = "primary + backup agent, TLS on loopback"
            if profiled(ctx, "lag"):
                prof = Profiler(ctx.run, "lag")
                prof.attach("primary", agents["node1"].proc.pid)  # type: ignore[union-attr]
                prof.attach("receiver", agents["node2"].proc.pid)  # type: ignore[union-attr]
        else:
            port = start_rsyncd(ctx.run, base / "rsyncd", replica)
            proc, conf = start_lsyncd(ctx.run, base, src, f"rsync://127.0.0.1:{port}/mod/",
                                      delay)
            procs.append(proc)
            row["how"] = f"default.rsync → rsync daemon on loopback ({conf.name})"
            row["conf"] = conf.read_text()
            time.sleep(2.0)  # lsyncd's startup rsync of the (empty) tree
        time.sleep(1.0)
        watcher = ReplicaWatcher(replica)
        watcher.start()
        total, took = paced_writer(src, watcher, s["lag_rate"], s["lag_seconds"], s["lag_files"])
        grace = (delay or 0) + 20
        wait_until(ctx.run, lambda: len(watcher.visible) >= total, grace, 0.2)
        watcher.sweep()
        watcher.close()
        lags = [watcher.visible[i] - watcher.written[i] for i in watcher.visible]
        row.update(changes=total, rate=total / took, seen=len(watcher.visible),
                   p50=pct(lags, 0.5), p99=pct(lags, 0.99), max=max(lags) if lags else None,
                   watcher_overflows=watcher.overflows)
        if tool == "mirrorkit":
            row["agent_overflow"] = "inotify queue overflow" in agents["node1"].log_text()
        if prof:
            ctx.profiles["lag"] = prof.finish()
    finally:
        tear_down(ctx, agents, procs, base, row)
    print(f"  {tool} delay={delay}: p50 {row.get('p50')} p99 {row.get('p99')} "
          f"seen {row.get('seen')}/{row.get('changes')}", flush=True)
    return row


def bench_lag(ctx: Ctx) -> None:
    rows = []
    for tool, delay in (("mirrorkit", None), ("lsyncd", 15), ("lsyncd", 1)):
        ctx.run.check()
        try:
            rows.append(lag_case(ctx, tool, delay))
        except OutOfTime:
            raise
        except Exception as exc:
            rows.append({"tool": tool, "delay": delay, "error": repr(exc)})
            traceback.print_exc()
    ctx.results["lag"] = rows


def burst_case(ctx: Ctx, tool: str, stall: bool = False) -> dict[str, Any]:
    n = ctx.sizes["burst_n"]
    base = ctx.base / f"burst-{tool}{'-stalled' if stall else ''}"
    src, replica = base / "src", base / "replica"
    src.mkdir(parents=True)
    replica.mkdir(parents=True)
    row: dict[str, Any] = {"tool": tool, "stall": stall, "load_before": load()}
    agents: dict[str, Agent] = {}
    procs: list[Any] = []
    # The burst is a tar extraction (create + write + close + utime per file, as fast as
    # the kernel goes): far more than max_queued_events inotify events in about a second.
    stage = base / "stage"
    (stage / "burst").mkdir(parents=True)
    for i in range(n):
        with open(stage / "burst" / f"b{i:06d}", "wb") as f:
            f.write(content_for(f"b{i:06d}", i, 100))
    tarball = base / "burst.tar"
    subprocess.run(["tar", "-cf", str(tarball), "-C", str(stage), "burst"], check=True)
    rmtree(stage)
    try:
        if tool == "mirrorkit":
            agents = make_pair(base / "mk", src, replica)
            for a in agents.values():
                start_agent(ctx.run, a)
            if not wait_until(ctx.run, lambda: agents["node2"].mirror().get("connected"), 30):
                raise RuntimeError("receiver did not connect")
        else:
            port = start_rsyncd(ctx.run, base / "rsyncd", replica)
            proc, _ = start_lsyncd(ctx.run, base, src, f"rsync://127.0.0.1:{port}/mod/", 1)
            procs.append(proc)
            time.sleep(2.0)
        (src / "burst").mkdir()
        time.sleep(1.0)
        stopped = agents["node1"].proc if stall and agents else None
        if stopped:  # the agent cannot read its inotify queue: the kernel's must overflow
            os.kill(stopped.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            subprocess.run(["tar", "-xf", str(tarball), "-C", str(src)], check=True)
        finally:
            if stopped:
                os.kill(stopped.pid, signal.SIGCONT)
        row["create_s"] = time.monotonic() - t0
        row["create_cmd"] = f"tar -xf burst.tar -C src  # {n:,} files of 100 B in burst/"
        target = replica / "burst"

        def count() -> int:
            try:
                return sum(1 for e in os.scandir(target) if not e.name.startswith("."))
            except OSError:
                return 0

        def drained() -> bool:
            if count() < n:
                return False
            if tool == "mirrorkit":
                return caught_up(agents["node1"], agents["node2"])
            return True
        ok = wait_until(ctx.run, drained, ctx.args.case_timeout, 0.2)
        row["drain_s"] = time.monotonic() - t0 if ok else None
        if not ok:
            time.sleep(2)
        row.update(created=n, on_replica=count(), drained=bool(ok))
        row["lost"] = n - row["on_replica"]
        row["identical"] = not compare(src / "burst", target) if ok else False
        if tool == "mirrorkit":
            row["overflow"] = "inotify queue overflow" in agents["node1"].log_text()
        else:
            txt = "".join(q.read_text(errors="replace") for q in base.glob("lsyncd-*.log"))
            row["overflow"] = "overflow" in txt.lower()
    finally:
        tear_down(ctx, agents, procs, base, row)
    print(f"  {tool}: {row.get('on_replica')}/{n} drain {row.get('drain_s')} "
          f"overflow {row.get('overflow')}", flush=True)
    return row


def bench_burst(ctx: Ctx) -> None:
    rows = []
    for tool, stall in (("mirrorkit", False), ("mirrorkit", True), ("lsyncd", False)):
        ctx.run.check()
        try:
            rows.append(burst_case(ctx, tool, stall))
        except OutOfTime:
            raise
        except Exception as exc:
            rows.append({"tool": tool, "stall": stall, "error": repr(exc)})
            traceback.print_exc()
    ctx.results["burst"] = rows


BENCHES: dict[str, Callable[[Ctx], None]] = {
    "initial": bench_initial, "resync": bench_resync, "lag": bench_lag, "burst": bench_burst}


# --------------------------------------------------------------------------- report


def f_s(x: Any) -> str:
    return "—" if x is None else f"{x:.2f} s"


def f_b(x: Any) -> str:
    if x is None:
        return "—"
    return f"{x / MiB:,.1f} MiB" if x >= MiB else f"{x:,} B"


def ratio(a: Any, b: Any) -> str:
    return "—" if not a or not b else f"{a / b:.2f}×"


def render(ctx: Ctx, meta: dict[str, Any]) -> str:
    L: list[str] = []
    a = L.append
    a("# Benchmark results\n")
    a("Measurements, not thresholds (see README.md). Produced by:\n")
    a(f"    {meta['command']}\n")
    a(f"- date: {meta['date']}; duration {meta.get('duration', '?')}; "
      f"`nproc` = {os.cpu_count()}; kernel {os.uname().release}; "
      f"Python {sys.version.split()[0]}; {meta['rsync']}; lsyncd {meta['lsyncd']}")
    a(f"- load average (1/5/15 min) before: {meta['load_before']}; after: "
      f"{meta.get('load_after', '?')}. Figures taken under load are noisy: read them with "
      "the load averages, and re-run on a quiet machine before quoting them.")
    a(f"- sizes: {meta['sizes_text']}")
    a("- everything on 127.0.0.1; page cache warm for both tools (data just written); "
      "mirrorkit agents are the real processes with mutual TLS 1.3, default agent settings "
      "(the mirror log fdatasync'ed per batch on both ends; the receiver makes each "
      "applied batch durable with one syncfs before it acknowledges).")
    if meta.get("errors"):
        a("- **errors in this run:** " + "; ".join(meta["errors"]))
    a("")
    r = ctx.results
    if "initial" in r:
        a("## 1. Initial mirror (goal: mirrorkit ≤ 1.0× rsync)\n")
        a("| dataset | tool | time | on the wire | ratio vs rsync | identical | goal met | "
          "load before → after |")
        a("|---|---|---|---|---|---|---|---|")
        for row in r["initial"]:
            mk = row["mk_s"] if row["mk_finished"] else None
            met = "yes" if mk and mk <= row["rsync_s"] else "**no**"
            a(f"| {row['dataset']} | rsync -a → daemon | {f_s(row['rsync_s'])} | "
              f"{f_b(row['rsync_bytes'])} | 1.00× | {row['rsync_identical']} | | "
              f"{row['load_before']} |")
            if row.get("rsync_fsync_s"):
                a(f"| | rsync -a --fsync → daemon | {f_s(row['rsync_fsync_s'])} | | "
                  f"{ratio(row['rsync_fsync_s'], row['rsync_s'])} | | | |")
            a(f"| | mirrorkit | {f_s(mk) if mk else 'not finished in %.0f s' % row['mk_s']} | "
              f"{f_b(row['mk_wire_bytes'])} | {ratio(mk, row['rsync_s'])}"
              + (f" ({ratio(mk, row['rsync_fsync_s'])} vs --fsync)"
                 if row.get("rsync_fsync_s") else "") + " | "
              f"{row['mk_identical']} | {met} | {row['load_after']} |")
        a("")
        a("The goal ratio is against plain `rsync -a`, which does not fsync. `rsync --fsync` "
          "(one fsync per file on the daemon side) is shown for the durability mirrorkit "
          "gives: an ACK there means data and log are on disk on the receiver.\n")
        for row in r["initial"]:
            a(f"- rsync command: `{row['rsync_cmd']}`")
            if row.get("rsync_fsync_cmd"):
                a(f"- rsync --fsync command: `{row['rsync_fsync_cmd']}`")
        a("- mirrorkit: time from starting both agents (`python -m mirrorkit.agent.cli.main "
          "--config …`) until the receiver's `/status` shows `applied_lsn` == primary `lsn`, "
          "`lag_records` 0 and the replica has the source's file count and bytes; trees then "
          "compared (type, mode, size, mtime_ns, content hash). mirrorkit's primary also "
          "writes the whole tree into its mirror log and the receiver into its own (both "
          "fdatasync'ed): "
          + ", ".join(f"{row['dataset']}: LSN {row['mk_lsn']}, log {f_b(row['mk_log_bytes'])}"
                      for row in r["initial"]) + ".\n")
    if "resync" in r:
        row = r["resync"]
        a("## 2. Resync after 1% of 64 KiB blocks changed (goal: mirrorkit ≤ 0.5× rsync -c)\n")
        a(f"Dataset: {row['dataset']}; {row['blocks_changed']} blocks changed.\n")
        a("| tool | mode | time | bytes moved | ratio vs rsync -c | identical | goal met |")
        a("|---|---|---|---|---|---|---|")
        mk = row["mk_s"] if row["mk_finished"] else None
        met = "yes" if mk and mk <= 0.5 * row["rsync_s"] else "**no**"
        a(f"| rsync -a --no-whole-file --checksum → daemon | delta | {f_s(row['rsync_s'])} | "
          f"{f_b(row['rsync_bytes'])} sent (literal {f_b(row['rsync_literal'])}) | 1.00× | "
          f"{row['rsync_identical']} | |")
        a(f"| mirrorkit | {row['mk_mode']} | "
          f"{f_s(mk) if mk else 'not finished in %.0f s' % row['mk_s']} | "
          f"{f_b(row['mk_wire_bytes'])} sent (TCP, incl. TLS) | {ratio(mk, row['rsync_s'])} | "
          f"{row['mk_identical']} | {met} |")
        a("")
        a(f"- rsync command: `{row['rsync_cmd']}` (bytes: `--stats` Total bytes sent).")
        a("- mirrorkit: the primary (log_max_bytes 4 MiB, so its log no longer holds the "
          "initial scan) runs; the receiver starts with an empty state dir on the diverged "
          "copy, falls off the log and is resynced. Time from receiver start until resyncs ≥ 1 "
          "and applied_lsn == lsn; bytes = `bytes_sent` of the primary's side of the "
          "connection (`ss -ti`). On-demand endpoint probe: "
          f"{row['endpoint']} ({'present' if row['endpoint_available'] else 'absent'}). "
          + (f"The primary's log: \"{row['mk_agent_says']}\". " if row.get("mk_agent_says")
             else "") +
          "The mode is read from the agents' logs (the agent picks it: checksum when the "
          "code has it, otherwise a full resync); `bench/run.py --only resync` re-runs this.")
        a(f"- load average before → after: {row['load_before']} → {row['load_after']}\n")
    if "lag" in r:
        s = ctx.sizes
        a(f"## 3. Change-to-replica lag at ~{s['lag_rate']:,} changes/s for "
          f"{s['lag_seconds']} s (goal: p99 < 1 s)\n")
        a(f"A writer thread creates, then overwrites, {s['lag_files']:,} files of 200 B in one "
          "directory at a paced rate; each file embeds its sequence number. A watcher thread "
          "(inotify on the replica dir) reads a file on each event; a change counts as "
          "visible when the replica holds exactly that content or a later one of the same "
          "file. Lag = visible − just before the write.\n")
        a("| tool | how | changes | achieved rate | seen | p50 | p99 | max | goal met |")
        a("|---|---|---|---|---|---|---|---|---|")
        for row in r["lag"]:
            name = row["tool"] + (f" delay={row['delay']}" if row["delay"] is not None else "")
            if "error" in row:
                a(f"| {name} | error: {row['error']} | | | | | | | |")
                continue
            met = "yes" if row["p99"] < 1.0 and row["seen"] == row["changes"] else "**no**"
            a(f"| {name} | {row['how']} | {row['changes']:,} | {row['rate']:,.0f}/s | "
              f"{row['seen']:,} | {f_s(row['p50'])} | {f_s(row['p99'])} | {f_s(row['max'])} | "
              f"{met if row['tool'] == 'mirrorkit' else ''} |")
        a("")
        for row in r["lag"]:
            if row.get("seen") is not None and row["seen"] < row["changes"]:
                a(f"- {row['tool']} delay={row['delay']}: {row['changes'] - row['seen']:,} "
                  f"change(s) never became visible within {(row['delay'] or 0) + 20} s after "
                  "the writer stopped; p50/p99/max are over the changes that did.")
            if row.get("tool") == "mirrorkit" and "agent_overflow" in row:
                a(f"- mirrorkit agent logged an inotify overflow during the run: "
                  f"{row['agent_overflow']}.")
        a("- lsyncd 2.2.3 defaults besides `delay`: `maxDelays` (a queue of that many events "
          "triggers the rsync before `delay` expires) — at 1,000 changes/s this caps the "
          "effective delay of `delay = 15`.")
        a("- load average before → after: " + "; ".join(
            f"{x['tool']} {x.get('delay')}: {x.get('load_before')} → {x.get('load_after')}"
            for x in r["lag"]) + "\n")
    if "burst" in r:
        a(f"## 4. Burst of {ctx.sizes['burst_n']:,} file creates at once "
          f"(kernel `max_queued_events` = {meta['max_queued']}; goal: 0 lost)\n")
        a("| tool | files created | create time | on replica after drain | lost | "
          "time to drain | identical | overflow seen | goal met |")
        a("|---|---|---|---|---|---|---|---|---|")
        for row in r["burst"]:
            if "error" in row:
                a(f"| {row['tool']} | error: {row['error']} | | | | | | | |")
                continue
            tool = row["tool"] + (" (delay=1, default.rsync → daemon)"
                                  if row["tool"] == "lsyncd" else "")
            if row.get("stall"):
                tool += " (primary SIGSTOPped during the burst: forced kernel overflow)"
            met = ("yes" if row["lost"] == 0 else "**no**") if row["tool"] == "mirrorkit" else ""
            a(f"| {tool} | {row['created']:,} | {f_s(row['create_s'])} | "
              f"{row['on_replica']:,} | {row['lost']:,} | "
              f"{f_s(row['drain_s']) if row['drain_s'] else 'not drained'} | "
              f"{row['identical']} | {row['overflow']} | {met} |")
        a("")
        a(f"- burst: `{r['burst'][0].get('create_cmd', 'python writer')}`, into a directory "
          "already watched.")
        a("- time to drain: from the first create until the replica holds every file (and, "
          "for mirrorkit, applied_lsn == lsn). Overflow seen: mirrorkit's `capture: inotify "
          "queue overflow; rescanning` log line (kernel queue or in-process queue), "
          "lsyncd's log mentioning an overflow.")
        a("- load average before → after: " + "; ".join(
            f"{x['tool']}: {x.get('load_before')} → {x.get('load_after')}"
            for x in r["burst"]) + "\n")
    if ctx.profiles:
        a("## Profile (py-spy, 100 Hz, idle excluded)\n")
        for case, per in ctx.profiles.items():
            for label, prof in per.items():
                a(f"### {case}: {label} agent ({prof['samples']:,} samples)\n")
                a("| top self time | share | | mirrorkit functions, inclusive | share |")
                a("|---|---|---|---|---|")
                tot = max(prof["samples"], 1)
                selfs, incl = prof["self"], prof["inclusive"]
                for i in range(max(len(selfs), len(incl))):
                    s1 = selfs[i] if i < len(selfs) else ("", 0)
                    s2 = incl[i] if i < len(incl) else ("", 0)
                    a(f"| `{s1[0]}` | {100 * s1[1] / tot:.0f}% | | `{s2[0]}` | "
                      f"{100 * s2[1] / tot:.0f}% |" if s2[0] else
                      f"| `{s1[0]}` | {100 * s1[1] / tot:.0f}% | | | |")
                a("")
    if meta.get("notes"):
        a("## What limits it\n")
        a(meta["notes"])
    return "\n".join(L) + "\n"


def sizes_for(quick: bool) -> dict[str, Any]:
    if quick:
        return {"large_n": 4, "large_size": 16 * MiB, "small_n": 5000, "small_size": 4096,
                "lag_rate": 1000, "lag_seconds": 5, "lag_files": 1000, "burst_n": 20000}
    return {"large_n": 8, "large_size": 128 * MiB, "small_n": 100_000, "small_size": 4096,
            "lag_rate": 1000, "lag_seconds": 20, "lag_files": 1000, "burst_n": 30000}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--only", action="append", choices=list(BENCHES),
                    help="run only this benchmark (repeatable)")
    ap.add_argument("--max-minutes", type=float, default=25.0,
                    help="hard bound on the whole run (default 25)")
    ap.add_argument("--case-timeout", type=float, default=420.0,
                    help="give up on one mirrorkit/rsync case after this many seconds")
    ap.add_argument("--profile", default="initial-small,lag",
                    help="comma-separated cases to profile with py-spy: initial-large, initial-small, lag, "
                    "all, none (default initial-small,lag)")
    ap.add_argument("--notes", type=Path, default=BENCH / "limits.md",
                    help="markdown appended as 'What limits it' (default bench/limits.md)")
    ap.add_argument("--output", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.quick:
        args.case_timeout = min(args.case_timeout, 180.0)
    sizes = sizes_for(args.quick)
    run = Runner(args.max_minutes * 60)
    base = WORK / f"run-{os.getpid()}"
    rmtree(LAST)
    LAST.mkdir(parents=True)
    base.mkdir(parents=True)
    ctx = Ctx(run, args, sizes, base)
    t_start = time.monotonic()
    meta: dict[str, Any] = {
        "command": " ".join(shlex.quote(x) for x in
                            [os.path.relpath(sys.executable, REPO), "bench/run.py", *sys.argv[1:]]),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "load_before": load(),
        "rsync": subprocess.run(["rsync", "--version"], capture_output=True,
                                text=True).stdout.splitlines()[0],
        "lsyncd": subprocess.run(["lsyncd", "-version"], capture_output=True,
                                 text=True).stdout.split()[-1] if shutil.which("lsyncd") else "-",
        "max_queued": Path("/proc/sys/fs/inotify/max_queued_events").read_text().strip(),
        "sizes_text": ("initial/resync {large_n} × {large_size_m} MiB and {small_n:,} × 4 KiB; "
                       "lag {lag_rate}/s for {lag_seconds} s over {lag_files} files; burst "
                       "{burst_n:,} creates").format(large_size_m=sizes["large_size"] // MiB,
                                                     **sizes)
        + (" (--quick)" if args.quick else " (full)"),
        "errors": [],
    }

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    rc = 0
    try:
        for name in args.only or list(BENCHES):
            print(f"== {name}", flush=True)
            try:
                BENCHES[name](ctx)
            except OutOfTime:
                meta["errors"].append(f"{name}: overall time bound of {args.max_minutes} min "
                                      "reached; later benchmarks not run")
                rc = 2
                break
            except Exception as exc:
                traceback.print_exc()
                meta["errors"].append(f"{name}: {exc!r}")
                rc = 1
            finally:
                run.stop_all()
    except KeyboardInterrupt as exc:
        meta["errors"].append(f"interrupted ({exc})")
        rc = 130
    finally:
        run.stop_all()
        rmtree(base)
        meta["load_after"] = load()
        meta["duration"] = f"{(time.monotonic() - t_start) / 60:.1f} min"
        if args.notes and args.notes.exists():  # read last: may be edited during the run
            meta["notes"] = args.notes.read_text()
        (LAST / "results.json").write_text(json.dumps(
            {"meta": meta, "results": ctx.results, "profiles": ctx.profiles}, indent=1,
            default=str))
        args.output.write_text(render(ctx, meta))
        print(f"wrote {args.output} ({meta['duration']})", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())

"""Choose the FUSE binding for the ``mount`` capture by measurement (issue 9).

Runs the same application workloads, in one run, against a plain local
directory and against a minimal passthrough FUSE file system per binding
(``bench/_fuse_fs.py``: pyfuse3 on trio, pyfuse3 on asyncio, llfuse, mfusepy,
single- and multi-threaded), each of which also queues every mutating op as a
mirror-log ``Op`` for a consumer thread that encodes it (the logging cost), and
makes ``fsync`` wait for that consumer (the hand-off ``mode: sync`` pays before
it asks the backup). Writeback caching is off everywhere: the log must see
writes in application order.

    PYTHONPATH=. .venv/bin/python bench/fuse_binding.py            # ~9 min (2 rounds)
    PYTHONPATH=. .venv/bin/python bench/fuse_binding.py --quick    # smoke run
    PYTHONPATH=. .venv/bin/python bench/fuse_binding.py --render-only

Workloads (the application is this process, one thread unless said): sequential
write of a 512 MiB file in 1 MiB blocks plus a final fsync; 4 KiB random writes
into a 64 MiB file; create+write 4 KiB+close of 10,000 small files; 4 KiB
write + fdatasync, 2,000 times (p50/p99); the same from 4 threads at once (what
group commit in ``mode: sync`` sees); SQLite inserts, one transaction each, with
``journal_mode=WAL`` and ``synchronous=FULL``. Each workload has a time cap, so
the run is bounded. Also recorded: the FUSE daemon's CPU time per workload (from
/proc), the largest write request it saw and the load average.

Needs root, /dev/fuse, fuse3 and the bindings (``make bench-fuse`` installs
them); a binding that does not import is reported as missing, not fatal.
Figures go to the section "FUSE binding (issue 9)" of bench/RESULTS.md and the
raw runs to bench/fuse_binding.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
JSON = HERE / "fuse_binding.json"
SECTION = "## FUSE binding (issue 9)"
MiB = 1024 * 1024


@dataclass
class Target:
    name: str
    binding: str | None  # None: the plain local directory
    single: bool = False
    options: list[str] = field(default_factory=list)
    note: str = ""


TARGETS = [
    Target("plain directory", None, note="ext4 on the same disk, no FUSE"),
    Target("pyfuse3 (trio)", "pyfuse3", note="low level; handlers block the one trio thread"),
    Target("pyfuse3 (trio), fsync in thread", "pyfuse3", options=["thread_fsync"],
           note="fsync handler awaits trio.to_thread: other requests run meanwhile"),
    Target("pyfuse3 (asyncio)", "pyfuse3-asyncio",
           note="pyfuse3.asyncio adapter: the same handlers on an asyncio loop"),
    Target("llfuse, 1 worker", "llfuse", single=True, note="libfuse 2, big_writes"),
    Target("llfuse, multi", "llfuse", note="libfuse 2, big_writes, default workers"),
    Target("llfuse, no big_writes", "llfuse", single=True, options=["no_big_writes"],
           note="libfuse 2 default without big_writes: 4 KiB write requests"),
    Target("mfusepy, -s", "mfusepy", single=True, note="libfuse 3 high level, one thread"),
    Target("mfusepy, multi", "mfusepy", note="libfuse 3 high level, fuse_loop_mt"),
    Target("mfusepy, multi, getxattr ENOSYS", "mfusepy", options=["no_getxattr"],
           note="the kernel's getxattr(security.capability) before each write switched off"),
]


@dataclass
class Sizes:
    seq_mib: int = 512
    rand_file_mib: int = 64
    rand_writes: int = 20000
    files: int = 10000
    fsyncs: int = 2000
    par_threads: int = 4
    par_fsyncs: int = 250  # per thread
    sqlite_rows: int = 2000
    cap_s: float = 20.0  # per workload


QUICK = Sizes(seq_mib=64, rand_file_mib=16, rand_writes=2000, files=1000, fsyncs=200,
              par_fsyncs=50, sqlite_rows=200, cap_s=5.0)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_seconds(pid: int | None) -> float:
    """User+system CPU of the FUSE daemon (all threads) so far."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- workloads: each returns (figure, ops done) ---------------------------------------


def w_seq(root: Path, s: Sizes) -> tuple[dict[str, Any], int]:
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
    os.unlink(p)
    return {"mib_s": n / dt, "mib": n, "s": dt}, n


def w_rand(root: Path, s: Sizes) -> tuple[dict[str, Any], int]:
    p = root / "rand.bin"
    block = os.urandom(MiB)
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(s.rand_file_mib):
            os.write(fd, block)
        rng = random.Random(9)
        small = os.urandom(4096)
        blocks = s.rand_file_mib * MiB // 4096
        t0 = time.perf_counter()
        n = 0
        for n in range(1, s.rand_writes + 1):
            os.pwrite(fd, small, rng.randrange(blocks) * 4096)
            if n % 256 == 0 and time.perf_counter() - t0 > s.cap_s:
                break
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
    os.unlink(p)
    return {"per_s": n / dt, "n": n}, n


def w_files(root: Path, s: Sizes) -> tuple[dict[str, Any], int]:
    d = root / "small"
    d.mkdir()
    data = os.urandom(4096)
    t0 = time.perf_counter()
    n = 0
    for n in range(1, s.files + 1):
        fd = os.open(d / f"f{n:05d}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.close(fd)
        if n % 256 == 0 and time.perf_counter() - t0 > s.cap_s:
            break
    dt = time.perf_counter() - t0
    t1 = time.perf_counter()
    shutil.rmtree(d)
    return {"per_s": n / dt, "n": n, "rm_per_s": n / (time.perf_counter() - t1)}, n


def _fsync_loop(p: Path, count: int, cap_s: float, out: list[float]) -> None:
    data = os.urandom(4096)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        start = time.perf_counter()
        for i in range(count):
            t0 = time.perf_counter()
            os.pwrite(fd, data, i * 4096)
            os.fdatasync(fd)
            t1 = time.perf_counter()
            out.append(t1 - t0)
            if t1 - start > cap_s:
                break
    finally:
        os.close(fd)
    os.unlink(p)


def w_fsync(root: Path, s: Sizes) -> tuple[dict[str, Any], int]:
    lat: list[float] = []
    _fsync_loop(root / "fsync.bin", s.fsyncs, s.cap_s, lat)
    q = statistics.quantiles(lat, n=100)
    return {"p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3, "n": len(lat),
            "per_s": len(lat) / sum(lat)}, len(lat)


def w_par_fsync(root: Path, s: Sizes) -> tuple[dict[str, Any], int]:
    lats: list[list[float]] = [[] for _ in range(s.par_threads)]
    threads = [threading.Thread(target=_fsync_loop,
                                args=(root / f"par{i}.bin", s.par_fsyncs, s.cap_s, lats[i]))
               for i in range(s.par_threads)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    every = [x for la in lats for x in la]
    q = statistics.quantiles(every, n=100)
    return {"per_s": len(every) / dt, "p99_ms": q[98] * 1e3, "n": len(every)}, len(every)


def w_sqlite(root: Path, s: Sizes) -> tuple[dict[str, Any], int]:
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
            if n % 64 == 0 and time.perf_counter() - t0 > s.cap_s:
                break
        dt = time.perf_counter() - t0
        ok = con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(p) + suffix).unlink(missing_ok=True)
    return {"per_s": n / dt, "n": n, "journal_mode": mode, "integrity": ok}, n


WORKLOADS: list[tuple[str, Callable[[Path, Sizes], tuple[dict[str, Any], int]]]] = [
    ("seq", w_seq), ("rand", w_rand), ("files", w_files), ("fsync", w_fsync),
    ("par_fsync", w_par_fsync), ("sqlite", w_sqlite),
]


# -- running a target -------------------------------------------------------------------


def _wait_mounted(mnt: Path, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.ismount(mnt):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"FUSE server exited with {proc.returncode} before mounting")
        time.sleep(0.05)
    raise RuntimeError("FUSE server did not mount in time")


def _unmount(mnt: Path) -> None:
    if (os.path.ismount(mnt)
            and subprocess.run(["umount", str(mnt)], check=False).returncode != 0):
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def run_target(t: Target, work: Path, s: Sizes, ack_ms: float = 0.0,
               only: list[str] | None = None) -> dict[str, Any]:
    base = work / t.name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
    shutil.rmtree(base, ignore_errors=True)
    backing, mnt = base / "backing", base / "mnt"
    backing.mkdir(parents=True)
    mnt.mkdir()
    res: dict[str, Any] = {"name": t.name, "note": t.note, "load_before": loadavg()}
    proc = None
    root = backing
    if t.binding is not None:
        stats = base / "stats.json"
        cmd = [sys.executable, str(HERE / "_fuse_fs.py"), t.binding, str(backing), str(mnt),
               str(stats), *(["--single"] if t.single else []),
               *(f"--option={o}" for o in t.options),
               *([f"--ack-ms={ack_ms}"] if ack_ms else [])]
        res["server"] = " ".join(cmd[1:])
        errlog = open(base / "server.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(cmd, stdout=errlog, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(HERE.parent)})
        try:
            _wait_mounted(mnt, proc)
        except RuntimeError as exc:
            proc.kill()
            proc.wait()
            res["error"] = f"{exc}: {(base / 'server.log').read_text()[-500:]}"
            return res
        root = mnt
    try:
        for name, fn in WORKLOADS:
            if only and name not in only:
                continue
            c0 = cpu_seconds(proc.pid if proc else None)
            try:
                fig, n = fn(root, s)
            except OSError as exc:
                res[name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            if proc is not None and n:
                fig["daemon_cpu_us_per_op"] = (cpu_seconds(proc.pid) - c0) / n * 1e6
            res[name] = fig
            print(f"  {t.name}: {name} {fig}", flush=True)
    finally:
        if proc is not None:
            _unmount(mnt)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            try:
                res["log"] = json.loads((base / "stats.json").read_text())
            except (OSError, ValueError):
                res["log"] = None
        res["load_after"] = loadavg()
        shutil.rmtree(base, ignore_errors=True)
    return res


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One target's rounds as one result: the median of every figure."""
    out = dict(runs[0])
    out["load_before"] = runs[0]["load_before"]
    out["load_after"] = runs[-1]["load_after"]
    for name, _ in WORKLOADS:
        figs = [r[name] for r in runs if isinstance(r.get(name), dict) and "error" not in r[name]]
        if not figs:
            continue
        merged = dict(figs[0])
        for k, v in figs[0].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                merged[k] = statistics.median(f[k] for f in figs if k in f)
        out[name] = merged
    return out


# -- rendering --------------------------------------------------------------------------


def _f(d: Any, key: str, fmt: str) -> str:
    if not isinstance(d, dict):
        return "—"
    if "error" in d:
        return "error"
    v = d.get(key)
    return "—" if v is None else format(v, fmt)


def render(run: dict[str, Any]) -> str:
    out = [SECTION, "", "Produced by:", "", f"    {run['command']}", ""]
    if run.get("rounds", 1) > 1:
        out.append(f"Figures are medians of {run['rounds']} interleaved rounds (every round "
                   "runs every target; the second in reverse order); the load column spans "
                   "all of them; every round is in bench/fuse_binding.json.")
        out.append("")
    out.append(f"- date: {run['date']}; duration {run['duration_s'] / 60:.1f} min; "
               f"`nproc` = {run['nproc']}; kernel {run['kernel']}; Python {run['python']}; "
               f"libfuse {run['libfuse']}; versions: {run['versions']}")
    out.append(f"- load average (1/5/15 min) before: {run['load_before']}; "
               f"after: {run['load_after']}")
    out.append(f"- sizes: {run['sizes']}")
    out.append("- every FUSE target: passthrough over a backing directory on the same ext4, "
               "writeback cache off, attr/entry timeout 1 s, each mutating op queued "
               "(bounded queue, 4096) as a mirror-log `Op` and encoded by a consumer thread; "
               "fsync/fdatasync also wait for that consumer. Daemon CPU = user+sys "
               "of the FUSE process per application op.")
    out.append("")
    out.append("| target | seq write MiB/s | 4 KiB rand writes/s | small files/s (rm/s) | "
               "write+fdatasync p50 / p99 ms | 4 threads fdatasync/s (p99 ms) | "
               "SQLite WAL FULL inserts/s | max write req | daemon CPU µs/op seq · rand · "
               "file · fsync | load before → after |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in run["results"]:
        if "error" in r:
            out.append(f"| {r['name']} | {r['error'][:120]} |||||||||")
            continue
        log = r.get("log") or {}
        mw = log.get("max_write")
        cpu = " · ".join(_f(r.get(k), "daemon_cpu_us_per_op", ".0f")
                         for k in ("seq", "rand", "files", "fsync"))
        out.append(
            f"| {r['name']} | {_f(r.get('seq'), 'mib_s', ',.0f')} "
            f"| {_f(r.get('rand'), 'per_s', ',.0f')} "
            f"| {_f(r.get('files'), 'per_s', ',.0f')} ({_f(r.get('files'), 'rm_per_s', ',.0f')}) "
            f"| {_f(r.get('fsync'), 'p50_ms', '.2f')} / {_f(r.get('fsync'), 'p99_ms', '.2f')} "
            f"| {_f(r.get('par_fsync'), 'per_s', ',.0f')} "
            f"({_f(r.get('par_fsync'), 'p99_ms', '.1f')}) "
            f"| {_f(r.get('sqlite'), 'per_s', ',.0f')} "
            f"| {'—' if mw is None else f'{mw // 1024} KiB'} | {cpu if log else '—'} "
            f"| {r['load_before']} → {r['load_after']} |")
    out.append("")
    errors = [(r["name"], k, v["error"]) for r in run["results"] for k, v in r.items()
              if isinstance(v, dict) and "error" in v]
    for name, k, e in errors:
        out.append(f"- {name}, {k}: {e}")
    capped = [(r["name"], k) for r in run["results"] for k in ("seq", "rand", "files", "sqlite")
              if isinstance(r.get(k), dict) and r[k].get("n", r[k].get("mib")) is not None
              and r[k].get("n", r[k].get("mib")) < run["full_counts"][k]]
    if capped:
        out.append("- stopped at the per-workload time cap (figure over what ran): "
                   + ", ".join(f"{n} {k}" for n, k in capped))
    sq = {r["name"]: r["sqlite"].get("journal_mode") for r in run["results"]
          if isinstance(r.get("sqlite"), dict) and "journal_mode" in r["sqlite"]}
    if sq:
        out.append(f"- SQLite journal_mode reported: {sorted(set(sq.values()))}; "
                   "integrity_check: " + ", ".join(sorted({str(r['sqlite'].get('integrity'))
                                                         for r in run['results']
                                                         if isinstance(r.get('sqlite'), dict)
                                                         and 'integrity' in r['sqlite']})))
    out.append("- ops the loggers saw (first FUSE target): "
               + json.dumps(next((r["log"]["kinds"] for r in run["results"] if r.get("log")),
                                 {})))
    out.append("")
    out.append("Reading and decision: bench/fuse-notes.md and docs/architecture.md, "
               "\"Mount capture: binding and process model\".")
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


def versions() -> str:
    out = []
    for mod in ("pyfuse3", "llfuse", "mfusepy", "trio"):
        try:
            from importlib.metadata import version
            out.append(f"{mod} {version(mod)}")
        except Exception:
            out.append(f"{mod} missing")
    return ", ".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--only", action="append", default=[], help="target name substring")
    ap.add_argument("--work", type=Path, default=HERE / "work" / "fuse")
    ap.add_argument("--rounds", type=int, default=2,
                    help="runs of every target, interleaved (odd rounds in reverse order, "
                         "to even out load drift); the table shows medians")
    ap.add_argument("--ack-ms", type=float, default=0.0,
                    help="every FUSE fsync also waits this long after the logger: a "
                         "stand-in for the backup's acknowledgement in mode: sync")
    ap.add_argument("--workloads", default="",
                    help="comma-separated subset of: " + ", ".join(n for n, _ in WORKLOADS))
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--output", type=Path, default=None,
                    help="write the section here instead of into RESULTS.md")
    a = ap.parse_args()
    if a.render_only:
        try:
            run = json.loads(JSON.read_text())
        except (OSError, ValueError) as exc:
            print(f"cannot read {JSON}: {exc}", file=sys.stderr)
            return 2
        write_section(render(run))
        return 0
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("needs root and /dev/fuse", file=sys.stderr)
        return 2
    s = QUICK if a.quick else Sizes()
    only = [w for w in a.workloads.split(",") if w]
    unknown = set(only) - {n for n, _ in WORKLOADS}
    if unknown:
        print(f"unknown workload(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    targets = [t for t in TARGETS if not a.only or any(o in t.name for o in a.only)]
    a.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    run: dict[str, Any] = {
        "command": "PYTHONPATH=. .venv/bin/python bench/fuse_binding.py"
                   + (" --quick" if a.quick else "")
                   + (f" --rounds {a.rounds}" if a.rounds != 2 else "")
                   + (f" --ack-ms {a.ack_ms:g}" if a.ack_ms else "")
                   + (f" --workloads {a.workloads}" if a.workloads else "")
                   + "".join(f" --only '{o}'" for o in a.only),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": os.cpu_count(), "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "libfuse": subprocess.run(["fusermount3", "-V"], capture_output=True, text=True,
                                  check=False).stdout.strip().split()[-1],
        "versions": versions(), "load_before": loadavg(),
        "sizes": (f"seq {s.seq_mib} MiB in 1 MiB writes + fsync; {s.rand_writes} random "
                  f"4 KiB pwrites in {s.rand_file_mib} MiB; {s.files} x 4 KiB files; "
                  f"{s.fsyncs} x (4 KiB write + fdatasync); {s.par_threads} threads x "
                  f"{s.par_fsyncs} of the same; {s.sqlite_rows} SQLite inserts; "
                  f"cap {s.cap_s:.0f} s per workload"),
        "full_counts": {"seq": s.seq_mib, "rand": s.rand_writes, "files": s.files,
                        "sqlite": s.sqlite_rows},
        "results": [],
    }
    if a.rounds < 1:
        print("--rounds must be at least 1", file=sys.stderr)
        return 2
    rounds: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    for i in range(a.rounds):
        for t in (targets if i % 2 == 0 else targets[::-1]):
            print(f"round {i + 1}: {t.name} …", flush=True)
            rounds[t.name].append(run_target(t, a.work, s, a.ack_ms, only))
    run["rounds"] = a.rounds
    run["results"] = [merge(rounds[t.name]) for t in targets]
    run["per_round"] = rounds
    run["load_after"] = loadavg()
    run["duration_s"] = time.time() - t0
    text = render(run)
    if a.output:
        a.output.write_text(text)
    else:
        JSON.write_text(json.dumps(run, indent=1) + "\n")
        write_section(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

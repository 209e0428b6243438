"""In the agent or beside it? Event-loop lateness next to a busy FUSE file system (issue 9).

An asyncio loop with a 10 ms ``call_at`` probe (as in ``bench/loopstall.py``)
stands in for the agent. The passthrough file system of ``bench/_fuse_fs.py``
runs either in a thread of that same process (``in-process``: what an in-agent
mount would be) or as its own process (``separate``), while an application
process writes a 256 MiB file in 1 MiB blocks and then creates 3,000 small
files through the mount. Printed: probe lateness p50/p99/max (ms) for each
placement and binding, and the load average.

    PYTHONPATH=. .venv/bin/python bench/fuse_gil.py [--bindings mfusepy pyfuse3]

Needs root and /dev/fuse. Takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

APP = r"""
import os, sys
root = sys.argv[1]
block = os.urandom(1 << 20)
fd = os.open(os.path.join(root, "seq.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for _ in range(256):
    os.write(fd, block)
os.fsync(fd)
os.close(fd)
os.mkdir(os.path.join(root, "small"))
for i in range(3000):
    fd = os.open(os.path.join(root, "small", f"f{i}"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, block[:4096])
    os.close(fd)
"""


async def probe_while(proc: subprocess.Popen[bytes]) -> list[float]:
    """Lateness (s) of a 10 ms periodic wake-up until ``proc`` exits."""
    loop = asyncio.get_running_loop()
    late: list[float] = []
    nxt = loop.time() + 0.01
    while proc.poll() is None:
        fut = loop.create_future()
        loop.call_at(nxt, fut.set_result, None)
        await fut
        late.append(loop.time() - nxt)
        nxt = max(nxt + 0.01, loop.time())
    return late


def wait_mount(mnt: Path) -> None:
    end = time.monotonic() + 15
    while not os.path.ismount(mnt):
        if time.monotonic() > end:
            raise RuntimeError("no mount")
        time.sleep(0.05)


def run_case(binding: str, placement: str, work: Path) -> tuple[str, list[float]]:
    import _fuse_fs

    base = work / f"{binding}-{placement}"
    shutil.rmtree(base, ignore_errors=True)
    backing, mnt = base / "b", base / "m"
    backing.mkdir(parents=True)
    mnt.mkdir()
    server = None
    thread = None
    if placement == "in-process":
        log = _fuse_fs.OpLog()
        fn = _fuse_fs.SERVERS[binding]
        thread = threading.Thread(target=fn, args=(str(backing), str(mnt), log, [], False),
                                  daemon=True)
        thread.start()
    else:
        server = subprocess.Popen([sys.executable, str(HERE / "_fuse_fs.py"), binding,
                                   str(backing), str(mnt), str(base / "stats.json")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_mount(mnt)
        app = subprocess.Popen([sys.executable, "-c", APP, str(mnt)])
        late = asyncio.run(probe_while(app))
        if app.returncode:
            raise RuntimeError(f"application failed: {app.returncode}")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        if thread is not None:
            thread.join(30)
        if server is not None:
            server.wait(30)
        shutil.rmtree(base, ignore_errors=True)
    return f"{binding}, {placement}", late


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bindings", nargs="+", default=["mfusepy", "pyfuse3"])
    ap.add_argument("--work", type=Path, default=HERE / "work" / "fuse-gil")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root and /dev/fuse", file=sys.stderr)
        return 2
    a.work.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print("| FUSE file system | probe lateness p50 / p99 / max ms | app run s |")
    print("|---|---|---|")
    for b in a.bindings:
        for placement in ("separate", "in-process"):
            t0 = time.perf_counter()
            name, late = run_case(b, placement, a.work)
            dt = time.perf_counter() - t0
            q = statistics.quantiles(late, n=100)
            print(f"| {name} | {q[49] * 1e3:.2f} / {q[98] * 1e3:.2f} / {max(late) * 1e3:.1f} "
                  f"| {dt:.1f} |", flush=True)
    print(f"load average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

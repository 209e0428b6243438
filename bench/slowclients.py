#!/usr/bin/env python3
"""Slow clients against the status API, and keepalived's probes side by side
(issue 7, item 2).

    PYTHONPATH=. .venv/bin/python bench/slowclients.py [--label after] [--rounds 20]

A real primary agent (and an async copy, as in tests/integration) on
loopback. For each attack, held for the whole phase by a separate process
that reopens every connection the agent closes, the bench runs ``--rounds``
rounds of these probes, one after the other, as keepalived would:

* ``http``: ``GET /primary?mirror=records`` with a 1 s timeout (what the
  role's old bash check did over ``/dev/tcp``: ``read -t 1``);
* ``bash-http``: the role's old check script itself (from git, commit
  ``--old-check``), if it can be found;
* ``file``: the role's current ``mirrorkit-primary-check`` (the agent's
  primary file), when the agent writes one;
* ``python``: ``mirrorkit-agent probe primary --mirror records``.

Attacks: none; N idle connections (connect, send nothing); N slowloris
connections (half a header, never finished); a flood of N concurrent
``GET /health`` at a time, repeated. Also: 64 concurrent ``POST /repair``
announcing 16 MiB and sending them, and the agent's resident memory.

Run it against old code from an old checkout's directory, with PYTHONPATH
pointing there too (the agents are started with the same interpreter, the
same PYTHONPATH and working directory, which ``python -m`` puts first)::

    git archive c8f8fa4 | tar -x -C /tmp/old && cd /tmp/old &&
        PYTHONPATH=/tmp/old python $WT/bench/slowclients.py --label before Figures, not
thresholds (bench/README.md). Prints a markdown table; ``--output`` writes it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MIRROR = "records"


def _cluster(base: Path) -> Any:
    sys.path.insert(0, str(REPO / "tests" / "integration"))
    from test_loopback import make_cluster  # the integration tests' own set-up

    c = make_cluster(base, {"node1": ("primary", None), "dr1": ("async", "dr")})
    (c.nodes["node1"].root / "a.txt").write_text("a")
    for name in c.nodes:
        c.start(name)
    return c


def _attacker(port: int, kind: str, n: int, stop: Any, counts: Any) -> None:
    """Hold ``n`` connections of ``kind`` until ``stop`` is set."""
    async def hold() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                counts["refused"] += 1
                await asyncio.sleep(0.05)
                continue
            counts["opened"] += 1
            if kind == "slowloris":
                writer.write(b"GET /health HTTP/1.1\r\nX-Slow: ")
            elif kind == "flood":
                writer.write(b"GET /health HTTP/1.1\r\n\r\n")
            try:
                data = await reader.read()
                if kind == "flood":
                    code = data.split(b" ", 2)[1].decode() if data else "none"
                    counts[f"flood {code}"] += 1
                else:
                    counts["closed by agent"] += 1
            except OSError:
                counts["reset"] += 1
            writer.close()

    async def main() -> None:
        tasks = [asyncio.create_task(hold()) for _ in range(n)]
        while not stop.is_set():
            await asyncio.sleep(0.1)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def _http_probe(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/primary?mirror={MIRROR}",
                                    timeout=1.0) as resp:
            return int(resp.status) == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _run(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=5, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _render(template: str, **values: Any) -> str:
    import jinja2

    return jinja2.Template(template, keep_trailing_newline=True).render(
        ansible_managed="bench", **values)


def _checks(work: Path, old_ref: str) -> dict[str, Path]:
    out = {}
    new = REPO / "roles/mirrorkit_vip/templates/mirrorkit-primary-check.j2"
    path = work / "check-file"
    path.write_text(_render(new.read_text(), mirrorkit_vip_check_stale_seconds=1.5))
    out["file"] = path
    old = subprocess.run(["git", "-C", str(REPO), "show",
                          f"{old_ref}:roles/mirrorkit_vip/templates/mirrorkit-primary-check.j2"],
                         capture_output=True, text=True, check=False)
    if old.returncode == 0 and "/dev/tcp" in old.stdout:
        path = work / "check-http"
        path.write_text(_render(old.stdout))
        out["bash-http"] = path
    for p in out.values():
        p.chmod(0o755)
    return out


def _probe_round(c: Any, checks: dict[str, Path], new_agent: bool) -> dict[str, tuple[bool, float]]:
    node = c.nodes["node1"]
    res: dict[str, tuple[bool, float]] = {}

    def timed(name: str, fn: Any) -> None:
        t = time.monotonic()
        ok = fn()
        res[name] = (ok, time.monotonic() - t)

    timed("http", lambda: _http_probe(node.api_port))
    if "bash-http" in checks:
        timed("bash-http", lambda: _run([str(checks["bash-http"]), MIRROR, str(node.api_port)]))
    if new_agent:
        timed("file", lambda: _run([str(checks["file"]), MIRROR,
                                    str(node.control_socket.parent)]))
    where = ["--config", str(node.config)] if new_agent else ["--api-port", str(node.api_port)]
    timed("python", lambda: _run([sys.executable, "-m", "mirrorkit.agent.entry", "probe",
                                  "primary", "--mirror", MIRROR, *where]))
    return res


def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else -1


def _big_posts(where: int | str, n: int, size: int) -> dict[str, int]:
    async def one() -> str:
        try:
            if isinstance(where, int):
                reader, writer = await asyncio.open_connection("127.0.0.1", where)
            else:
                reader, writer = await asyncio.open_unix_connection(where)
            writer.write(f"POST /repair?mirror={MIRROR} HTTP/1.1\r\n"
                         f"Content-Length: {size}\r\n\r\n".encode())
            chunk = b"x" * 65536
            for _ in range(size // len(chunk)):
                writer.write(chunk)
                await writer.drain()
            data = await asyncio.wait_for(reader.read(), 60)
            writer.close()
            return data.split(b" ", 2)[1].decode() if data else "none"
        except (OSError, TimeoutError) as exc:
            return type(exc).__name__

    async def main() -> list[str]:
        return list(await asyncio.gather(*(one() for _ in range(n))))

    codes = asyncio.run(main())
    return {c: codes.count(c) for c in set(codes)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", default="run")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--old-check", default="HEAD~0",
                    help="git commit whose mirrorkit-primary-check is the HTTP one")
    ap.add_argument("--output", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mk-slow-"))
    checks = _checks(work, args.old_check)
    c = _cluster(work / "cluster")
    node = c.nodes["node1"]
    deadline = time.monotonic() + 60
    while not _http_probe(node.api_port):
        if time.monotonic() > deadline:
            print(c.dump_logs())
            return 1
        time.sleep(0.2)
    time.sleep(1.0)
    new_agent = (node.control_socket.parent / f"{MIRROR}.primary").exists()
    attacks = [("none", "", 0), ("idle", "idle", 100), ("idle", "idle", 1000),
               ("slowloris", "slowloris", 1000), ("flood", "flood", 1000)]
    rows = []
    mgr = multiprocessing.Manager()
    try:
        for label, kind, n in attacks:
            stop = mgr.Event()
            counts = mgr.dict()
            for k in ("opened", "refused", "reset", "closed by agent"):
                counts[k] = 0
            for code in ("200", "503", "none"):
                counts[f"flood {code}"] = 0
            proc = None
            if kind:
                proc = multiprocessing.Process(target=_attacker,
                                               args=(node.api_port, kind, n, stop, counts))
                proc.start()
                time.sleep(3.0)  # let it reach n connections
            load = os.getloadavg()
            results: dict[str, list[tuple[bool, float]]] = {}
            for _ in range(args.rounds):
                for name, r in _probe_round(c, checks, new_agent).items():
                    results.setdefault(name, []).append(r)
                time.sleep(0.25)
            stop.set()
            if proc is not None:
                proc.join(30)
            rss = _rss_kib(node.proc.pid)
            attack = f"{n} {label}" if n else "none"
            for name, rs in results.items():
                ok = sum(1 for good, _ in rs if good)
                rows.append((attack, name, f"{ok}/{len(rs)}",
                             f"{max(t for _, t in rs) * 1000:.0f} ms",
                             " ".join(f"{x:.2f}" for x in load), rss,
                             ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v)))
        memory = []
        for what, where in (("the TCP API", node.api_port),
                            ("the control socket", str(node.control_socket))):
            before = _rss_kib(node.proc.pid, "VmHWM")
            posts = _big_posts(where, 64, 16 << 20)
            memory.append(f"64 concurrent `POST /repair` of 16 MiB each on {what}: answers "
                          f"{posts}; agent peak RSS (VmHWM) {before} KiB before, "
                          f"{_rss_kib(node.proc.pid, 'VmHWM')} KiB after.")
    finally:
        c.stop_all()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"### {args.label} ({now}, `nproc` {os.cpu_count()})", "",
        f"Command: `PYTHONPATH={os.environ.get('PYTHONPATH', '.')} python bench/slowclients.py "
        f"--label {args.label} --rounds {args.rounds}`", "",
        "| attack (held during the probes) | probe | succeeded | slowest | load 1/5/15 "
        "| agent RSS KiB | attacker saw |",
        "|---|---|---|---|---|---|---|",
        *(f"| {a} | {p} | {s} | {t} | {ld} | {r} | {seen} |"
          for a, p, s, t, ld, r, seen in rows),
        "",
        *(f"- {m}" for m in memory), "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

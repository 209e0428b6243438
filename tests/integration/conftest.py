"""Loopback clusters of real ``mirrorkit-agent`` processes with a real PKI."""

from __future__ import annotations

import json
import os
import signal
import socket
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

from mirrorkit.pki import ensure_mirror_pki, member_files

MIRROR = "records"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
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
    """What must be identical between primary and replica, per relative path."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode)
            else:
                out[rel] = ("file", mode, st.st_mtime_ns, p.read_bytes())
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
            [sys.executable, "-m", "mirrorkit.agent.main", "--config", str(node.config)],
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

    def mirror(self, name: str) -> dict[str, Any]:
        st = self.status(name)
        if not st:
            return {}
        m: dict[str, Any] = st["mirrors"].get(MIRROR, {})
        return m

    def converged(self, primary: str, replica: str) -> bool:
        return not differences(self.nodes[primary].root, self.nodes[replica].root)

    def dump_logs(self) -> str:
        return "\n".join(f"===== {n}\n{node.log_text()[-6000:]}" for n, node in
                         self.nodes.items())


def make_cluster(base: Path, members: dict[str, tuple[str, str | None]],
                 pki_members: dict[str, tuple[str, str]] | None = None) -> Cluster:
    """Write PKI and agent configs for ``members`` (name -> (role, kind))."""
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
        }
        if role == "arbiter":
            del mirror["paths"], mirror["targets"]
        cfg = {"host": name, "api": {"listen": "127.0.0.1", "port": free_port()},
               "state_dir": str(home / "state"), "mirrors": {MIRROR: mirror}}
        config = home / "agent.yml"
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        cluster.nodes[name] = Node(name, role, config, home / "state", root,
                                   cfg["api"]["port"], ports[name], home / "agent.log")
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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]
    return rep

"""Authenticated control with real agents on loopback (primary node1, async
dr1). A real unprivileged user (``nobody``) is refused every mutating route
through every path: the loopback TCP API (read-only), the control socket as
the agent made it (refused at connect) and the control socket with its
modes opened by mistake (refused by the peer-credential check, with a
WARNING in the agent's log). The primary starts nothing for it: no resync,
no new LSN. Root then succeeds with the same commands. Needs root."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_loopback import MIRROR, Cluster, differences, make_cluster, wait_for

from mirrorkit.agent.api.control import control_routes

pytestmark = pytest.mark.integration

NobodyRequest = Callable[[str | int, bytes], dict[str, Any]]  # tests/conftest.py


@pytest.fixture
def pair(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    # Homes that nobody may traverse (pytest's tmp_path is 0700), so that
    # what refuses it is the agent's own socket directory and socket modes.
    base = Path(tempfile.mkdtemp(prefix="mk-control-"))
    base.chmod(0o755)
    c = make_cluster(base, {"node1": ("primary", None), "dr1": ("async", "dr")})
    root = c.nodes["node1"].root
    (root / "a.txt").write_text("a")
    for name in c.nodes:
        c.start(name)
    wait_for(lambda: c.converged("node1", "dr1"), "first copy")
    wait_for(lambda: c.nodes["node1"].control_socket.exists(), "control socket")
    yield c
    c.stop_all()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(c.dump_logs())
    shutil.rmtree(base)


def http_post(target: str, body: bytes = b"") -> bytes:
    return f"POST {target} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def code_of(answer: str) -> int:
    return int(answer.split(" ", 2)[1])


def agent(argv: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*argv, "-m", "mirrorkit.agent.cli.main", *args], cwd="/",
                          capture_output=True, text=True, timeout=120, check=False)


def primary_view(c: Cluster) -> tuple[int, Any]:
    """(primary's LSN, its view of dr1's resync)."""
    m = c.mirror("node1")
    return int(m["lsn"]), m["peers"]["dr1"]["resync"]


def test_nobody_is_refused_every_mutating_route_and_root_succeeds(
        pair: Cluster, as_nobody: list[str], nobody_request: NobodyRequest) -> None:
    c = pair
    node1 = c.nodes["node1"]
    sock, config = node1.control_socket, str(node1.config)
    path = str(node1.root / "a.txt")
    routes = sorted(control_routes({}))
    assert routes == ["/maintenance", "/promote", "/repair", "/resync", "/switchover"], \
        "a new control route needs its root case below"
    before = primary_view(c)
    assert before[1] is None  # no resync yet
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    body = json.dumps({"paths": [path]}).encode()
    commands = [["resync", "--mirror", MIRROR, "--member", "dr1"],
                ["repair", "--mirror", MIRROR, path],
                ["maintenance", "on", "--mirror", MIRROR],
                ["switchover", "--mirror", MIRROR, "--at", "+1h"],
                ["promote", "--mirror", MIRROR, "--force"]]

    # 1. The loopback TCP API: GET works for anyone, every POST is refused.
    got = nobody_request(node1.api_port, b"GET /health HTTP/1.1\r\n\r\n")
    assert code_of(got["answer"]) == 200
    for route in routes:
        got = nobody_request(node1.api_port, http_post(f"{route}?mirror={MIRROR}", body))
        assert code_of(got["answer"]) == 405 and str(sock) in got["answer"], got
    # 2. The control socket as the agent made it: refused at connect.
    for route in routes:
        got = nobody_request(str(sock), http_post(f"{route}?mirror={MIRROR}", body))
        assert got["connect"] == "EACCES", got
    for command in commands:
        proc = agent(as_nobody, "--config", config, *command)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"must be run as root: the control socket {sock} is root-only" in proc.stderr
        assert "Traceback" not in proc.stderr
    # 3. Modes opened by mistake: the peer-credential check still refuses.
    sock.parent.chmod(0o755)
    sock.chmod(0o666)
    refused = []
    for route in routes:
        got = nobody_request(str(sock), http_post(f"{route}?mirror={MIRROR}", body))
        assert got["connect"] == "ok" and code_of(got["answer"]) == 403, got
        refused.append(got)
    for command in commands:
        proc = agent(as_nobody, "--config", config, *command)
        assert proc.returncode == 1 and "must be run as root" in proc.stderr, proc.stderr
    log = node1.log_text()
    for got in refused:
        assert f"refused uid {got['uid']} (pid {got['pid']})" in log
    assert primary_view(c) == before  # nothing started, nothing re-sent
    m = c.mirror("node1")
    assert m["maintenance"] is False and m["ha"]["scheduled_switchover"] is None
    assert m["role"] == "primary" and m["term"] == 1

    # Root: the same commands succeed.
    sock.parent.chmod(0o700)
    sock.chmod(0o600)
    root = [sys.executable]
    proc = agent(root, "--config", config, "resync", "--mirror", MIRROR, "--member", "dr1",
                 "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rid = json.loads(proc.stdout)["resyncs"]["dr1"]
    wait_for(lambda: (primary_view(c)[1] or {}).get("id") == rid
             and primary_view(c)[1]["state"] == "done", "root's resync done")
    proc = agent(root, "--config", config, "repair", "--mirror", MIRROR, path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["resent"] == [path]
    assert primary_view(c)[0] > before[0]
    wait_for(lambda: differences(node1.root, c.nodes["dr1"].root) == [], "replica matches")
    proc = agent(root, "--config", config, "maintenance", "on", "--mirror", MIRROR)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert c.mirror("node1")["maintenance"] is True
    proc = agent(root, "--config", config, "maintenance", "off", "--mirror", MIRROR)
    assert proc.returncode == 0 and c.mirror("node1")["maintenance"] is False
    proc = agent(root, "--config", config, "switchover", "--mirror", MIRROR, "--at", "+1h")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert c.mirror("node1")["ha"]["scheduled_switchover"] is not None
    proc = agent(root, "--config", config, "switchover", "--mirror", MIRROR, "--cancel")
    assert proc.returncode == 0 and c.mirror("node1")["ha"]["scheduled_switchover"] is None
    # root gets the agent's own refusal: node1 is the primary, not a backup
    proc = agent(root, "--config", config, "promote", "--mirror", MIRROR, "--force")
    assert proc.returncode == 1 and "not a backup or DR copy" in proc.stderr, proc.stderr


def test_the_status_api_stays_open_to_everyone(pair: Cluster,
                                               nobody_request: NobodyRequest) -> None:
    # keepalived, load balancers and Prometheus read it as whatever user they run as.
    c = pair
    port = c.nodes["node1"].api_port
    for path in ("/health", f"/primary?mirror={MIRROR}", "/status", "/metrics"):
        got = nobody_request(port, f"GET {path} HTTP/1.1\r\n\r\n".encode())
        assert code_of(got["answer"]) == 200, got
    got = nobody_request(c.nodes["dr1"].api_port,
                         f"GET /replica?mirror={MIRROR} HTTP/1.1\r\n\r\n".encode())
    assert code_of(got["answer"]) == 200, got
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
        assert json.loads(resp.read())["mirrors"][MIRROR]["role"] == "primary"


def test_a_restarted_agent_takes_over_its_stale_socket(pair: Cluster) -> None:
    c = pair
    node1 = c.nodes["node1"]
    c.stop("node1", sig=9)  # SIGKILL: the socket file stays behind
    assert node1.control_socket.exists()
    c.start("node1")
    wait_for(lambda: c.mirror("node1").get("role") == "primary", "node1 back")
    proc = agent([sys.executable], "--config", str(node1.config), "resync", "--mirror",
                 MIRROR, "--member", "dr1", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr + node1.log_text()[-3000:]
    c.stop("node1")
    assert not node1.control_socket.exists()  # a clean stop removes it

"""The status API, the probe and the control socket of a real primary agent
under hostile local clients (issue 7, items 2, 3 and 4): idle and
half-sent connections, a thousand requests at once, oversized and nested
bodies. Outcomes and memory are asserted, never timings."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
from test_loopback import MIRROR, Cluster, make_cluster, wait_for

from mirrorkit.agent.api.control import REPAIR_MAX_BODY, REPAIR_MAX_PATHS
from mirrorkit.agent.util.primary_file import STALE_SECONDS

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "roles/mirrorkit_vip/templates/mirrorkit-primary-check.j2"


@pytest.fixture
def primary(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = make_cluster(tmp_path, {"node1": ("primary", None), "dr1": ("async", "dr")})
    (c.nodes["node1"].root / "a.txt").write_text("a")
    for name in c.nodes:
        c.start(name)
    wait_for(lambda: c.code("node1", f"/primary?mirror={MIRROR}") == 200, "node1 primary")
    wait_for(lambda: c.nodes["node1"].control_socket.exists(), "control socket")
    yield c
    c.stop_all()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(c.dump_logs())


def rss_kib(c: Cluster) -> int:
    proc = c.nodes["node1"].proc
    assert proc is not None
    text = Path(f"/proc/{proc.pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    assert match
    return int(match.group(1))


def bash_check(tmp_path: Path) -> Path:
    path = tmp_path / "mirrorkit-primary-check"
    path.write_text(jinja2.Template(TEMPLATE.read_text(), keep_trailing_newline=True).render(
        ansible_managed="test", mirrorkit_vip_check_stale_seconds=STALE_SECONDS,
        mirrorkit_vip_check_wait=0.8))
    path.chmod(0o755)
    return path


def probes(c: Cluster, check: Path) -> list[int]:
    """One Python probe and one bash check: their exit statuses."""
    node = c.nodes["node1"]
    python = subprocess.run([sys.executable, "-m", "mirrorkit.agent.entry", "probe", "primary",
                             "--mirror", MIRROR, "--config", str(node.config), "--verbose"],
                            capture_output=True, text=True, timeout=60, check=False)
    print("probe:", python.stdout.strip())
    shell = subprocess.run([str(check), MIRROR, str(node.control_socket.parent)],
                           capture_output=True, timeout=60, check=False).returncode
    return [python.returncode, shell]


def open_idle(port: int, n: int, half: bool) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        if half:
            s.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")  # slowloris: never finished
        out.append(s)
    return out


def test_probes_and_health_answer_under_idle_and_half_sent_connections(
        primary: Cluster, tmp_path: Path) -> None:
    check = bash_check(tmp_path)
    port = primary.nodes["node1"].api_port
    # The primary file follows /primary within one write interval.
    wait_for(lambda: probes(primary, check) == [0, 0], "the probes to pass", timeout=30)
    held = open_idle(port, 200, half=False) + open_idle(port, 200, half=True)
    try:
        results = [probes(primary, check) for _ in range(8)]
        codes = [primary.code("node1", p)
                 for p in ("/health", f"/primary?mirror={MIRROR}") * 10]
    finally:
        for s in held:
            s.close()
    assert results == [[0, 0]] * 8
    # The old API (64 connections, then 503) answered 503 here.
    assert codes == [200] * 20


def test_a_thousand_requests_at_once_are_all_answered_200(primary: Cluster) -> None:
    port = primary.nodes["node1"].api_port

    async def one() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 120)
        writer.close()
        return int(data.split(b" ", 2)[1]) if data else 0

    async def main() -> list[int]:
        return list(await asyncio.gather(*(one() for _ in range(1000))))

    codes = asyncio.run(main())
    assert codes.count(200) == 1000, {c: codes.count(c) for c in set(codes)}


async def post_head(where: str | int, target: str, length: int, send: int) -> bytes:
    """Announce a body of ``length`` bytes, send ``send`` of them, read the answer."""
    if isinstance(where, int):
        reader, writer = await asyncio.open_connection("127.0.0.1", where)
    else:
        reader, writer = await asyncio.open_unix_connection(where)
    writer.write(f"POST {target} HTTP/1.1\r\nContent-Length: {length}\r\n\r\n".encode())
    writer.write(b"x" * send)
    with_answer = await asyncio.wait_for(reader.read(), 60)
    writer.close()
    return with_answer


def test_oversized_posts_are_refused_unread_and_leave_memory_alone(primary: Cluster) -> None:
    node = primary.nodes["node1"]
    before = rss_kib(primary)
    target = f"/repair?mirror={MIRROR}"

    async def main() -> list[bytes]:
        tcp = [post_head(node.api_port, target, 16 << 20, 1 << 20) for _ in range(64)]
        unix = [post_head(str(node.control_socket), target, 16 << 20, 1 << 20)
                for _ in range(64)]
        return list(await asyncio.gather(*tcp, *unix))

    answers = asyncio.run(main())
    after = rss_kib(primary)
    tcp, unix = answers[:64], answers[64:]
    assert all(a.startswith(b"HTTP/1.1 405 ") for a in tcp), tcp[0][:200]
    assert all(a.startswith(b"HTTP/1.1 413 ") for a in unix), unix[0][:200]
    message = json.loads(unix[0].partition(b"\r\n\r\n")[2])["error"]
    assert f"over the limit of {REPAIR_MAX_BODY} bytes for POST /repair" in message
    # 128 x 16 MiB announced, 128 MiB sent: the old agent read it all (1.5 GB
    # resident after 64 POSTs). Generous: 64 MiB of growth.
    assert after - before < 64 * 1024, (before, after)
    assert primary.code("node1", "/health") == 200


def control_post(c: Cluster, target: str, body: bytes) -> tuple[int, dict[str, Any]]:
    async def main() -> bytes:
        reader, writer = await asyncio.open_unix_connection(str(c.nodes["node1"].control_socket))
        writer.write(f"POST {target} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                     + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 120)
        writer.close()
        return data

    data = asyncio.run(main())
    head, _, answer = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(answer)


def test_repair_and_resync_bodies_are_validated_with_a_400_and_no_traceback(
        primary: Cluster) -> None:
    root = primary.nodes["node1"].root
    repair = f"/repair?mirror={MIRROR}"
    nested = b'{"paths": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    cases = {
        "nested": (repair, nested, "nests 1001 levels deep; at most 32"),
        "not json": (repair, b"{paths: 1}", "not valid JSON"),
        "array": (repair, b'["/a"]', "not an object"),
        "unknown key": (repair, b'{"paths": [], "force": true}', "unknown key(s) 'force'"),
        "paths type": (repair, b'{"paths": "/a"}', "'paths' must be a list"),
        "path type": (repair, b'{"paths": [1]}', "paths[0] is a int, not a string"),
        "relative": (repair, b'{"paths": ["a.txt"]}', "paths[0] must be an absolute path"),
        "nul": (repair, b'{"paths": ["/a\\u0000b"]}', "without NUL"),
        "surrogate": (repair, b'{"paths": ["/a\\ud800"]}', "not a file name"),
        "long path": (repair, json.dumps({"paths": ["/" + "p" * 4096]}).encode(),
                      "longer than 4096"),
        "too many": (repair, json.dumps({"paths": ["/a"] * (REPAIR_MAX_PATHS + 1)}).encode(),
                     f"at most {REPAIR_MAX_PATHS} per request"),
        "nan": (repair, b'{"paths": NaN}', "NaN is not a number JSON allows"),
    }
    answers = {name: control_post(primary, target, body)
               for name, (target, body, _) in cases.items()}
    resync = control_post(primary, f"/resync?mirror={MIRROR}", b"{}")
    for name, (code, answer) in answers.items():
        assert code == 400, (name, answer)
        assert cases[name][2] in answer["error"], (name, answer)
    assert resync[0] == 413 and "limit of 0 bytes for POST /resync" in resync[1]["error"]
    # A body at the limit is read and served; one byte more is 413.
    path = json.dumps(str(root / "a.txt"))
    at_limit = f'{{"paths": [{path}]}}'.encode()
    at_limit += b" " * (REPAIR_MAX_BODY - len(at_limit))
    code, answer = control_post(primary, repair, at_limit)
    assert code == 200 and answer["resent"] == [str(root / "a.txt")]
    code, answer = control_post(primary, repair, at_limit + b" ")
    assert code == 413 and f"limit of {REPAIR_MAX_BODY} bytes" in answer["error"]
    log = primary.nodes["node1"].log_text()
    assert "Traceback" not in log and "unexpected error" not in log
    assert primary.code("node1", "/health") == 200

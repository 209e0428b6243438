"""keepalived's probe, against the real status API on loopback."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mirrorkit.agent.api.http import start_api
from mirrorkit.agent.cli.probe import api_port_from

ROLES = {"records": "primary", "orders": "backup"}


def status() -> dict[str, Any]:
    return {"host": "node1", "mirrors": {
        name: {"role": role, "term": 1, "fenced": False, "alive": True, "connected": True,
               "primary": "node1" if role == "primary" else "node2", "lag_seconds": 0.0}
        for name, role in ROLES.items()}}


@pytest.fixture
def api_port() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        server = await start_api("127.0.0.1", 0, status)
        holder["port"] = server.sockets[0].getsockname()[1]
        holder["server"] = server
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(serve()),
                                              loop.run_forever()), daemon=True)
    thread.start()
    assert started.wait(10)
    yield int(holder["port"])
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mirrorkit.agent.entry", "probe", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_primary_of_the_mirror_is_0_anything_else_1(api_port: int) -> None:
    port = str(api_port)
    assert probe("primary", "--mirror", "records", "--api-port", port).returncode == 0
    assert probe("primary", "--mirror", "orders", "--api-port", port).returncode == 1
    assert probe("primary", "--mirror", "nosuch", "--api-port", port).returncode == 1


def test_no_agent_answering_is_never_primary(api_port: int) -> None:
    closed = str(api_port + 1 if api_port < 65535 else api_port - 1)
    assert probe("primary", "--mirror", "records", "--api-port", closed).returncode == 1


def test_probe_path_does_not_load_the_agent(api_port: int) -> None:
    code = (
        "import sys; from mirrorkit.agent.entry import main; "
        f"rc = main(['probe', 'primary', '--mirror', 'records', '--api-port', '{api_port}']); "
        "print(rc, 'mirrorkit.agent.cli.main' in sys.modules, 'asyncio' in sys.modules, "
        "'prometheus_client' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == ["0", "False", "False", "False"]


def test_api_port_comes_from_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yml"
    cfg.write_text("host: node1\napi: {listen: 127.0.0.1, port: 7555}\n")
    assert api_port_from(cfg) == 7555
    assert api_port_from(tmp_path / "missing.yml") == 7480
    cfg.write_text(": not yaml [")
    assert api_port_from(cfg) == 7480


def test_usage_error_is_2() -> None:
    assert probe("primary").returncode == 2

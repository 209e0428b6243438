"""The root-only control socket: file modes, peer credentials, routing, and
the agent commands' client. A real unprivileged user (``nobody`` through
``runuser``, fixture ``as_nobody``) is refused at connect by the file modes
and, when those are opened by mistake, by the peer-credential check."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mirrorkit.agent.api.control import REPAIR_MAX_BODY, RESYNC_PARAMS, control_routes
from mirrorkit.agent.api.control_socket import ControlRoute, ControlSocket, start_control

T = TypeVar("T")
Calls = list[tuple[str, dict[str, str], bytes]]
NobodyRequest = Callable[[str | int, bytes], dict[str, Any]]  # tests/conftest.py

@pytest.fixture
def base() -> Iterator[Path]:
    """A directory ``nobody`` can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="mk-control-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def recording_routes(calls: Calls) -> dict[str, ControlRoute]:
    def route(name: str, params: tuple[str, ...], max_body: int = 0) -> ControlRoute:
        async def handler(query: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
            calls.append((name, query, body))
            return 200, {"route": name, "params": query}
        return ControlRoute(params, handler, max_body)

    return {"/resync": route("/resync", RESYNC_PARAMS),
            "/repair": route("/repair", ("mirror",), REPAIR_MAX_BODY)}


def serve(path: Path, calls: Calls, test: Callable[[ControlSocket], Awaitable[T]],
          allowed: frozenset[int] | None = None) -> T:
    async def main() -> T:
        control = await start_control(path, recording_routes(calls), allowed)
        try:
            return await test(control)
        finally:
            control.close()
            await control.wait_closed()

    return asyncio.run(main())


async def exchange(path: Path, raw: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return parse(data.decode())


def parse(text: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, json.loads(body)


def post(target: str, body: bytes = b"") -> bytes:
    return f"POST {target} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


async def run(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd="/", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_socket_is_0600_in_a_0700_directory_and_removed_on_close(base: Path) -> None:
    path = base / "run" / "control.sock"

    async def check(control: ControlSocket) -> None:
        assert stat.S_ISSOCK(path.lstat().st_mode)
        assert stat.S_IMODE(path.lstat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert path.lstat().st_uid == os.geteuid()

    serve(path, [], check)
    assert not path.exists()


def test_routes_params_and_errors_on_the_socket(base: Path) -> None:
    path = base / "control.sock"
    calls: Calls = []

    async def check(control: ControlSocket) -> list[tuple[int, dict[str, str], dict[str, Any]]]:
        return [await exchange(path, raw) for raw in (
            post("/resync?mirror=records&member=dr1"),
            post("/repair?mirror=records", b'{"paths": ["/srv/a"]}'),
            post("/switchover?mirror=records"),
            b"GET /status HTTP/1.1\r\n\r\n",
            post("/resync?mirror=records&lagg=1"),
            b"POST /repair HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (REPAIR_MAX_BODY + 1),
            b"garbage\r\n\r\n",
        )]

    answers = serve(path, calls, check)
    assert [a[0] for a in answers] == [200, 200, 404, 405, 400, 413, 400]
    assert answers[0][2] == {"route": "/resync", "params": {"mirror": "records", "member": "dr1"}}
    assert "known: /repair, /resync" in answers[2][2]["error"]
    assert answers[3][1]["allow"] == "POST"
    assert "unknown parameter 'lagg'" in answers[4][2]["error"]
    assert calls == [("/resync", {"mirror": "records", "member": "dr1"}, b""),
                     ("/repair", {"mirror": "records"}, b'{"paths": ["/srv/a"]}')]


def test_a_uid_not_allowed_is_refused_with_403_and_one_warning(
        base: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The credential check on its own (no other user needed): this process's
    # uid is not in the allowed set.
    path = base / "control.sock"
    calls: Calls = []

    async def check(control: ControlSocket) -> tuple[int, dict[str, str], dict[str, Any]]:
        return await exchange(path, post("/resync?mirror=records"))

    with caplog.at_level(logging.WARNING, logger="mirrorkit.agent.api.control_socket"):
        code, _, answer = serve(path, calls, check, allowed=frozenset({os.geteuid() + 1}))
    assert code == 403 and calls == []
    assert f"uid {os.geteuid()} may not use the control socket" in answer["error"]
    [record] = caplog.records
    assert record.levelname == "WARNING"
    assert f"refused uid {os.geteuid()} (pid {os.getpid()})" in record.getMessage()


def test_nobody_cannot_even_connect_with_the_socket_s_modes(
        base: Path, nobody_request: NobodyRequest) -> None:
    path = base / "run" / "control.sock"
    calls: Calls = []

    async def check(control: ControlSocket) -> dict[str, Any]:
        return await asyncio.to_thread(nobody_request, str(path),
                                       post("/resync?mirror=records"))

    got = serve(path, calls, check)
    assert got["uid"] != 0 and got["connect"] == "EACCES" and calls == []


def test_nobody_is_refused_by_credentials_when_the_modes_are_opened(
        base: Path, nobody_request: NobodyRequest, caplog: pytest.LogCaptureFixture) -> None:
    path = base / "run" / "control.sock"
    calls: Calls = []
    routes = sorted(recording_routes([]))

    async def check(control: ControlSocket) -> list[dict[str, Any]]:
        path.parent.chmod(0o755)  # an operator's mistake: both locks opened
        path.chmod(0o666)
        answers = []
        for route in routes:
            answers.append(await asyncio.to_thread(
                nobody_request, str(path), post(f"{route}?mirror=records", b"{}")))
        return answers

    with caplog.at_level(logging.WARNING, logger="mirrorkit.agent.api.control_socket"):
        answers = serve(path, calls, check)
    assert calls == []
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == len(routes)
    for got, warning in zip(answers, warnings, strict=True):
        assert got["connect"] == "ok"
        code, _, answer = parse(got["answer"])
        assert code == 403 and "only root may change replication state" in answer["error"]
        assert f"refused uid {got['uid']} (pid {got['pid']})" in warning


def test_every_agent_route_is_behind_the_socket() -> None:
    # The one table of mutating routes: whatever it holds is served only by
    # start_control, whose credential check is tested above.
    assert set(control_routes({})) == {"/resync", "/repair", "/maintenance", "/switchover",
                                       "/promote"}


def test_agent_commands_as_nobody_say_they_need_root(
        base: Path, as_nobody: list[str]) -> None:
    path = base / "run" / "control.sock"
    calls: Calls = []
    agent = [*as_nobody, "-m", "mirrorkit.agent.cli.main", "--config", "/nonexistent.yml"]
    commands = [["resync", "--mirror", "records", "--control-socket", str(path)],
                ["repair", "--mirror", "records", "--control-socket", str(path), "/srv/a"]]

    async def check(control: ControlSocket) -> list[tuple[int, str, str]]:
        results = [await run(*agent, *c) for c in commands]  # refused at connect
        path.parent.chmod(0o755)
        path.chmod(0o666)
        return results + [await run(*agent, *c) for c in commands]  # refused by credentials

    for code, out, err in serve(path, calls, check):
        assert code == 1, out + err
        assert f"must be run as root: the control socket {path} is root-only" in err, err
        assert "Traceback" not in err
    assert calls == []


def test_agent_commands_as_root_post_to_the_socket(base: Path) -> None:
    path = base / "control.sock"
    calls: Calls = []
    agent = [sys.executable, "-m", "mirrorkit.agent.cli.main", "--config", "/nonexistent.yml"]

    async def check(control: ControlSocket) -> list[tuple[int, str, str]]:
        return [await run(*agent, "resync", "--mirror", "records", "--member", "dr1",
                          "--json", "--control-socket", str(path)),
                await run(*agent, "repair", "--mirror", "records", "--control-socket",
                          str(path), "/srv/a", "/srv/b")]

    (rc1, out1, err1), (rc2, out2, err2) = serve(path, calls, check)
    assert calls[0] == ("/resync", {"mirror": "records", "member": "dr1", "mode": "checksum",
                                    "keep_orphans": "0"}, b"")
    assert calls[1] == ("/repair", {"mirror": "records"}, b'{"paths": ["/srv/a", "/srv/b"]}')
    assert rc1 == rc2 == 0, err1 + err2
    assert json.loads(out1)["route"] == "/resync"
    # repair prints the answers of its requests merged (here: one, with no paths re-sent)
    assert json.loads(out2) == {"resent": [], "not_on_primary": [], "refused": [], "ops": 0,
                                "lsn": 0}


def test_no_agent_is_a_clear_error(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    for args in (["resync", "--mirror", "m"], ["repair", "--mirror", "m", "/a"]):
        got = subprocess.run([sys.executable, "-m", "mirrorkit.agent.cli.main", *args,
                              "--control-socket", str(sock)],
                             capture_output=True, text=True, timeout=60, check=False)
        assert got.returncode == 1
        assert f"no control socket at {sock}: is mirrorkit-agent running" in got.stderr
        assert "Traceback" not in got.stderr
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(sock))  # a socket file nobody listens on
    dead.close()
    got = subprocess.run([sys.executable, "-m", "mirrorkit.agent.cli.main", "resync",
                          "--mirror", "m", "--control-socket", str(sock)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert got.returncode == 1 and "nothing listens on the control socket" in got.stderr


def test_a_stale_socket_is_replaced_a_live_one_or_a_file_is_not(base: Path) -> None:
    path = base / "control.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # an agent that died left its socket file
    stale.close()

    async def second_agent(control: ControlSocket) -> str:
        with pytest.raises(OSError) as exc:
            await start_control(path, {})
        return str(exc.value)

    assert "in use by another running agent" in serve(path, [], second_agent)
    path.write_text("not a socket")

    async def first(control: ControlSocket) -> None:
        raise AssertionError("must not start")

    with pytest.raises(OSError, match="exists and is not a socket"):
        serve(path, [], first)
    assert path.read_text() == "not a socket"


def test_the_controller_shows_the_agent_s_refusal() -> None:
    # `mirrorkit resync` / `mirrorkit verify --repair` over SSH as a user who is not root
    from rich.console import Console

    from mirrorkit.commands.resync import follow
    from mirrorkit.commands.verify import repair_answer
    from mirrorkit.verification import VerifyFailed

    refusal = ("mirrorkit-agent: must be run as root: the control socket "
               "/run/mirrorkit/control.sock is root-only (Permission denied)")
    console = Console(record=True, width=200)
    code = follow(lambda cmd: (1, json.dumps({"error": refusal[17:]}) + "\n", refusal + "\n"),
                  "agent resync ...", "agent status --json", "records", console)
    assert code == 1 and "resync refused: must be run as root" in console.export_text()
    with pytest.raises(VerifyFailed, match="repair on node1 refused: must be run as root"):
        repair_answer("node1", 1, json.dumps({"error": refusal[17:]}), refusal)
    with pytest.raises(VerifyFailed, match="repair on node1 refused: mirrorkit-agent: boom"):
        repair_answer("node1", 1, "", "mirrorkit-agent: boom\n")
    result = {"resent": [], "not_on_primary": ["/srv/x"], "refused": [], "ops": 0, "lsn": 9}
    assert repair_answer("node1", 1, json.dumps(result), "") == result  # a result, not a refusal

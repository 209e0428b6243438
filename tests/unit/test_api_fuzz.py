"""Property tests of the agent's HTTP request parser and routing
(api/server.py, api/http.py, api/control_socket.py): random bytes and
near-valid requests, through a real StreamReader and through real sockets
to in-process servers. Every answer is one well-formed HTTP response whose
code is a 2xx/4xx/5xx and never 500 for a client's garbage; nothing
escapes the parser but BadRequest."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirrorkit.agent.api.control import control_routes, repair_paths
from mirrorkit.agent.api.control_socket import start_control
from mirrorkit.agent.api.http import start_api
from mirrorkit.agent.api.server import BadRequest, Limits, Request, read_head

pytestmark = pytest.mark.fuzz

_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5]\d\d) [A-Za-z ]+\r\n")
CLIENT_CODES = {200, 400, 403, 404, 405, 408, 409, 413, 414, 431, 501, 503}


def status() -> dict[str, Any]:
    return {"host": "node1", "mirrors": {"records": {
        "role": "primary", "term": 1, "fenced": False, "alive": True, "connected": True,
        "lag_seconds": 0.0}}}


# -- near-valid requests -----------------------------------------------------

METHODS = st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "get", "G ET", "", "GET\x00"])
PATHS = st.sampled_from(["/health", "/primary", "/replica", "/status", "/metrics", "/resync",
                         "/repair", "/", "", "health", "//", "/%00", "/health/.."])
QUERY = st.lists(st.tuples(st.sampled_from(["mirror", "lag", "member", "mode", "keep_orphans",
                                            "x", "", "mirror"]),
                           st.sampled_from(["records", "", "nosuch", "5", "-1", "nan", "inf",
                                            "1e999", "%zz", "checksum", "0", "1"])),
                 max_size=4)
VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 x", "http/1.1", ""])
HEADER_NAMES = st.sampled_from(["Host", "Content-Length", "content-length", "Transfer-Encoding",
                                "X", " Bad", "", "Content-Length "])
HEADER_VALUES = st.sampled_from(["", "0", "5", "18446744073709551616", "-1", " 3 ", "chunked",
                                 "x" * 100, "1,2", "\x7f"])
BODIES = st.sampled_from([b"", b"{}", b'{"paths": []}', b'{"paths": ["/a"]}', b"[" * 200,
                          b'{"paths": [1]}', b"\xff\xfe", b'{"paths": NaN}'])
EOL = st.sampled_from(["\r\n", "\n", "\r"])


@st.composite
def near_valid(draw: st.DrawFn) -> bytes:
    query = "&".join(f"{k}={v}" for k, v in draw(QUERY))
    target = draw(PATHS) + ("?" + query if query else "")
    eol = draw(EOL)
    lines = [f"{draw(METHODS)} {target} {draw(VERSIONS)}"]
    lines += [f"{n}: {v}" for n, v in draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES),
                                                    max_size=5))]
    raw = (eol.join(lines) + eol + eol).encode("latin-1")
    return raw + draw(BODIES)


REQUESTS = st.one_of(near_valid(), st.binary(max_size=400),
                     st.builds(lambda a, b: a + b, near_valid(), st.binary(max_size=50)))


# -- the parser alone, through a real StreamReader -----------------------------

def parse(data: bytes) -> Request | BadRequest:
    async def main() -> Request | BadRequest:
        reader = asyncio.StreamReader(limit=64 * 1024)
        reader.feed_data(data)
        reader.feed_eof()
        try:
            return await read_head(reader)
        except BadRequest as exc:
            return exc

    return asyncio.run(main())


@given(REQUESTS)
def test_the_parser_returns_a_request_or_says_why(data: bytes) -> None:
    out = parse(data)
    if isinstance(out, BadRequest):
        assert out.code in (400, 414, 431, 501) and str(out)
    else:
        assert out.method.isalpha() and out.target.startswith("/") and out.length >= 0


# -- whole servers, over real sockets ------------------------------------------

class _Servers:
    """The status API and a control socket with the agent's real routes (no
    mirror running: every route answers from its validation or 404), on a
    loop in a thread of their own."""

    def __init__(self, base: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.control = base / "control.sock"
        ready = threading.Event()

        async def start() -> None:
            limits = Limits(head_timeout=5.0)
            self.api = await start_api("127.0.0.1", 0, status, str(self.control),
                                       limits=limits)
            self.port = self.api.sockets[0].getsockname()[1]
            self.ctl = await start_control(self.control, control_routes({}))
            ready.set()

        self.thread = threading.Thread(
            target=lambda: (self.loop.run_until_complete(start()), self.loop.run_forever()),
            daemon=True)
        self.thread.start()
        assert ready.wait(30)

    def close(self) -> None:
        async def stop() -> None:
            self.api.close()
            self.ctl.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture(scope="module")
def servers() -> Iterator[_Servers]:
    with tempfile.TemporaryDirectory(prefix="mk-fuzz-") as base:
        s = _Servers(Path(base))
        yield s
        s.close()


def exchange(family: int, where: Any, data: bytes) -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(where)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed before all was sent
            pass
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


def check_answer(answer: bytes) -> int:
    m = _STATUS_LINE.match(answer)
    assert m, answer[:200]
    head, sep, body = answer.partition(b"\r\n\r\n")
    assert sep
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert int(headers[b"Content-Length"]) == len(body)
    assert headers[b"Connection"] == b"close"
    code = int(m.group(1))
    assert code in CLIENT_CODES, answer[:300]
    if body:
        json.loads(body)
    assert b"Traceback" not in body
    return code


# A socket round trip per example: three quarters of the profile's count
# (150 in `make test`, 15,000 in `make fuzz`).
SOCKET_EXAMPLES = settings(max_examples=settings.default.max_examples * 3 // 4)


@SOCKET_EXAMPLES
@given(REQUESTS)
def test_the_status_api_answers_every_request_well_formed(servers: _Servers,
                                                          data: bytes) -> None:
    answer = exchange(socket.AF_INET, ("127.0.0.1", servers.port), data)
    check_answer(answer)


@SOCKET_EXAMPLES
@given(REQUESTS)
def test_the_control_socket_answers_every_request_well_formed(servers: _Servers,
                                                              data: bytes) -> None:
    answer = exchange(socket.AF_UNIX, str(servers.control), data)
    check_answer(answer)


# -- /repair's body -------------------------------------------------------------

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20)


@given(st.one_of(st.binary(max_size=300),
                 JSONISH.map(lambda v: json.dumps(v).encode()),
                 JSONISH.map(lambda v: json.dumps({"paths": v}).encode()),
                 st.lists(st.text(max_size=30), max_size=5).map(
                     lambda p: json.dumps({"paths": p}).encode())))
def test_a_repair_body_is_a_list_of_paths_or_a_value_error(body: bytes) -> None:
    try:
        paths = repair_paths(body)
    except ValueError as exc:
        assert str(exc)
    else:
        assert all(isinstance(p, str) and p.startswith("/") for p in paths)

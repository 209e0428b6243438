"""The bounds of the agent's HTTP server (api/server.py), each at the bound
and one past it, over real loopback sockets to an in-process server."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from mirrorkit.agent.api.http import start_api
from mirrorkit.agent.api.server import (
    HEAD_LIMIT,
    LINE_LIMIT,
    MAX_HEADERS,
    HttpServer,
    Limits,
    Listener,
    Request,
    Response,
    error_body,
    json_body,
    listen_tcp,
)

T = TypeVar("T")


def status() -> dict[str, Any]:
    return {"host": "node1", "mirrors": {"records": {
        "role": "primary", "term": 1, "fenced": False, "alive": True}}}


def with_api(test: Callable[[int, Listener], Awaitable[T]],
             limits: Limits | None = None) -> T:
    async def main() -> T:
        listener = await start_api("127.0.0.1", 0, status, limits=limits)
        try:
            return await test(listener.sockets[0].getsockname()[1], listener)
        finally:
            listener.close()
            await listener.wait_closed()

    return asyncio.run(main())


async def exchange(port: int, raw: bytes) -> tuple[int, dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return parse(data)


def parse(data: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = data.partition(b"\r\n\r\n")
    code = int(head.split(b" ", 2)[1])
    return code, (json.loads(body) if body.startswith(b"{") else {})


def request(target: str = "/health", headers: list[str] | None = None) -> bytes:
    lines = [f"GET {target} HTTP/1.1", *(headers or []), "", ""]
    return "\r\n".join(lines).encode()


def test_request_line_at_the_limit_is_read_one_past_is_414() -> None:
    def line_of(n: int) -> bytes:
        # "GET /aaa… HTTP/1.1": n bytes without the CRLF
        return request("/" + "a" * (n - len("GET / HTTP/1.1")))

    async def test(port: int, _: Listener) -> list[tuple[int, dict[str, Any]]]:
        return [await exchange(port, line_of(LINE_LIMIT)),
                await exchange(port, line_of(LINE_LIMIT + 1))]

    (at, _), (past, body) = with_api(test)
    assert at == 404  # read and routed: no such endpoint
    assert past == 414 and f"longer than {LINE_LIMIT} bytes" in body["error"]


def test_header_line_at_the_limit_is_read_one_past_is_431() -> None:
    def header_of(n: int) -> bytes:
        return request(headers=["X-Pad: " + "p" * (n - len("X-Pad: "))])

    async def test(port: int, _: Listener) -> list[tuple[int, dict[str, Any]]]:
        return [await exchange(port, header_of(LINE_LIMIT)),
                await exchange(port, header_of(LINE_LIMIT + 1))]

    (at, _), (past, body) = with_api(test)
    assert at == 200
    assert past == 431 and "header line" in body["error"]


def test_header_count_at_the_limit_is_read_one_past_is_431() -> None:
    async def test(port: int, _: Listener) -> list[tuple[int, dict[str, Any]]]:
        return [await exchange(port, request(headers=[f"X-{i}: y" for i in range(n)]))
                for n in (MAX_HEADERS, MAX_HEADERS + 1)]

    (at, _), (past, body) = with_api(test)
    assert at == 200
    assert past == 431 and f"more than {MAX_HEADERS} header lines" in body["error"]


def test_header_section_at_the_limit_is_read_one_past_is_431() -> None:
    def headers_of(total: int) -> list[str]:
        # lines of 4,096 bytes + CRLF, the last one making up the rest
        out, left = [], total
        while left:
            size = min(4098, left)
            if 0 < left - size < 12:  # keep every line a real "X-n: v" header
                size -= 12
            out.append(f"X-{len(out)}: " + "v" * (size - 2 - len(f"X-{len(out)}: ")))
            left -= size
        assert sum(len(h) + 2 for h in out) == total
        return out

    async def test(port: int, _: Listener) -> list[tuple[int, dict[str, Any]]]:
        return [await exchange(port, request(headers=headers_of(n)))
                for n in (HEAD_LIMIT, HEAD_LIMIT + 1)]

    (at, _), (past, body) = with_api(test)
    assert at == 200
    assert past == 431 and f"longer than {HEAD_LIMIT} bytes in all" in body["error"]


async def idle(port: int, n: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``n`` connections that send half a request line and wait."""
    out = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /hea")
        await writer.drain()
        out.append((reader, writer))
    return out


async def settle(listener: Listener, active: int) -> None:
    """Wait (bounded) until the server holds ``active`` connections."""
    for _ in range(500):
        if listener.server.active == active:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"server holds {listener.server.active}, expected {active}")


def test_connections_at_the_limit_are_all_held_one_past_evicts_the_oldest_idle() -> None:
    limits = Limits(connections=8, head_timeout=60)

    async def test(port: int, listener: Listener) -> tuple[int, int, int, bytes, int]:
        slow = await idle(port, 8)
        await settle(listener, 8)
        evicted_at_limit = listener.server.evicted
        # One past: a real request gets in, the oldest idle one is evicted.
        code, _ = await exchange(port, request())
        oldest = await asyncio.wait_for(slow[0][0].read(), 10)
        for _, w in slow:
            w.close()
        return evicted_at_limit, code, listener.server.evicted, oldest, len(slow)

    at_limit, code, evicted, oldest, _ = with_api(test, limits)
    assert at_limit == 0
    assert code == 200 and evicted == 1
    assert oldest.startswith(b"HTTP/1.1 503 ") and b"evicted" in oldest


def test_200_idle_connections_do_not_stop_health_and_primary() -> None:
    async def test(port: int, listener: Listener) -> list[int]:
        slow = await idle(port, 200)
        codes = [(await exchange(port, request(p)))[0]
                 for p in ("/health", "/primary?mirror=records") * 5]
        for _, w in slow:
            w.close()
        return codes

    # The old server (64 connections, 503 past them) answered 503 here.
    assert with_api(test, Limits(connections=64, head_timeout=60)) == [200] * 10


def test_1000_concurrent_requests_are_queued_not_refused() -> None:
    async def test(port: int, _: Listener) -> list[int]:
        return [c for c, _ in await asyncio.gather(
            *(exchange(port, request()) for _ in range(1000)))]

    codes = with_api(test, Limits(connections=64))
    assert codes == [200] * 1000


def test_head_not_complete_in_time_is_408_one_in_two_parts_is_served() -> None:
    async def test(port: int, _: Listener) -> list[tuple[int, dict[str, Any]]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"\r\n")
        in_time = parse(await asyncio.wait_for(reader.read(), 30))
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\n")  # and never the blank line
        late = parse(await asyncio.wait_for(reader.read(), 30))
        writer.close()
        return [in_time, late]

    (ok, _), (late, body) = with_api(test, Limits(head_timeout=1.0))
    assert ok == 200
    assert late == 408 and "within 1 s" in body["error"]


def test_a_post_is_405_at_once_without_reading_its_body() -> None:
    declared = 16 << 20

    async def test(port: int, _: Listener) -> tuple[int, dict[str, Any]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /repair?mirror=records HTTP/1.1\r\n"
                     b"Content-Length: %d\r\n\r\n" % declared + b"x" * 65536)
        await writer.drain()
        # The answer comes although 16 MiB are announced and 64 KiB sent.
        answer = parse(await asyncio.wait_for(reader.read(), 30))
        writer.close()
        return answer

    code, body = with_api(test)
    assert code == 405 and "read-only" in body["error"]


class _OneClient(HttpServer):
    """Every peer counts as the client "10.0.0.1" (a loopback test cannot
    have several source addresses); answers 200 to anything."""

    def client_key(self, sock: socket.socket) -> str | None:
        return "10.0.0.1"

    async def dispatch(self, request: Request, reader: asyncio.StreamReader) -> Response:
        return json_body(200, {"ok": True})


def test_per_client_at_the_limit_all_held_one_past_evicts_that_client_s_oldest() -> None:
    async def main() -> tuple[int, int, int, bytes]:
        server = _OneClient(Limits(connections=64, per_client=4, head_timeout=60, evict_after=0))
        listener = Listener(listen_tcp("127.0.0.1", 0), server)
        port = listener.sockets[0].getsockname()[1]
        try:
            slow = await idle(port, 4)
            await settle(listener, 4)
            at_limit = server.evicted
            code, _ = await exchange(port, request())
            oldest = await asyncio.wait_for(slow[0][0].read(), 10)
            for _, w in slow:
                w.close()
            return at_limit, code, server.evicted, oldest
        finally:
            listener.close()
            await listener.wait_closed()

    at_limit, code, evicted, oldest = asyncio.run(main())
    assert at_limit == 0 and code == 200 and evicted == 1
    assert oldest.startswith(b"HTTP/1.1 503 ")


def test_a_loopback_peer_is_not_told_apart_by_address() -> None:
    async def main() -> str | None:
        lsock = listen_tcp("127.0.0.1", 0)
        client = socket.create_connection(lsock.getsockname())
        try:
            lsock.setblocking(True)
            peer, _ = lsock.accept()
            with peer:
                return HttpServer().client_key(peer)
        finally:
            client.close()
            lsock.close()

    assert asyncio.run(main()) is None


def test_error_body_names_the_error() -> None:
    code, ctype, body = error_body(413, "too big")
    assert (code, ctype, json.loads(body)) == (413, "application/json", {"error": "too big"})


@pytest.mark.parametrize("limit", [0, 10])
def test_read_body_at_the_route_s_limit_is_read_one_past_is_413(limit: int) -> None:
    class Echo(HttpServer):
        async def dispatch(self, request: Request, reader: asyncio.StreamReader) -> Response:
            body = await self.read_body(reader, request, limit, "POST /echo")
            return json_body(200, {"got": len(body)})

    async def main() -> list[tuple[int, dict[str, Any]]]:
        listener = Listener(listen_tcp("127.0.0.1", 0), Echo())
        port = listener.sockets[0].getsockname()[1]
        try:
            return [await exchange(port, b"POST /echo HTTP/1.1\r\nContent-Length: %d\r\n\r\n"
                                   % n + b"b" * n) for n in (limit, limit + 1)]
        finally:
            listener.close()
            await listener.wait_closed()

    (at, body_at), (past, body_past) = asyncio.run(main())
    assert at == 200 and body_at == {"got": limit}
    assert past == 413
    assert body_past["error"] == (f"a body of {limit + 1} bytes is over the limit of {limit} "
                                  "bytes for POST /echo")


def test_repair_splits_a_long_list_into_requests_within_the_route_s_bounds() -> None:
    from mirrorkit.agent.api.control import REPAIR_MAX_BODY, REPAIR_MAX_PATHS, repair_paths
    from mirrorkit.agent.cli.verify import repair_requests

    many = [f"/srv/records/dir{i % 7}/file-{i:06d}" for i in range(REPAIR_MAX_PATHS * 2 + 5)]
    long = ["/srv/records/" + "l" * 4000 + str(i) for i in range(600)]  # 2.4 MB of names
    for paths in (many, long, ["/srv/records/x"]):
        bodies = repair_requests(paths)
        assert all(len(b) <= REPAIR_MAX_BODY for b in bodies)
        got = [p for b in bodies for p in repair_paths(b)]  # each one the server accepts
        assert got == sorted(paths)
    assert len(repair_requests(many)) == 3
    assert len(repair_requests(long)) == 3

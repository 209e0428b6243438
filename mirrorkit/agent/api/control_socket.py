"""The agent's control socket: every route that changes state, for root only.

The read-only status API listens on loopback TCP for keepalived, load
balancers and Prometheus, so anyone on the host can reach it. What changes
replication state (``POST /resync``, ``POST /repair``; later switchover,
promote, fence, maintenance) is served here instead: a Unix stream socket
(``control_socket`` in agent.yml, default ``/run/mirrorkit/control.sock``)
speaking the same small HTTP/1.1 dialect through the same
:class:`~mirrorkit.agent.api.http.HttpServer` (one parser for both).

Two locks, either one enough on its own:

* the file system: the socket is 0600 in a directory the agent creates 0700
  (systemd's ``RuntimeDirectory=mirrorkit``, mode 0700, in production), so
  another user's ``connect()`` fails with EACCES;
* the kernel's peer credentials (``SO_PEERCRED``) of every accepted
  connection: only uid 0, or the agent's own effective uid (an agent run by
  a developer as themselves), is served. Anyone else gets 403, and one
  WARNING log line names their uid and pid. This still holds if the
  socket's or its directory's mode is changed by mistake.

The routes themselves are a table (``api/control.py``, ``control_routes``):
a new mutating route is one entry there, checked here like every other.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mirrorkit.agent.api.http import Answer, json_body, parse_params
from mirrorkit.agent.api.server import (
    BACKLOG,
    HttpServer,
    Limits,
    Listener,
    Request,
    Response,
    error_body,
)

__all__ = ["CONTROL_LIMITS", "ControlRoute", "ControlSocket", "allowed_uids",
           "peer_credentials", "start_control"]

log = logging.getLogger(__name__)

_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid

# Root's own commands, one at a time in practice: a few connections, each
# holding at most its route's body (``ControlRoute.max_body``).
CONTROL_LIMITS = Limits(connections=16)


@dataclass(frozen=True, slots=True)
class ControlRoute:
    """One mutating route: the query parameters it accepts, its handler,
    ``handler(params, body) -> (code, JSON answer)``, and the largest body
    it takes (bytes; a longer one is 413 and never read)."""

    params: tuple[str, ...]
    handler: Callable[[dict[str, str], bytes], Awaitable[Answer]]
    max_body: int = 0


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket, as
    the kernel recorded them at ``connect()``; raises OSError."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
    pid, uid, gid = _CREDS.unpack(raw)
    return pid, uid, gid


def allowed_uids() -> frozenset[int]:
    """Root, and the agent's own effective uid."""
    return frozenset({0, os.geteuid()})


class _ControlServer(HttpServer):
    allow = "POST"

    def __init__(self, path: Path, routes: Mapping[str, ControlRoute],
                 allowed: Collection[int]) -> None:
        super().__init__(CONTROL_LIMITS)
        self.path = path
        self.routes = routes
        self.allowed = allowed

    async def admit(self, writer: asyncio.StreamWriter) -> Response | None:
        sock = writer.get_extra_info("socket")
        try:
            pid, uid, _ = peer_credentials(sock)
        except (OSError, TypeError, struct.error) as exc:  # fail closed
            log.warning("control socket %s: refused a connection whose credentials "
                        "cannot be read: %s", self.path, exc)
            return error_body(403, "cannot read your credentials: refused")
        if uid in self.allowed:
            return None
        log.warning("control socket %s: refused uid %d (pid %d): only root may change "
                    "replication state", self.path, uid, pid)
        return error_body(403, f"uid {uid} may not use the control socket {self.path}: "
                               "only root may change replication state")

    async def dispatch(self, request: Request, reader: asyncio.StreamReader) -> Response:
        path, query = urlsplit(request.target)[2:4]
        route = self.routes.get(path)
        if request.method != "POST":
            return error_body(405, f"method {request.method} not allowed; use POST")
        if route is None:
            known = ", ".join(sorted(self.routes)) or "none"
            return error_body(404, f"no control route {path!r} (known: {known})")
        params = parse_params(query, route.params)
        body = await self.read_body(reader, request, route.max_body, f"POST {path}")
        code, answer = await route.handler(params, body)
        return json_body(code, answer)


class ControlSocket:
    """A listening control socket; :meth:`close` also removes its file."""

    def __init__(self, server: Listener, path: Path, inode: int) -> None:
        self.server = server
        self.path = path
        self._inode = inode

    def close(self) -> None:
        self.server.close()
        with contextlib.suppress(OSError):
            if self.path.lstat().st_ino == self._inode:  # not a successor's
                self.path.unlink()

    async def wait_closed(self) -> None:
        await self.server.wait_closed()


def _clear_stale(path: Path) -> None:
    """Remove a socket file left by an agent that died; refuse to take the
    path of a live one or of anything that is not a socket."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket "
                                    "(remove it or choose another control_socket)")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:  # nobody listens: left by a dead agent
            path.unlink()
            return
        except FileNotFoundError:
            return
        except BlockingIOError:
            pass
    raise OSError(errno.EADDRINUSE, f"{path} is in use by another running agent")


def _bind(path: Path) -> socket.socket:
    """A listening socket at ``path``, mode 0600; its directory is created
    0700 when missing (an existing one is left as it is)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Linux creates the socket file with this mode (less the umask); the
        # chmod after bind makes sure, and the peer check covers the moment.
        with contextlib.suppress(OSError):
            os.fchmod(sock.fileno(), 0o600)
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def start_control(path: Path, routes: Mapping[str, ControlRoute],
                        allowed: Collection[int] | None = None) -> ControlSocket:
    """Serve ``routes`` on the Unix socket ``path`` to the uids in ``allowed``
    (default :func:`allowed_uids`). Raises OSError when it cannot listen."""
    sock = await asyncio.to_thread(_bind, path)
    handler = _ControlServer(path, routes, allowed_uids() if allowed is None else allowed)
    try:
        inode = path.lstat().st_ino
    except BaseException:
        sock.close()
        raise
    return ControlSocket(Listener(sock, handler), path, inode)

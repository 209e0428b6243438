"""The agent commands' client of the root-only control socket
(``http.client`` over ``AF_UNIX``): ``mirrorkit-agent resync`` and
``mirrorkit-agent repair`` post to it; see ``api/control_socket.py`` for
the server.

The socket is the one named by ``--control-socket``, else by the agent's
config (``control_socket`` in ``--config``), else the default
``/run/mirrorkit/control.sock``. Every way of not getting an answer —
not root, no agent, a refusal — is a :class:`ControlUnavailable` whose
message says what to do; never a traceback.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
from pathlib import Path
from typing import Any

from mirrorkit.agent.config import DEFAULT_CONTROL_SOCKET, ConfigError, load_config

__all__ = ["ControlUnavailable", "add_argument", "post", "socket_path"]

Answer = tuple[int, dict[str, Any]]


class ControlUnavailable(Exception):
    """No answer from the control socket; the message says why and what to do."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--control-socket", metavar="PATH", default="",
                        help="the agent's control socket (default: control_socket of "
                             f"--config, else {DEFAULT_CONTROL_SOCKET})")


def socket_path(args: argparse.Namespace) -> Path:
    if args.control_socket:
        return Path(args.control_socket)
    try:
        return load_config(Path(args.config)).control_socket
    except ConfigError:  # unreadable to this user, or broken: try the default
        return DEFAULT_CONTROL_SOCKET


def _not_root(path: Path, why: str) -> ControlUnavailable:
    return ControlUnavailable(f"must be run as root: the control socket {path} is root-only "
                              f"({why})")


def post(path: Path, target: str, body: bytes = b"", timeout: float = 10.0) -> Answer:
    """POST ``target`` (path and query) with ``body`` to the control socket
    at ``path``: (status code, JSON answer). Raises ControlUnavailable."""
    conn = _UnixConnection(path, timeout)
    try:
        conn.request("POST", target, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        code, raw = resp.status, resp.read()
    except PermissionError as exc:
        raise _not_root(path, exc.strerror or str(exc)) from None
    except FileNotFoundError:
        raise ControlUnavailable(f"no control socket at {path}: is mirrorkit-agent running "
                                 "on this host (systemctl status mirrorkit-agent)?") from None
    except ConnectionRefusedError:
        raise ControlUnavailable(f"nothing listens on the control socket {path}: is "
                                 "mirrorkit-agent running on this host?") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ControlUnavailable(f"control socket {path}: {exc or type(exc).__name__}") from None
    finally:
        conn.close()
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        answer = {"error": raw.decode(errors="replace").strip()}
    if code == 403:
        raise _not_root(path, str(answer.get("error")))
    return code, answer

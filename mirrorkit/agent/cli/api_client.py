"""The agent commands' client of this host's read-only loopback status API
(``mirrorkit-agent status``, ``mirrorkit-agent events``).

The port is ``--api-port``, else ``api.port`` of ``--config``, else 7480.
"""

from __future__ import annotations

import argparse
import urllib.error
import urllib.request
from pathlib import Path

from mirrorkit.agent.config import ConfigError, load_config

__all__ = ["DEFAULT_API_PORT", "api_port", "get"]

DEFAULT_API_PORT = 7480


def api_port(args: argparse.Namespace) -> int:
    if args.api_port:
        port: int = args.api_port
        return port
    try:
        return load_config(Path(args.config)).api_port
    except ConfigError:
        return DEFAULT_API_PORT


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``path`` from the local API: (status code, body). Raises OSError
    (URLError included) when nothing answers."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()

"""An AgentRunner (mirrorkit/remote.py) for loopback clusters: the
controller's operations commands run ``mirrorkit-agent --config <that
member's agent.yml> ARGS`` as a local process instead of over SSH — the
same commands and answers, without SSH."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from mirrorkit.remote import AgentResult


class LocalAgents:
    def __init__(self, configs: Mapping[str, Path]) -> None:
        self.configs = dict(configs)
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(self, host: str, args: Sequence[str], timeout: float) -> AgentResult:
        self.calls.append((host, list(args)))
        try:
            got = subprocess.run(
                [sys.executable, "-m", "mirrorkit.agent.cli.main", "--config",
                 str(self.configs[host]), *args],
                capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return AgentResult(host, None, error=f"no answer from {host} within {timeout:g} s")
        return AgentResult(host, got.returncode, got.stdout, got.stderr)

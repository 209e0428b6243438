"""A thin wrapper running podman with the project's CONTAINERS_CONF.

Every podman call mirrorkit makes (and every one molecule or Ansible makes on
its behalf) must carry `CONTAINERS_CONF` pointing at `containers.conf` next to
this module: use `podman_env()` for a subprocess environment, or `podman()`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mirrorkit.errors import MirrorkitError

CONTAINERS_CONF = Path(__file__).resolve().with_name("containers.conf")


def podman_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return an environment (default: this process's) with CONTAINERS_CONF set."""
    env = dict(os.environ if base is None else base)
    env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    return env


def podman_binary() -> str:
    path = shutil.which("podman")
    if path is None:
        raise MirrorkitError(
            "podman is not installed; run scripts/bootstrap-system.sh "
            "(apt-get install podman runc debootstrap)"
        )
    return path


def podman(
    *args: str,
    check: bool = True,
    capture: bool = True,
    input_bytes: bytes | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `podman ARGS` with the project's config; raise MirrorkitError on failure.

    With capture, stdout/stderr are returned as text; failures quote stderr.
    """
    cmd = [podman_binary(), *args]
    try:
        if input_bytes is not None:
            raw = subprocess.run(
                cmd, env=podman_env(), input=input_bytes, capture_output=capture,
                timeout=timeout, check=False,
            )
            proc = subprocess.CompletedProcess(
                raw.args, raw.returncode,
                raw.stdout.decode(errors="replace") if raw.stdout is not None else "",
                raw.stderr.decode(errors="replace") if raw.stderr is not None else "",
            )
        else:
            proc = subprocess.run(
                cmd, env=podman_env(), capture_output=capture, text=True,
                timeout=timeout, check=False,
            )
    except subprocess.TimeoutExpired as exc:
        raise MirrorkitError(f"podman {' '.join(args[:3])} timed out after {timeout} s") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()
        tail = detail[-1] if detail else f"exit status {proc.returncode}"
        raise MirrorkitError(f"podman {' '.join(args[:3])} failed: {tail}")
    return proc


def inspect(kind: str, name: str) -> dict[str, Any] | None:
    """`podman KIND inspect NAME` as a dict, or None when it does not exist."""
    proc = podman(kind, "inspect", name, check=False)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout or "[]")
    if not data:
        return None
    first: dict[str, Any] = data[0]
    return first


def image_id(ref: str) -> str | None:
    """The full ID of image REF, or None when absent."""
    info = inspect("image", ref)
    return None if info is None else str(info.get("Id", ""))


def network_subnets(name: str) -> list[str] | None:
    """The subnets of network NAME, or None when absent."""
    info = inspect("network", name)
    if info is None:
        return None
    return [str(s.get("subnet")) for s in info.get("subnets") or []]


def all_networks() -> dict[str, list[str]]:
    """Every podman network and its subnets."""
    proc = podman("network", "ls", "--format", "{{.Name}}")
    result: dict[str, list[str]] = {}
    for name in proc.stdout.split():
        subnets = network_subnets(name)
        if subnets is not None:
            result[name] = subnets
    return result


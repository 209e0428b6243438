"""The lab SSH key: `~/.mirrorkit/lab/id_ed25519`, generated once, mode 0600.

Lab containers get the public half as `/root/.ssh/authorized_keys`; the lab
inventory points `ansible_ssh_private_key_file` at the private half.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from mirrorkit.errors import MirrorkitError

SSH_OPTIONS = (
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "IdentitiesOnly=yes",
)


def lab_key_path() -> Path:
    """Path of the lab's private key (it may not exist yet: see `ensure_lab_key`)."""
    return Path.home() / ".mirrorkit" / "lab" / "id_ed25519"


def ensure_lab_key(path: Path | None = None) -> Path:
    """Create the key pair if missing (never overwrite); return the private key path."""
    key = path or lab_key_path()
    pub = key.with_name(key.name + ".pub")
    if key.exists() and pub.exists():
        if key.stat().st_mode & 0o077:
            key.chmod(0o600)
        return key
    if key.exists() and not pub.exists():
        _run(["ssh-keygen", "-y", "-f", str(key)], out=pub)
        return key
    key.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(key.parent, 0o700)
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mirrorkit-lab", "-f", str(key)])
    key.chmod(0o600)
    return key


def public_key_path(key: Path | None = None) -> Path:
    key = key or lab_key_path()
    return key.with_name(key.name + ".pub")


def ssh_command(address: str, command: list[str] | None = None, *,
                key: Path | None = None, batch: bool = False,
                connect_timeout: float | None = None) -> list[str]:
    """The ssh argv that reaches root@ADDRESS with the lab key.

    ssh joins its arguments into one string for the remote shell, which would
    split `sh -c 'a; b'` apart. So one argument is taken as a shell command
    line (`-- 'ls /srv | wc -l'`), several as an argv that is quoted word by
    word (`-- sh -c 'echo hi > f'`), like `podman exec`.
    """
    argv = ["ssh", "-i", str(key or lab_key_path()), *SSH_OPTIONS]
    if batch:
        argv += ["-o", "BatchMode=yes"]
    if connect_timeout is not None:
        argv += ["-o", f"ConnectTimeout={max(1, int(connect_timeout))}"]
    argv.append(f"root@{address}")
    if command:
        argv.append(command[0] if len(command) == 1 else shlex.join(command))
    return argv


def _run(argv: list[str], out: Path | None = None) -> None:
    if shutil.which(argv[0]) is None:
        raise MirrorkitError(f"{argv[0]} is not installed (apt-get install openssh-client)")
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise MirrorkitError(f"{argv[0]} failed: {proc.stderr.strip()}")
    if out is not None:
        out.write_text(proc.stdout)

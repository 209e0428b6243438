from __future__ import annotations

import stat
from pathlib import Path

from mirrorkit.atomicfile import atomic_write, temp_path


def test_replaces_content_with_the_asked_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "ca.crt"
    target.write_text("old")
    atomic_write(target, b"new" * 100_000, 0o644)
    assert target.read_bytes() == b"new" * 100_000
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert not temp_path(target).exists()


def test_secrets_default_to_0600(tmp_path: Path) -> None:
    key = tmp_path / "member.key"
    atomic_write(key, b"secret")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

"""Lab image recipe: the tag follows the recipe's content, and podman gets our config."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mirrorkit.lab import image
from mirrorkit.lab.podman import CONTAINERS_CONF, podman_env


@pytest.fixture()
def recipe(tmp_path: Path) -> Path:
    target = tmp_path / "recipe"
    target.mkdir()
    shutil.copy2(image.RECIPE_DIR / "Containerfile", target / "Containerfile")
    shutil.copytree(image.RECIPE_DIR / "files", target / "files")
    return target


def test_hash_is_stable_and_matches_the_package(recipe: Path) -> None:
    assert image.recipe_hash(recipe) == image.recipe_hash(recipe)
    assert image.recipe_hash(recipe) == image.recipe_hash()
    assert image.host_image_ref() == f"localhost/mirrorkit-host:{image.recipe_hash()}"


def test_hash_changes_with_containerfile(recipe: Path) -> None:
    before = image.recipe_hash(recipe)
    with open(recipe / "Containerfile", "a") as f:
        f.write("RUN true\n")
    assert image.recipe_hash(recipe) != before


def test_hash_changes_with_files_and_names(recipe: Path) -> None:
    before = image.recipe_hash(recipe)
    (recipe / "files" / "extra.conf").write_text("x\n")
    added = image.recipe_hash(recipe)
    assert added != before
    (recipe / "files" / "extra.conf").rename(recipe / "files" / "other.conf")
    assert image.recipe_hash(recipe) != added


def test_recipe_holds_what_the_lab_needs() -> None:
    text = (image.RECIPE_DIR / "Containerfile").read_text()
    for package in ("systemd-sysv", "keepalived", "openssh-server", "fuse3", "python3-apt"):
        assert package in text
    assert "STOPSIGNAL SIGRTMIN+3" in text
    setup = (image.RECIPE_DIR / "files" / "setup.sh").read_text()
    assert "systemctl disable keepalived.service" in setup
    assert "systemd-logind.service" in setup


def test_cache_dir_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MIRRORKIT_LAB_CACHE", str(tmp_path))
    assert image.cache_dir() == tmp_path


def test_podman_env_points_at_the_project_config() -> None:
    env = podman_env({"PATH": "/usr/bin"})
    assert env == {"PATH": "/usr/bin", "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    text = CONTAINERS_CONF.read_text()
    assert 'runtime = "runc"' in text
    assert 'cgroup_manager = "cgroupfs"' in text
    assert "default_ulimits = []" in text

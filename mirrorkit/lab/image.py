"""The lab host image, built without a registry and cached by recipe hash.

1. `debootstrap --variant=minbase bookworm` into the cache directory, then
   `podman import` it as `localhost/mirrorkit-base:bookworm-<hash>`;
2. `podman build` the `Containerfile` next to this module FROM that base,
   tagged `localhost/mirrorkit-host:<recipe hash>`.

The recipe hash covers the debootstrap parameters, the Containerfile and
every file under `files/`: editing any of them yields a new tag (and a
rebuild); otherwise `ensure_image()` returns at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mirrorkit.errors import MirrorkitError
from mirrorkit.lab import podman as pm
from mirrorkit.lab.progress import say, step

RECIPE_DIR = Path(__file__).resolve().parent
SUITE = "bookworm"
VARIANT = "minbase"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
BASE_REPO = "localhost/mirrorkit-base"
HOST_REPO = "localhost/mirrorkit-host"


def recipe_files(recipe_dir: Path = RECIPE_DIR) -> list[Path]:
    """Containerfile and every file under files/, in a stable order."""
    files = [recipe_dir / "Containerfile"]
    files += sorted(p for p in (recipe_dir / "files").rglob("*") if p.is_file())
    return files


def base_hash() -> str:
    return hashlib.sha256(f"debootstrap {VARIANT} {SUITE}".encode()).hexdigest()[:12]


def recipe_hash(recipe_dir: Path = RECIPE_DIR) -> str:
    """A short hash of everything that decides the host image's content."""
    digest = hashlib.sha256(base_hash().encode())
    for path in recipe_files(recipe_dir):
        digest.update(b"\0" + str(path.relative_to(recipe_dir)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def base_image_ref() -> str:
    return f"{BASE_REPO}:{SUITE}-{base_hash()}"


def host_image_ref(recipe_dir: Path = RECIPE_DIR) -> str:
    """The tag the current recipe builds: `localhost/mirrorkit-host:<hash>`."""
    return f"{HOST_REPO}:{recipe_hash(recipe_dir)}"


def cache_dir() -> Path:
    """/var/cache/mirrorkit/lab for root, ~/.cache/mirrorkit/lab otherwise.

    MIRRORKIT_LAB_CACHE overrides it.
    """
    override = os.environ.get("MIRRORKIT_LAB_CACHE")
    if override:
        return Path(override)
    if os.geteuid() == 0:
        return Path("/var/cache/mirrorkit/lab")
    return Path.home() / ".cache" / "mirrorkit" / "lab"


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise image builds between concurrent `lab up` / molecule runs."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_image() -> str:
    """Build the host image unless the current recipe's tag exists; return its ref."""
    ref = host_image_ref()
    if pm.image_id(ref):
        say(f"image {ref}: cached")
        return ref
    cache = cache_dir()
    with _locked(cache):
        if pm.image_id(ref):  # built by a concurrent run while we waited
            return ref
        with step(f"image {ref}", "first build takes about a minute"):
            base = _ensure_base(cache)
            _build(base, ref, cache / "build.log")
    return ref


def _ensure_base(cache: Path) -> str:
    ref = base_image_ref()
    if pm.image_id(ref):
        say(f"base image {ref}: cached")
        return ref
    rootfs = cache / f"rootfs-{SUITE}-{base_hash()}"
    if not (rootfs / "etc" / "debian_version").exists():
        _debootstrap(rootfs, cache / "debootstrap.log")
    with step(f"podman import {ref}"):
        tar = subprocess.Popen(
            ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
            stdout=subprocess.PIPE,
        )
        proc = subprocess.run(
            [pm.podman_binary(), "import", "-", ref], stdin=tar.stdout,
            capture_output=True, text=True, env=pm.podman_env(), check=False,
        )
        if tar.stdout is not None:
            tar.stdout.close()
        tar_status = tar.wait()
        if proc.returncode != 0 or tar_status != 0:
            raise MirrorkitError(f"podman import of {rootfs} failed: {proc.stderr.strip()}")
    return ref


def _debootstrap(rootfs: Path, log: Path) -> None:
    if shutil.which("debootstrap") is None:
        raise MirrorkitError("debootstrap is not installed; run scripts/bootstrap-system.sh")
    if os.geteuid() != 0:
        raise MirrorkitError("building the lab image needs root (debootstrap); run as root")
    mirror = os.environ.get("MIRRORKIT_DEBIAN_MIRROR", DEFAULT_MIRROR)
    partial = rootfs.with_name(rootfs.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with step(f"debootstrap {VARIANT} {SUITE} -> {rootfs}", f"log: {log}"):
        _logged(["debootstrap", f"--variant={VARIANT}", SUITE, str(partial), mirror], log)
        shutil.rmtree(rootfs, ignore_errors=True)
        partial.rename(rootfs)


def _build(base: str, ref: str, log: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="mirrorkit-lab-build-") as tmp:
        context = Path(tmp)
        shutil.copy2(RECIPE_DIR / "Containerfile", context / "Containerfile")
        shutil.copytree(RECIPE_DIR / "files", context / "files",
                        ignore=shutil.ignore_patterns("__pycache__"))
        with step(f"podman build {ref}", f"log: {log}"):
            _logged([
                pm.podman_binary(), "build", "--pull=never", "--build-arg", f"BASE={base}",
                "--label", f"mirrorkit.recipe={ref.rsplit(':', 1)[1]}",
                "-t", ref, "-f", str(context / "Containerfile"), str(context),
            ], log)


def _logged(argv: list[str], log: Path) -> None:
    """Run ARGV with its output in LOG; on failure, quote the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT,
                              env=pm.podman_env(), check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise MirrorkitError(
            f"{Path(argv[0]).name} failed (exit {proc.returncode}); last lines of {log}:\n    "
            + "\n    ".join(tail)
        )


def purge_images() -> list[str]:
    """Remove every mirrorkit lab image and the cache directory; return what was kept."""
    kept: list[str] = []
    proc = pm.podman("images", "--format", "{{.Repository}}:{{.Tag}}")
    for ref in proc.stdout.split():
        if ref.split(":")[0] in (HOST_REPO, BASE_REPO):
            rm = pm.podman("rmi", ref, check=False)
            if rm.returncode != 0:
                kept.append(f"{ref} ({rm.stderr.strip().splitlines()[-1:]})")
    shutil.rmtree(cache_dir(), ignore_errors=True)
    return kept

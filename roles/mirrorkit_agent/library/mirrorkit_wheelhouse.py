#!/usr/bin/python
"""Build the mirrorkit wheel and a wheelhouse of its runtime dependencies on the controller."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mirrorkit_wheelhouse
short_description: Build the mirrorkit wheel and a wheelhouse for one target Python/platform
description:
  - Runs on the controller (delegate to localhost, interpreter C(ansible_playbook_python)).
  - Hashes the package sources; builds C(pip wheel --no-deps) into
    C(<cache_dir>/build/<hash>/) only when no wheel exists for that hash, so an
    unchanged tree never rebuilds and the module reports no change.
  - Reads the wheel's C(Requires-Dist) and downloads binary wheels of those
    requirements for the target (C(pip download --only-binary=:all:
    --python-version --platform --implementation cp)) into
    C(<cache_dir>/wheelhouse/cp<ver>-<platform>/<hash of requirements>/), once.
  - Targets then install offline with C(pip install --no-index --find-links).
  - Returns I(runtime_digest), a digest of exactly what the target runs: the
    contents of the wheel's files minus the controller-only ones
    (C(CONTROLLER_ONLY)), the parts of its metadata that matter on the target,
    and the dependency wheels. The role reinstalls (and restarts) an agent only
    when it changes, so a change to the CLI, the lab, the inventory model, the
    playbooks or the docs leaves running agents alone.
options:
  source_dir:
    description: Root of the mirrorkit source tree (holds C(pyproject.toml)).
    type: path
    required: true
  source_paths:
    description: Paths, relative to I(source_dir), that make up the package and are hashed and built.
    type: list
    elements: str
    default: [pyproject.toml, mirrorkit]
  stub_paths:
    description:
      - Files the build needs but the agent does not (the README that C(pyproject.toml)
        names as long description). They are built as a one-line stub and not hashed, so
        editing documentation never produces a new wheel (and never restarts agents).
    type: list
    elements: str
    default: [README.md]
  keep_builds:
    description: How many most recent wheel builds to keep in the cache.
    type: int
    default: 5
  cache_dir:
    description: Controller-side cache for wheels and wheelhouses.
    type: path
    required: true
  python_version:
    description: Target Python as C(major.minor).
    type: str
    required: true
  platforms:
    description: pip platform tags of the target, e.g. C(manylinux2014_x86_64).
    type: list
    elements: str
    required: true
  pip_args:
    description: Extra arguments for C(pip wheel) and C(pip download), e.g. an internal C(--index-url).
    type: list
    elements: str
    default: []
author: mirrorkit
"""

RETURN = r"""
wheel: {description: Absolute path of the built wheel on the controller., type: str, returned: always}
wheel_name: {description: File name of the wheel., type: str, returned: always}
wheel_sha256: {description: SHA-256 of the wheel file., type: str, returned: always}
runtime_digest:
  description: SHA-256 over what the target runs (see the description); names the install marker.
  type: str
  returned: always
wheelhouse: {description: Directory holding the dependency wheels., type: str, returned: always}
wheelhouse_files: {description: Dependency wheel file names., type: list, returned: always}
requirements: {description: Runtime requirements read from the wheel metadata., type: list, returned: always}
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from ansible.module_utils.basic import AnsibleModule

EXCLUDED_DIRS = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
EXCLUDED_SUFFIXES = (".pyc", ".pyo")
# Wheel timestamps: the same sources always give the same bytes.
SOURCE_DATE_EPOCH = "315532800"
COMPLETE = ".complete"

# Paths inside the wheel that only the controller runs: the CLI, its
# commands, the lab, the inventory model, the controller PKI and SSH helpers.
# A deny list on purpose: a new module counts as the agent's until it is
# listed here, so a forgotten entry costs one needless agent restart, never a
# stale agent. tests/unit/test_wheelhouse.py fails if the agent (anything
# under mirrorkit/agent/, and what that imports in turn) imports a path listed
# here. Entries ending in "/" are whole subpackages.
CONTROLLER_ONLY = (
    "mirrorkit/__main__.py",
    "mirrorkit/cli.py",
    "mirrorkit/commands/",
    "mirrorkit/inventory/",
    "mirrorkit/lab/",
    "mirrorkit/pki.py",
    "mirrorkit/project.py",
    "mirrorkit/py.typed",
    "mirrorkit/remote.py",
    "mirrorkit/verification.py",
)
# What of the wheel's .dist-info changes what the target runs: these METADATA
# fields (runtime Requires-Dist only; extras are the controller's) and these
# files (entry_points.txt makes bin/mirrorkit-agent). RECORD (a hash of every
# file, controller-only ones included) and WHEEL (the build tool's version)
# do not.
RUNTIME_METADATA = ("Name", "Version", "Requires-Python", "Requires-Dist")
RUNTIME_DIST_INFO = ("entry_points.txt", "top_level.txt")


def _iter_files(root, rel):
    path = os.path.join(root, rel)
    if os.path.isfile(path):
        yield rel
        return
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(
            d for d in dirnames if d not in EXCLUDED_DIRS and not d.endswith(".egg-info")
        )
        for name in sorted(filenames):
            if not name.endswith(EXCLUDED_SUFFIXES):
                yield os.path.relpath(os.path.join(dirpath, name), root)


def source_digest(root, paths):
    digest = hashlib.sha256()
    files = []
    for rel in paths:
        if not os.path.exists(os.path.join(root, rel)):
            raise FileNotFoundError(os.path.join(root, rel))
        files.extend(_iter_files(root, rel))
    for rel in sorted(files):
        digest.update(rel.encode() + b"\0")
        with open(os.path.join(root, rel), "rb") as handle:
            digest.update(hashlib.sha256(handle.read()).digest())
    return digest.hexdigest(), files


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_wheel(directory):
    if not os.path.isdir(directory):
        return None
    wheels = sorted(name for name in os.listdir(directory) if name.endswith(".whl"))
    return os.path.join(directory, wheels[0]) if len(wheels) == 1 else None


def requirements_of(wheel):
    """Runtime Requires-Dist of a wheel (requirements guarded by an extra are left out)."""
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(meta).decode()
    reqs = []
    for line in text.splitlines():
        if not line:
            break
        if line.startswith("Requires-Dist:"):
            req = line.split(":", 1)[1].strip()
            if ";" in req and "extra" in req.split(";", 1)[1]:
                continue
            reqs.append(req)
    return reqs


def is_controller_only(name):
    """True if `name` (a path inside the wheel) is in CONTROLLER_ONLY."""
    return any(
        name.startswith(entry) if entry.endswith("/") else name == entry
        for entry in CONTROLLER_ONLY
    )


def _runtime_metadata(text):
    """The METADATA header lines in RUNTIME_METADATA (not the description)."""
    kept = []
    keep = False
    for line in text.splitlines():
        if not line:
            break
        if line[:1] in (" ", "\t"):  # continuation of the previous field
            if keep:
                kept.append(line)
            continue
        field, _, value = line.partition(":")
        keep = field in RUNTIME_METADATA and not (
            field == "Requires-Dist" and ";" in value and "extra" in value.split(";", 1)[1]
        )
        if keep:
            kept.append(line)
    return "\n".join(kept).encode()


def runtime_entries(wheel):
    """(name, bytes) of what the target runs from `wheel`, sorted by name.

    File contents, never the zip itself: zip headers, RECORD and WHEEL vary
    with things the agent never sees. `.dist-info/` is named without the
    version (the version is in METADATA).
    """
    entries = []
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            name = info.filename
            if info.is_dir():
                continue
            top, _, rest = name.partition("/")
            if top.endswith(".dist-info"):
                if rest == "METADATA":
                    data = _runtime_metadata(archive.read(info).decode("utf-8"))
                elif rest in RUNTIME_DIST_INFO:
                    data = archive.read(info)
                else:
                    continue
                entries.append(("dist-info/" + rest, data))
            elif not is_controller_only(name):
                entries.append((name, archive.read(info)))
    return sorted(entries)


def runtime_digest(wheel, dependency_wheels):
    """SHA-256 over what the target runs: `runtime_entries(wheel)` and the
    dependency wheels (by file name and content)."""
    digest = hashlib.sha256()
    for name, data in runtime_entries(wheel):
        digest.update(b"file\0" + name.encode() + b"\0" + hashlib.sha256(data).digest())
    for path in sorted(dependency_wheels, key=os.path.basename):
        digest.update(b"dependency\0" + os.path.basename(path).encode() + b"\0")
        digest.update(bytes.fromhex(file_sha256(path)))
    return digest.hexdigest()


def run(module, argv, env=None):
    rc, out, err = module.run_command(argv, environ_update=env or {})
    if rc != 0:
        module.fail_json(msg="command failed: %s" % " ".join(argv), rc=rc, stdout=out, stderr=err)


def publish(tmp, final):
    """Move a finished build into place; a concurrent identical build may have won."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not os.path.isdir(final):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def build_wheel(module, source_dir, files, stubs, target):
    work = tempfile.mkdtemp(prefix="mirrorkit-wheel-")
    try:
        src = os.path.join(work, "src")
        for rel in files:
            dest = os.path.join(src, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copyfile(os.path.join(source_dir, rel), dest)
        for rel in stubs:
            dest = os.path.join(src, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "w") as handle:
                handle.write("mirrorkit\n")
        out = os.path.join(work, "out")
        run(
            module,
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", out, src]
            + module.params["pip_args"],
            env={"SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
        if find_wheel(out) is None:
            module.fail_json(msg="pip wheel produced no single wheel in %s" % out)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        publish(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def download_wheelhouse(module, reqs, target):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(target))
    try:
        argv = [
            sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
            "--python-version", module.params["python_version"], "--implementation", "cp",
            "--dest", tmp,
        ]
        for platform in module.params["platforms"]:
            argv += ["--platform", platform]
        run(module, argv + module.params["pip_args"] + reqs,
            env={"PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        with open(os.path.join(tmp, COMPLETE), "w") as handle:
            handle.write("\n".join(reqs) + "\n")
        publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def prune(builds, keep):
    """Remove all but the `keep` most recently built wheels."""
    entries = sorted(
        (os.path.join(builds, n) for n in os.listdir(builds)),
        key=os.path.getmtime, reverse=True,
    )
    for path in entries[max(keep, 1):]:
        shutil.rmtree(path, ignore_errors=True)


def main():
    module = AnsibleModule(
        argument_spec={
            "source_dir": {"type": "path", "required": True},
            "source_paths": {
                "type": "list", "elements": "str",
                "default": ["pyproject.toml", "mirrorkit"],
            },
            "stub_paths": {"type": "list", "elements": "str", "default": ["README.md"]},
            "keep_builds": {"type": "int", "default": 5},
            "cache_dir": {"type": "path", "required": True},
            "python_version": {"type": "str", "required": True},
            "platforms": {"type": "list", "elements": "str", "required": True},
            "pip_args": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    p = module.params
    source_dir = os.path.realpath(p["source_dir"])
    if not os.path.isfile(os.path.join(source_dir, "pyproject.toml")):
        module.fail_json(msg="%s has no pyproject.toml: set mirrorkit_agent_source_dir" % source_dir)
    try:
        digest, files = source_digest(source_dir, p["source_paths"])
    except FileNotFoundError as exc:
        module.fail_json(msg="mirrorkit source path missing: %s" % exc)

    changed = False
    build_dir = os.path.join(p["cache_dir"], "build", digest[:20])
    wheel = find_wheel(build_dir)
    if wheel is not None and not module.check_mode:
        os.utime(build_dir)  # recently used: kept by prune()
    if wheel is None:
        changed = True
        if module.check_mode:
            module.exit_json(changed=True, msg="would build the wheel for sources %s" % digest[:20])
        if os.path.isdir(build_dir):
            shutil.rmtree(build_dir)
        build_wheel(module, source_dir, files, p["stub_paths"], build_dir)
        wheel = find_wheel(build_dir)
        prune(os.path.dirname(build_dir), p["keep_builds"])

    reqs = requirements_of(wheel)
    req_digest = hashlib.sha256("\n".join(sorted(reqs)).encode()).hexdigest()[:16]
    tag = "cp%s-%s" % (p["python_version"].replace(".", ""), "+".join(p["platforms"]))
    wheelhouse = os.path.join(p["cache_dir"], "wheelhouse", tag, req_digest)
    if reqs and not os.path.isfile(os.path.join(wheelhouse, COMPLETE)):
        changed = True
        if module.check_mode:
            module.exit_json(changed=True, msg="would download %s for %s" % (reqs, tag))
        if os.path.isdir(wheelhouse):
            shutil.rmtree(wheelhouse)
        download_wheelhouse(module, reqs, wheelhouse)
    deps = (
        sorted(n for n in os.listdir(wheelhouse) if n.endswith(".whl"))
        if os.path.isdir(wheelhouse) else []
    )
    module.exit_json(
        changed=changed,
        wheel=wheel,
        wheel_name=os.path.basename(wheel),
        wheel_sha256=file_sha256(wheel),
        runtime_digest=runtime_digest(wheel, [os.path.join(wheelhouse, n) for n in deps]),
        source_digest=digest,
        wheelhouse=wheelhouse,
        wheelhouse_files=deps,
        requirements=reqs,
    )


if __name__ == "__main__":
    main()

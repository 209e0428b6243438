"""The install marker's digest (roles/mirrorkit_agent/library/mirrorkit_wheelhouse.py):
exactly what the target runs, so only an agent-side change reinstalls agents.

- the controller-only list never names a module the agent imports (directly
  or through another module), whatever the agent package's layout;
- a controller-only change, or build noise (RECORD, WHEEL, zip timestamps and
  order), leaves the digest unchanged;
- a change to the agent, to a module it imports, to a new top-level module,
  to the runtime requirements, the version, the entry points or a dependency
  wheel changes it.

The wheels here are built the way setuptools lays them out, from the real
source tree, without pip (a real build needs setuptools from the network).
"""

from __future__ import annotations

import ast
import importlib.util
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mirrorkit"
AGENT = PACKAGE / "agent"
MODULE = ROOT / "roles" / "mirrorkit_agent" / "library" / "mirrorkit_wheelhouse.py"


@pytest.fixture(scope="module")
def wh() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mirrorkit_wheelhouse", MODULE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- what the agent imports ---------------------------------------------------


def _module_file(name: str) -> Path | None:
    """The source file of module `name` in this tree (None: not ours, or an attribute)."""
    parts = name.split(".")
    if parts[0] != "mirrorkit":
        return None
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(path: Path) -> list[str]:
    """The package a file's relative imports start from: mirrorkit/agent/x.py and
    mirrorkit/agent/__init__.py are both in ["mirrorkit", "agent"]."""
    return list(path.relative_to(ROOT).parent.parts)


def _imported_names(path: Path) -> Iterator[str]:
    """Every module name `path` may import: import statements anywhere (function-level
    ones included) and importlib.import_module / __import__ with a constant name."""
    tree = ast.parse(path.read_text(), str(path))
    package = _package_of(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call):
            func = node.func
            called = (
                func.attr if isinstance(func, ast.Attribute)
                else func.id if isinstance(func, ast.Name) else ""
            )
            if called in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), (
                    f"{path.relative_to(ROOT)}:{node.lineno}: a dynamic import the digest's "
                    "controller-only check cannot follow; import the module by name"
                )
                yield arg.value


def _with_parents(name: str) -> Iterator[str]:
    """Importing a.b.c runs a/__init__, a/b/__init__ and a/b/c."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        yield ".".join(parts[:i])


def agent_closure() -> dict[Path, Path]:
    """Every file of the tree the agent runs: mirrorkit/agent/** and what it
    imports, transitively. Maps each file to a file that imports it."""
    todo = sorted(AGENT.rglob("*.py"))
    seen: dict[Path, Path] = {p: p for p in todo}
    while todo:
        path = todo.pop()
        for name in _imported_names(path):
            for module in _with_parents(name):
                found = _module_file(module)
                if found is not None and found not in seen:
                    seen[found] = path
                    todo.append(found)
    return seen


def test_the_agent_imports_nothing_the_digest_leaves_out(wh: ModuleType) -> None:
    closure = agent_closure()
    outside = sorted(str(p.relative_to(ROOT)) for p in closure if AGENT not in p.parents)
    # Sanity: the walk does follow imports out of the agent package.
    assert "mirrorkit/__init__.py" in outside and "mirrorkit/errors.py" in outside, outside
    stale = {
        str(p.relative_to(ROOT)): str(by.relative_to(ROOT))
        for p, by in closure.items()
        if wh.is_controller_only(str(p.relative_to(ROOT)))
    }
    assert not stale, (
        "the agent runs these files, which mirrorkit_wheelhouse.CONTROLLER_ONLY leaves out of "
        f"the install digest (file: imported by): {stale}. Take them off CONTROLLER_ONLY, or "
        "stop importing them from the agent; otherwise changing them would not reach agents."
    )


def test_the_agent_entry_points_are_not_controller_only(wh: ModuleType) -> None:
    # bin/mirrorkit-agent (systemd's ExecStart, keepalived's probe, the CLI over SSH).
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'mirrorkit-agent = "mirrorkit.agent.entry:main"' in pyproject
    assert not wh.is_controller_only("mirrorkit/agent/entry.py")
    assert not wh.is_controller_only("mirrorkit/agent/probe.py")


def test_every_controller_only_entry_exists(wh: ModuleType) -> None:
    # A renamed controller module left on the list would no longer exclude anything.
    for entry in wh.CONTROLLER_ONLY:
        assert (ROOT / entry).exists(), f"CONTROLLER_ONLY names {entry}, which does not exist"


# -- the digest ---------------------------------------------------------------

METADATA = """\
Metadata-Version: 2.4
Name: mirrorkit
Version: 0.1.0
Summary: Declarative high-availability data mirroring
License-Expression: Apache-2.0
Requires-Python: >=3.11
Description-Content-Type: text/markdown
Requires-Dist: PyYAML<7,>=6.0
Requires-Dist: xxhash<5,>=3.0
Provides-Extra: controller
Requires-Dist: ansible-core<2.20,>=2.19; extra == "controller"

mirrorkit
"""
ENTRY_POINTS = """\
[console_scripts]
mirrorkit = mirrorkit.cli:main
mirrorkit-agent = mirrorkit.agent.entry:main
"""


def package_files() -> dict[str, bytes]:
    """What setuptools puts under mirrorkit/ in the wheel (sources and package data)."""
    files = {}
    for path in sorted(PACKAGE.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files[str(path.relative_to(ROOT))] = path.read_bytes()
    return files


def build(
    out: Path,
    files: dict[str, bytes],
    *,
    metadata: str = METADATA,
    entry_points: str = ENTRY_POINTS,
    generator: str = "setuptools (80.9.0)",
    date: tuple[int, int, int, int, int, int] = (1980, 1, 1, 0, 0, 0),
    reverse: bool = False,
) -> Path:
    info = "mirrorkit-0.1.0.dist-info"
    entries = dict(files)
    entries[f"{info}/METADATA"] = metadata.encode()
    entries[f"{info}/WHEEL"] = f"Wheel-Version: 1.0\nGenerator: {generator}\n".encode()
    entries[f"{info}/entry_points.txt"] = entry_points.encode()
    entries[f"{info}/top_level.txt"] = b"mirrorkit\n"
    record = "".join(f"{name},sha256={hash(data)},{len(data)}\n" for name, data in entries.items())
    entries[f"{info}/RECORD"] = record.encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w") as archive:
        for name in sorted(entries, reverse=reverse):
            archive.writestr(zipfile.ZipInfo(name, date), entries[name])
    return out


@pytest.fixture
def deps(tmp_path: Path) -> list[Path]:
    paths = []
    for name in ("pyyaml-6.0.2-cp311-cp311-manylinux2014_x86_64.whl",
                 "xxhash-3.5.0-cp311-cp311-manylinux2014_x86_64.whl"):
        path = tmp_path / "deps" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"wheel " + name.encode())
        paths.append(path)
    return paths


@pytest.fixture
def digest_of(wh: ModuleType, tmp_path: Path, deps: list[Path]) -> Callable[..., str]:
    counter = iter(range(1_000_000))

    def digest(files: dict[str, bytes] | None = None, dependencies: list[Path] | None = None,
               **kwargs: object) -> str:
        wheel = build(tmp_path / f"b{next(counter)}" / "mirrorkit-0.1.0-py3-none-any.whl",
                      package_files() if files is None else files, **kwargs)  # type: ignore[arg-type]
        return str(wh.runtime_digest(str(wheel), [str(d) for d in dependencies or deps]))

    return digest


def changed(path: str, text: bytes = b"\n# changed\n") -> dict[str, bytes]:
    files = package_files()
    assert path in files or path.endswith(".py"), path
    files[path] = files.get(path, b"") + text
    return files


CONTROLLER_CHANGES = [
    "mirrorkit/cli.py",
    "mirrorkit/commands/apply.py",
    "mirrorkit/commands/new_command.py",
    "mirrorkit/inventory/validate.py",
    "mirrorkit/lab/spec.py",
    "mirrorkit/lab/Containerfile",
    "mirrorkit/pki.py",
    "mirrorkit/remote.py",
    "mirrorkit/verification.py",
]


@pytest.mark.parametrize("path", CONTROLLER_CHANGES)
def test_a_controller_only_change_keeps_the_digest(
    digest_of: Callable[..., str], path: str
) -> None:
    assert digest_of(changed(path)) == digest_of()


def test_build_noise_and_controller_metadata_keep_the_digest(
    digest_of: Callable[..., str],
) -> None:
    base = digest_of()
    assert digest_of(generator="setuptools (84.2.1)", date=(2024, 5, 1, 12, 0, 0),
                     reverse=True) == base
    # The description (README stub) and the controller's extras are not the target's.
    noisy = METADATA.replace("Summary: Declarative", "Summary: Imperative").replace(
        "\nmirrorkit\n", "\nanother description\n").replace(
        'ansible-core<2.20,>=2.19; extra == "controller"',
        'ansible-core<2.21,>=2.19; extra == "controller"')
    assert digest_of(metadata=noisy) == base


AGENT_CHANGES = [
    "mirrorkit/agent/entry.py",
    "mirrorkit/agent/new_part.py",
    "mirrorkit/__init__.py",
    "mirrorkit/errors.py",
    "mirrorkit/atomicfile.py",
    "mirrorkit/new_shared_module.py",  # not listed anywhere: counted as the agent's
]


@pytest.mark.parametrize("path", AGENT_CHANGES)
def test_an_agent_change_changes_the_digest(digest_of: Callable[..., str], path: str) -> None:
    assert digest_of(changed(path)) != digest_of()


def test_runtime_metadata_entry_points_and_dependencies_change_the_digest(
    digest_of: Callable[..., str], deps: list[Path], tmp_path: Path
) -> None:
    base = digest_of()
    assert digest_of(metadata=METADATA.replace("Version: 0.1.0", "Version: 0.2.0")) != base
    assert digest_of(metadata=METADATA.replace("xxhash<5,>=3.0", "xxhash<6,>=3.0")) != base
    assert digest_of(metadata=METADATA.replace(
        "Requires-Dist: xxhash<5,>=3.0\n",
        "Requires-Dist: xxhash<5,>=3.0\nRequires-Dist: prometheus-client>=0.20\n")) != base
    assert digest_of(entry_points=ENTRY_POINTS.replace("entry:main", "entry:run")) != base
    other = tmp_path / "other" / deps[1].name
    other.parent.mkdir()
    other.write_bytes(b"a rebuilt wheel of the same name")
    assert digest_of(dependencies=[deps[0], other]) != base
    assert digest_of(dependencies=deps[:1]) != base


def test_runtime_entries_are_the_wheel_minus_the_controller(
    wh: ModuleType, tmp_path: Path
) -> None:
    wheel = build(tmp_path / "mirrorkit-0.1.0-py3-none-any.whl", package_files())
    names = [name for name, _ in wh.runtime_entries(str(wheel))]
    assert names == sorted(names)
    assert "mirrorkit/agent/entry.py" in names and "mirrorkit/atomicfile.py" in names
    assert "dist-info/METADATA" in names and "dist-info/entry_points.txt" in names
    assert not [n for n in names if n.endswith(("RECORD", "WHEEL"))]
    assert not [n for n in names if n.startswith(("mirrorkit/commands/", "mirrorkit/lab/"))]
    metadata = dict(wh.runtime_entries(str(wheel)))["dist-info/METADATA"].decode()
    assert metadata.splitlines() == [
        "Name: mirrorkit", "Version: 0.1.0", "Requires-Python: >=3.11",
        "Requires-Dist: PyYAML<7,>=6.0", "Requires-Dist: xxhash<5,>=3.0",
    ]

"""The `mirrorkit` command's surface: help, version, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mirrorkit import __version__
from mirrorkit.cli import COMMANDS, main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mirrorkit", *args], capture_output=True, text=True, check=False
    )


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"mirrorkit {__version__}"


def test_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: mirrorkit" in result.stdout


@pytest.mark.parametrize(
    "args",
    [[], ["no-such-command"], ["apply"], ["status", "--bogus", "x.yml"], ["lab", "fly"]],
)
def test_usage_errors_exit_2_without_traceback(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "usage:" in result.stderr


@pytest.mark.parametrize("command", ["apply", "status", "validate"])
def test_missing_inventory_is_a_clear_failure(command: str, tmp_path: object) -> None:
    result = run_cli(command, "/nonexistent/inventory.yml")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "/nonexistent/inventory.yml" in result.stderr


def test_main_returns_status_instead_of_exiting_on_success(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0


def test_closed_stdout_is_not_a_traceback() -> None:
    # `mirrorkit ... | head` closes the pipe early; the reader left, no traceback.
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from mirrorkit.cli import dispatch; import argparse\n"
         "def spew(a):\n    [print('x' * 100) for _ in range(100000)]\n    return 0\n"
         "sys.exit(dispatch(argparse.Namespace(func=spew)))"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in err

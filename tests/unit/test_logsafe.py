"""Log lines peer data cannot forge (util/logsafe.py), as the agent installs it."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import pytest

from mirrorkit.agent.util.logsafe import SafeFormatter, escape_controls

FMT = "%(levelname)s %(name)s: %(message)s"


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("evil\nWARNING x: forged")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("mk", logging.WARNING, __file__, 1, msg, args, exc_info)


@pytest.mark.parametrize(("raw", "escaped"), [
    ("a\nb", "a\\nb"), ("a\rb", "a\\rb"), ("a\tb", "a\\tb"), ("\x1b[31m", "\\x1b[31m"),
    ("\x00", "\\x00"), ("\x7f", "\\x7f"), ("\x85", "\\x85"), ("\x9f", "\\x9f"),
    ("\u2028\u2029", "\\u2028\\u2029"), ("node2 é ✓", "node2 é ✓"),
])
def test_control_characters_are_escaped(raw: str, escaped: str) -> None:
    assert escape_controls(raw) == escaped
    line = SafeFormatter(FMT).format(_record("peer %s", raw))
    assert line == f"WARNING mk: peer {escaped}"


def test_traceback_stays_readable_and_cannot_start_a_record() -> None:
    text = SafeFormatter(FMT).format(_record("boom", exc=True))
    first, *rest = text.splitlines()
    assert first == "WARNING mk: boom"
    assert rest[0] == "    Traceback (most recent call last):"
    assert all(line.startswith("    ") for line in rest)
    assert rest[-2:] == ["    ValueError: evil", "    WARNING x: forged"]


def test_the_agent_installs_it() -> None:
    code = ("from mirrorkit.agent.cli.main import _setup_logging; _setup_logging(False); "
            "import logging; logging.getLogger('mirrorkit.x').warning('a %s', "
            "'b\\nWARNING forged: line')")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    lines = got.stderr.splitlines()
    assert len(lines) == 1 and re.search(r"WARNING mirrorkit.x: a b\\nWARNING forged: line$",
                                         lines[0]), lines

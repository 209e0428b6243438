"""TIME of `switchover --at`: the accepted forms, and a usage error naming
them for anything else."""

from __future__ import annotations

import datetime as dt

import pytest

from mirrorkit.agent.util.timespec import FORMS, TimeSpecError, format_epoch, parse_time

NOW = dt.datetime(2026, 12, 2, 1, 0, 0, tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-02T03:00:00Z", NOW + 2 * 3600),
    ("2026-12-02T04:00:00+01:00", NOW + 2 * 3600),
    ("2026-12-01T22:00:00-05:00", NOW + 2 * 3600),
    ("2026-12-02T01:00:00.500+00:00", NOW + 0.5),
    ("+30s", NOW + 30),
    ("+5m", NOW + 300),
    ("+2h", NOW + 7200),
    ("+1d", NOW + 86400),
    ("+1.5m", NOW + 90),
    (f"@{NOW + 10:.3f}", NOW + 10),
])
def test_accepted_forms(text: str, expected: float) -> None:
    assert parse_time(text, NOW) == pytest.approx(expected)


@pytest.mark.parametrize(("text", "problem"), [
    ("tomorrow", "is not a time"),
    ("", "is not a time"),
    ("5m", "is not a time"),
    ("+5", "is not a time"),
    ("+5 m", "is not a time"),
    ("-5m", "is not a time"),
    ("2026-13-02T03:00:00Z", "is not a time"),
    ("2026-12-02T03:00:00", "has no time zone"),
    ("2026-12-02T00:59:59Z", "is not in the future"),
    ("+0s", "is not in the future"),
    (f"@{NOW:.0f}", "is not in the future"),
    ("2028-01-01T00:00:00Z", "more than a year ahead"),
    ("@999999999999", "more than a year ahead"),
    ("+999999999d", "more than a year ahead"),
    ("x" * 10_000, "is not a time"),
    ("2026-12-02T03:00:00Z\n", "is not a time"),
])
def test_refused_with_what_would_be_right(text: str, problem: str) -> None:
    with pytest.raises(TimeSpecError) as exc:
        parse_time(text, NOW)
    message = str(exc.value)
    assert problem in message
    assert "\n" not in message and len(message) < 400  # never echoes a huge value
    if problem in ("is not a time", "is not in the future"):
        assert FORMS in message  # names the accepted forms
    if problem == "has no time zone":
        assert "add Z (UTC)" in message


def test_format_epoch() -> None:
    assert format_epoch(NOW + 2 * 3600) == "2026-12-02T03:00:00Z"
    assert "after 1970" in format_epoch(1e20)

"""How inventory values are written into the files the roles template.

Validation (`validate.py`) already refuses what no target accepts (newlines,
NUL, over-long names); this is the second line, for what is valid but
special in a format:

* systemd unit lists (`ReadWritePaths=`): words separated by spaces, double
  quotes group a word, and inside them a backslash escapes the next
  character; `%` starts a unit specifier (`%n`, `%h`), `%%` is a percent
  sign. Checked against systemd 252's own parser
  (tests/unit/test_templates_render.py): `"/srv/my data"` is one path.
* keepalived.conf: a double-quoted string is one word, whatever it holds
  (keepalived has no escape for `"` itself, so a value containing one is
  refused; validation allows none in interface and host names).
"""

from __future__ import annotations

from collections.abc import Iterable

from mirrorkit.errors import MirrorkitError


def systemd_word(value: str) -> str:
    """One word of a systemd unit setting, quoted so that systemd reads back `value`."""
    if not value.isprintable():
        raise MirrorkitError(f"{value!r} cannot be written into a systemd unit "
                             "(it contains a control character)")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def systemd_words(values: Iterable[str]) -> str:
    """A space-separated systemd list (ReadWritePaths=) of `values`, each quoted."""
    return " ".join(systemd_word(v) for v in values)


def keepalived_word(value: str) -> str:
    """One keepalived.conf word, double-quoted."""
    if not value.isprintable() or '"' in value:
        raise MirrorkitError(f"{value!r} cannot be written into keepalived.conf "
                             "(it contains a double quote or a control character)")
    return f'"{value}"'

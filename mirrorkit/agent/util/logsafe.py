"""Log lines that peer data cannot forge.

A log line is one record per line: journald (through ``JOURNAL_STREAM``)
and every log reader split on newlines. Names, reasons and paths in our
messages come from peers (HELLO fields, ERROR reasons, certificate names,
record paths), so a newline in one of them would start a line that looks
like ours. :class:`SafeFormatter` escapes every C0 and C1 control character
(and the Unicode line and paragraph separators) in the formatted message as
``\\n``, ``\\x1b``, ``\\u2028``..., whatever code logged it.

Tracebacks stay multi-line and readable: they are ours (frames of our
code), but their last line holds the exception's message, which may carry
peer data. Each of their lines is escaped the same way and indented, so no
line of a traceback can look like the start of a record.
"""

from __future__ import annotations

import logging

__all__ = ["SafeFormatter", "escape_controls"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_TABLE: dict[int, str] = {
    c: _NAMED.get(chr(c), f"\\x{c:02x}") for c in [*range(0x20), *range(0x7F, 0xA0)]}
_TABLE.update({0x2028: "\\u2028", 0x2029: "\\u2029"})
TRACE_INDENT = "    "


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape."""
    return text.translate(_TABLE)


class SafeFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose output has exactly one line per
    record, plus indented traceback lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        saved = record.message
        record.message = escape_controls(saved)
        try:
            return super().formatMessage(record)
        finally:
            record.message = saved

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        return _indent(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indent(super().formatStack(stack_info))


def _indent(text: str) -> str:
    return "\n".join(TRACE_INDENT + escape_controls(line) for line in text.splitlines())

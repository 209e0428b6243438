"""JSON from a peer or a client, parsed within bounds.

``json.loads`` recurses once per level of nesting and raises
``RecursionError`` (not ``ValueError``) near a thousand levels; code that
walks the result (status rendering, field checks) recurses again. Every
JSON the agent takes from outside (wire control frames, control-socket
bodies, state files) goes through :func:`loads`, which refuses input over a
size or nesting bound with :class:`JsonRefused`, a ``ValueError`` whose
message says which bound and what would be accepted.

Depth is measured before parsing, from the brackets outside strings: a
single pass with two regular expressions, linear in the input, so a
64 KiB payload of brackets costs a few milliseconds at most.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["MAX_DEPTH", "JsonRefused", "loads", "nesting_depth"]

# Deep enough for every document the agent exchanges (the deepest, /status
# and a HELLO's term history, nest 4-5 levels); far below the interpreter's
# recursion limit.
MAX_DEPTH = 32

# A string, or an unterminated one running to the end of the input: matched
# once from its opening quote, possessively, so no input makes this
# quadratic (a plain pattern retried from every quote of '"\\"\\"...' took
# 20 s on a 64 KiB frame).
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


class JsonRefused(ValueError):
    """The input is not JSON within the bounds; the message says why."""


def nesting_depth(data: bytes) -> int:
    """The deepest bracket nesting of ``data`` outside JSON strings (an
    unterminated string counts as text: the parser refuses it anyway)."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRING.sub(b'""', data)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth = max(0, depth - 1)
    return deepest


def loads(data: bytes | str, *, max_bytes: int, max_depth: int = MAX_DEPTH,
          what: str = "JSON") -> Any:
    """Parse ``data``; raise :class:`JsonRefused` when it is larger than
    ``max_bytes``, nested deeper than ``max_depth``, not UTF-8 or not JSON.
    NaN and Infinity are refused too: no peer of ours sends them."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise JsonRefused(f"{what} of {len(raw)} bytes is over the limit of {max_bytes}")
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise JsonRefused(f"{what} nests {depth} levels deep; at most {max_depth} are accepted")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise JsonRefused(f"{what} is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except RecursionError:  # cannot happen below max_depth; refused all the same
        raise JsonRefused(f"{what} nests too deeply") from None
    except JsonRefused:
        raise
    except ValueError as exc:
        raise JsonRefused(f"{what} is not valid JSON: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise JsonRefused(f"{name} is not a number JSON allows")

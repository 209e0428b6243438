"""The bounded JSON loader every outside JSON goes through (util/boundedjson.py)."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirrorkit.agent.util.boundedjson import MAX_DEPTH, JsonRefused, loads, nesting_depth


def test_depth_at_the_bound_is_accepted_and_one_past_refused() -> None:
    at = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert nesting_depth(at.encode()) == MAX_DEPTH
    assert loads(at, max_bytes=1 << 20) is not None
    past = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    with pytest.raises(JsonRefused, match=f"nests {MAX_DEPTH + 1} levels deep; at most"):
        loads(past, max_bytes=1 << 20)


def test_a_thousand_levels_is_a_clear_refusal_not_a_recursion_error() -> None:
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    with pytest.raises(JsonRefused, match="levels deep"):
        loads(deep, max_bytes=1 << 20)


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"a": "[[[[{{{{" * 100, "b": ["\\\"[[["]})
    assert nesting_depth(text.encode()) == 2
    assert loads(text, max_bytes=1 << 20)["b"] == ['\\"[[[']


def test_size_bound() -> None:
    assert loads(b"[1]", max_bytes=3) == [1]
    with pytest.raises(JsonRefused, match="4 bytes is over the limit of 3"):
        loads(b"[1 ]", max_bytes=3)


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"x": -Infinity}'])
def test_non_finite_constants_are_refused(text: str) -> None:
    with pytest.raises(JsonRefused, match="not a number JSON allows"):
        loads(text, max_bytes=100)


@pytest.mark.parametrize("data", [b"\xff\xfe", b"{", b"", b"[1,]", b'"\\ud800"x'])
def test_malformed_is_json_refused(data: bytes) -> None:
    with pytest.raises(JsonRefused):
        loads(data, max_bytes=100)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=50,
)


@pytest.mark.fuzz
@given(_json)
def test_round_trip_of_any_shallow_document(doc: object) -> None:
    text = json.dumps(doc)
    if nesting_depth(text.encode()) <= MAX_DEPTH:
        assert loads(text, max_bytes=1 << 20) == doc


@pytest.mark.fuzz
@given(st.binary(max_size=4096))
def test_any_bytes_give_a_value_or_json_refused(data: bytes) -> None:
    with contextlib.suppress(JsonRefused):  # anything else fails the test
        loads(data, max_bytes=2048)


@pytest.mark.timeout(120)  # a hang guard, not a speed check: linear is ~0.05 s here
def test_escape_heavy_unterminated_strings_are_linear_not_quadratic() -> None:
    # Found in review: '"' followed by '\\"' repeated made the string pattern
    # retry from every quote (8 KB took 0.5 s, 64 KiB ~20 s on the event loop);
    # 1 MiB of it would take hours with the old pattern.
    hostile = b'"' + b'\\"' * (512 << 10)
    assert nesting_depth(hostile) == 0
    with pytest.raises(JsonRefused):
        loads(hostile, max_bytes=2 << 20)


@pytest.mark.parametrize(("text", "depth"), [
    (b'["a\\"["]', 1), (b'["[', 1), (b'"\\', 0), (b'[["\\\\"]]', 2), (b'["]"]', 1)])
def test_depth_around_escapes_and_unterminated_strings(text: bytes, depth: int) -> None:
    assert nesting_depth(text) == depth

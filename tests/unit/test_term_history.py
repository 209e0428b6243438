"""Term histories and the last LSN two members share (log/terms.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mirrorkit.agent.log.records import Op, OpKind
from mirrorkit.agent.log.segments import MirrorLog
from mirrorkit.agent.log.terms import (
    HistoryUnreadable,
    TermHistory,
    last_shared,
    term_at,
    valid_history,
)


def test_term_at_follows_the_entries() -> None:
    h = [(1, 1), (3, 50), (4, 80)]
    assert term_at(h, 1) == 1 and term_at(h, 49) == 1
    assert term_at(h, 50) == 3 and term_at(h, 79) == 3 and term_at(h, 10**6) == 4
    assert term_at([(2, 10)], 9) is None


@pytest.mark.parametrize(("a", "a_last", "b", "b_last", "shared"), [
    ([], 0, [], 0, 0),                                  # two fresh members
    ([(1, 1)], 100, [(1, 1)], 40, 40),                  # a receiver behind: no divergence
    ([(1, 1)], 120, [(1, 1), (2, 110)], 200, 109),      # old primary wrote 110..120 in term 1
    ([(1, 1), (2, 110)], 200, [(1, 1)], 120, 109),      # the same, seen from the other side
    ([(1, 1), (2, 50)], 60, [(1, 1), (3, 50)], 70, 49),  # two promotions at the same LSN
    ([(1, 1), (2, 50), (4, 90)], 95, [(1, 1), (2, 50), (4, 90)], 99, 95),
    ([(1, 1), (2, 50), (4, 90)], 95, [(1, 1), (2, 50), (5, 90)], 99, 89),
    ([(1, 1)], 120, [(1, 1)], 100, 100),                # same term, one side longer
    ([(2, 10)], 30, [(1, 1), (2, 10)], 30, 0),          # history does not reach back: unsure
])
def test_last_shared(a: list[tuple[int, int]], a_last: int, b: list[tuple[int, int]],
                     b_last: int, shared: int) -> None:
    assert last_shared(a, a_last, b, b_last) == shared
    assert last_shared(b, b_last, a, a_last) == shared


def test_note_persists_new_terms_and_replaces_unwritten_ones(tmp_path: Path) -> None:
    h = TermHistory(tmp_path / "terms.json", [])
    h.note(1, 1)
    h.note(1, 40)  # same term continues: nothing new
    h.note(3, 50)
    h.note(4, 50)  # term 3 was noted but never written at 50
    assert h.entries == [(1, 1), (4, 50)]
    assert json.loads((tmp_path / "terms.json").read_text()) == {"history": [[1, 1], [4, 50]]}
    with pytest.raises(ValueError, match="older"):
        h.note(2, 60)
    h.truncate_after(49)
    assert h.entries == [(1, 1)]
    h.adopt([(1, 1), (2, 30), (5, 70)], 60)
    assert h.entries == [(1, 1), (2, 30)]


def test_load_refuses_a_damaged_file(tmp_path: Path) -> None:
    log = MirrorLog(tmp_path / "log")
    path = tmp_path / "terms.json"
    for bad in ("{not json", '{"history": [[2, 5], [1, 9]]}', '{"history": [[1]]}', "[]"):
        path.write_text(bad)
        with pytest.raises(HistoryUnreadable, match=r"terms\.json"):
            TermHistory.load(path, log)
    log.close()


def test_load_derives_a_missing_history_from_the_log(tmp_path: Path) -> None:
    log = MirrorLog(tmp_path / "log")
    log.append_ops([Op(OpKind.MKDIR, 0, "a")] * 3, 1)
    log.append_ops([Op(OpKind.MKDIR, 0, "b")] * 2, 2)
    h = TermHistory.load(tmp_path / "terms.json", log)
    assert h.entries == [(1, 1), (2, 4)]
    assert TermHistory.load(tmp_path / "terms.json", log).entries == [(1, 1), (2, 4)]
    log.close()


def test_valid_history_bounds_and_orders() -> None:
    assert valid_history([[1, 1], [2, 1], [5, 10]]) is None
    assert "increase" in str(valid_history([[1, 1], [1, 5]]))
    assert "below" in str(valid_history([[1, 5], [2, 3]]))
    assert "at most" in str(valid_history([[i, i] for i in range(1, 1002)]))
    assert "integers" in str(valid_history([[1, True]]))

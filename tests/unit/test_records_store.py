"""records-app's store: ids and files, without HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirrorkit.records_app.store import MAX_LIST, RecordStore, host_label, valid_id


def test_host_names_become_id_labels() -> None:
    assert host_label("Node1.Lab") == "node1-lab"
    assert host_label("___") == "host"
    assert len(host_label("x" * 200)) == 63


def test_ids_increase_even_when_the_clock_does_not(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store = RecordStore(tmp_path, "node1")
    monkeypatch.setattr("time.time_ns", lambda: 5)  # a clock stuck (or stepped back)
    ids = [store.new_id() for _ in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert all(valid_id(i) for i in ids)
    assert ids[0] == "00000000000000000005-000001-node1"


def test_write_read_list(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "app", "node2")
    store.open()
    first, path = store.write(b"one")
    second, _ = store.write(b"two")
    assert path.read_bytes() == b"one" and store.read(second, 10) == b"two"
    assert store.read("00000000000000000001-000001-node2", 10) is None
    assert store.list_ids() == [first, second]
    assert store.list_ids(after=first) == [second]
    assert store.list_ids(limit=10 * MAX_LIST) == [first, second]
    with pytest.raises(OSError, match="larger than 2 bytes"):
        store.read(first, 2)
    (tmp_path / "app" / "not-an-id").write_text("")
    assert store.list_ids() == [first, second]  # other files are not records


def test_a_path_that_is_no_id_is_refused(tmp_path: Path) -> None:
    store = RecordStore(tmp_path, "node1")
    for bad in ("../etc/passwd", "", "00000000000000000001-000001-", "a" * 30):
        with pytest.raises(ValueError, match="is not a record id"):
            store.path_of(bad)

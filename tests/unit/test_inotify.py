"""The ctypes inotify binding on real directories."""

from __future__ import annotations

import asyncio
import errno
import os
import struct
from pathlib import Path

import pytest

from mirrorkit.agent.capture import inotify as ino
from mirrorkit.agent.capture.inotify import Inotify, InotifyEvent, parse_events

MASK = ino.IN_CREATE | ino.IN_CLOSE_WRITE | ino.IN_DELETE | ino.IN_MOVED_FROM | ino.IN_MOVED_TO


def test_events_for_create_write_move_delete(tmp_path: Path) -> None:
    with Inotify() as notify:
        wd = notify.add_watch(tmp_path, MASK)
        assert notify.add_watch(str(tmp_path), MASK) == wd  # same inode, same wd
        (tmp_path / "f").write_text("x")
        os.rename(tmp_path / "f", tmp_path / "g")
        os.unlink(tmp_path / "g")
        events = notify.read_now()
    kinds = [(e.mask & ~ino.IN_ISDIR, e.name) for e in events]
    assert kinds == [
        (ino.IN_CREATE, "f"),
        (ino.IN_CLOSE_WRITE, "f"),
        (ino.IN_MOVED_FROM, "f"),
        (ino.IN_MOVED_TO, "g"),
        (ino.IN_DELETE, "g"),
    ]
    assert all(e.wd == wd for e in events)
    assert events[2].cookie == events[3].cookie != 0


def test_directory_flag_and_odd_names(tmp_path: Path) -> None:
    with Inotify() as notify:
        notify.add_watch(tmp_path, MASK)
        (tmp_path / "sub").mkdir()
        name = os.fsdecode(b"caf\xe9 \xff")  # not UTF-8: surrogateescape round trip
        (tmp_path / name).write_bytes(b"")
        events = notify.read_now()
    assert events[0].mask == ino.IN_CREATE | ino.IN_ISDIR and events[0].name == "sub"
    assert events[1].name == name


def test_add_watch_errors_carry_errno(tmp_path: Path) -> None:
    with Inotify() as notify, pytest.raises(OSError) as info:
        notify.add_watch(tmp_path / "missing", MASK)
    assert info.value.errno == errno.ENOENT
    with Inotify() as notify:
        notify.rm_watch(12345)  # unknown watch: fine


def test_parse_events_handles_padding() -> None:
    name = b"abc\0\0\0\0\0\0\0\0\0\0\0\0\0"
    buf = struct.pack("iIII", 3, ino.IN_CREATE, 0, len(name)) + name
    buf += struct.pack("iIII", -1, ino.IN_Q_OVERFLOW, 0, 0)
    assert parse_events(buf) == [
        InotifyEvent(3, ino.IN_CREATE, 0, "abc"),
        InotifyEvent(-1, ino.IN_Q_OVERFLOW, 0, ""),
    ]


def test_asyncio_reader_waits_and_bounds_its_queue(tmp_path: Path) -> None:
    async def main() -> None:
        with Inotify(max_pending=10) as notify:
            notify.attach(asyncio.get_running_loop())
            notify.add_watch(tmp_path, MASK)
            await notify.wait(0.05)  # nothing yet: times out
            assert notify.take() == []
            (tmp_path / "one").write_text("1")
            await notify.wait(5)
            await asyncio.sleep(0.05)
            assert [e.name for e in notify.take()] == ["one", "one"]
            for i in range(20):  # 40 events > max_pending: one synthetic overflow
                (tmp_path / f"f{i}").write_text("x")
            await notify.wait(5)
            await asyncio.sleep(0.05)
            assert notify.take() == [InotifyEvent(-1, ino.IN_Q_OVERFLOW, 0, "")]
            (tmp_path / "after").write_text("x")  # accepted again once taken
            await notify.wait(5)
            await asyncio.sleep(0.05)
            assert {e.name for e in notify.take()} == {"after"}
            notify.wakeup()
            await asyncio.wait_for(notify.wait(None), 1)

    asyncio.run(main())

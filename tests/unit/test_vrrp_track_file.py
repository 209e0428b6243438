"""The agent's VRRP track file (``<runtime dir>/M.vrrp``): ``0`` while this
host is M's writable primary, ``1`` otherwise, rewritten by the publisher
the moment that changes (keepalived's ``track_file``, roles/mirrorkit_vip)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from mirrorkit.agent.api.primary_publisher import PrimaryPublisher
from mirrorkit.agent.util import vrrp_file


def cluster() -> dict[str, Any]:
    return {"host": "node1", "mirrors": {
        "records": {"role": "primary", "term": 4, "fenced": False, "alive": True,
                    "connected": True, "primary": "node1", "lag_seconds": 0.0},
        "orders": {"role": "backup", "term": 2, "fenced": False, "alive": True,
                   "connected": True, "primary": "node2", "lag_seconds": 0.0}}}


def value(directory: Path, mirror: str) -> str:
    return vrrp_file.file_for(directory, mirror).read_text()


def test_zero_for_the_writable_primary_one_for_anything_else(tmp_path: Path) -> None:
    state = cluster()
    PrimaryPublisher(lambda: tmp_path, lambda: state).publish()
    assert value(tmp_path, "records") == "0\n"
    assert value(tmp_path, "orders") == "1\n"
    assert vrrp_file.file_for(tmp_path, "records").stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob(".*.tmp"))  # renamed into place, no temp left


def test_a_step_down_is_in_the_file_at_the_next_publish_call(tmp_path: Path) -> None:
    state = cluster()
    publisher = PrimaryPublisher(lambda: tmp_path, lambda: state)
    publisher.publish()
    state["mirrors"]["records"]["fenced"] = True  # e.g. the lease ran out
    publisher.publish()  # what the HA loop calls when writability changes
    assert value(tmp_path, "records") == "1\n"
    state["mirrors"]["records"]["fenced"] = False
    publisher.publish()
    assert value(tmp_path, "records") == "0\n"
    state["mirrors"]["records"]["role"] = "backup"
    publisher.publish()
    assert value(tmp_path, "records") == "1\n"


def test_written_only_when_the_value_changes(tmp_path: Path) -> None:
    state = cluster()
    publisher = PrimaryPublisher(lambda: tmp_path, lambda: state)
    publisher.publish()
    assert publisher.vrrp_writes == 2  # at start: both mirrors
    inode = vrrp_file.file_for(tmp_path, "records").stat().st_ino
    for _ in range(5):
        publisher.publish()
    # keepalived rereads the file on every change: nothing changed, nothing written.
    assert publisher.vrrp_writes == 2
    assert vrrp_file.file_for(tmp_path, "records").stat().st_ino == inode
    changed = copy.deepcopy(state)
    changed["mirrors"]["orders"]["role"] = "primary"
    changed["mirrors"]["orders"]["primary"] = "node1"
    state.update(changed)
    publisher.publish()
    assert publisher.vrrp_writes == 3 and value(tmp_path, "orders") == "0\n"


def test_a_deleted_file_is_written_again(tmp_path: Path) -> None:
    state = cluster()
    publisher = PrimaryPublisher(lambda: tmp_path, lambda: state)
    publisher.publish()
    vrrp_file.file_for(tmp_path, "records").unlink()
    publisher.publish()
    assert value(tmp_path, "records") == "0\n"


def test_a_new_publisher_writes_at_start_over_a_stale_value(tmp_path: Path) -> None:
    vrrp_file.write(tmp_path, "records", primary=False)  # left by an earlier agent
    vrrp_file.write(tmp_path, "orders", primary=True)
    state = cluster()
    PrimaryPublisher(lambda: tmp_path, lambda: state).publish()
    assert value(tmp_path, "records") == "0\n" and value(tmp_path, "orders") == "1\n"


def test_stop_leaves_the_track_files(tmp_path: Path) -> None:
    state = cluster()
    publisher = PrimaryPublisher(lambda: tmp_path, lambda: state)
    publisher.publish()
    publisher.stop()
    assert not list(tmp_path.glob("*.primary"))
    assert value(tmp_path, "records") == "0\n"


def test_a_mirror_still_starting_leaves_the_previous_agents_value(tmp_path: Path) -> None:
    """An agent restart must not drop the primary's VIP at once: until the
    mirror's state is read, the track file keeps what the last agent wrote."""
    vrrp_file.write(tmp_path, "records", primary=True)  # the agent before the restart
    state = cluster()
    state["mirrors"]["records"] = {"role": "unknown", "term": None, "primary": None,
                                   "fenced": True, "alive": False, "starting": True}
    publisher = PrimaryPublisher(lambda: tmp_path, lambda: state)
    publisher.publish()
    assert value(tmp_path, "records") == "0\n"
    assert (tmp_path / "records.primary").read_text().split()[1] == "0"  # the script: no
    state["mirrors"]["records"] = cluster()["mirrors"]["records"]  # started: primary
    publisher.publish()
    assert value(tmp_path, "records") == "0\n"
    state["mirrors"]["records"]["role"] = "backup"  # a definite verdict: written at once
    publisher.publish()
    assert value(tmp_path, "records") == "1\n"


def test_a_mirror_that_failed_to_start_is_not_primary(tmp_path: Path) -> None:
    vrrp_file.write(tmp_path, "records", primary=True)
    state = cluster()
    state["mirrors"]["records"] = {"role": "primary", "term": 4, "fenced": True,
                                   "alive": False, "error": "log corrupt"}
    PrimaryPublisher(lambda: tmp_path, lambda: state).publish()
    assert value(tmp_path, "records") == "1\n"

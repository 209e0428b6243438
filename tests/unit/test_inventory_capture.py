"""`capture: watch|mount` and `backing` in the inventory (issue 9): what
validate refuses, with which words, and what each member's agent config and
mountd instance get."""

from __future__ import annotations

from typing import Any

import pytest
from test_inventory_validate import HOSTS, base, check, one, records, second_mirror

from mirrorkit.agent.config import parse_config
from mirrorkit.inventory.hostconfig import host_config, mount_units
from mirrorkit.inventory.load import build_inventory
from mirrorkit.inventory.model import Inventory, default_backing
from mirrorkit.inventory.validate import InventoryVars

F = "mirrorkit_mirrors.records."


def mount(**kw: Any) -> dict[str, Any]:
    v = base()
    records(v).update(capture="mount", **kw)
    return v


def model(v: dict[str, Any]) -> Inventory:
    assert check(v) == []
    hostvars = {h: {"ansible_host": a} for h, a in HOSTS.items()}
    return build_inventory(InventoryVars("inv.yml", v, hostvars))


def test_watch_is_the_default_and_mount_is_accepted() -> None:
    assert model(base()).mirrors["records"].capture == "watch"
    m = model(mount()).mirrors["records"]
    assert (m.capture, m.backing) == ("mount", "/srv/.records.mirrorkit")
    assert model(mount(backing="/data/records-store")).mirrors["records"].backing \
        == "/data/records-store"


def test_default_backing_is_a_hidden_sibling_on_the_same_parent() -> None:
    assert default_backing("/srv/records") == "/srv/.records.mirrorkit"
    assert default_backing("/data") == "/.data.mirrorkit"
    assert default_backing("/srv/my data") == "/srv/.my data.mirrorkit"


@pytest.mark.parametrize(("kw", "field", "text"), [
    ({"capture": "fuse"}, "capture", "use watch or mount"),
    ({"capture": "mount", "paths": ["/srv/a", "/srv/b"]}, "paths",
     "has 2 entries, but capture: mount serves exactly one directory"),
    ({"capture": "mount", "exclude": ["*.tmp"]}, "exclude", "logs every change"),
    ({"backing": "/srv/.records.mirrorkit"}, "backing",
     "capture is 'watch' (the default), which has none; set capture: mount, or remove backing"),
    ({"capture": "mount", "backing": "store"}, "backing", "not a normalised absolute"),
    ({"capture": "mount", "backing": "/srv/store/"}, "backing", "not a normalised absolute"),
    ({"capture": "mount", "backing": "/"}, "backing", "other than '/'"),
    ({"capture": "mount", "backing": "/srv/records"}, "backing",
     "is the mirrored path '/srv/records'"),
    ({"capture": "mount", "backing": "/srv/records/.store"}, "backing",
     "is inside the mirrored path"),
    ({"capture": "mount", "backing": "/srv"}, "backing", "contains the mirrored path"),
    ({"capture": "mount", "backing": "/srv/a\nb"}, "backing", "contains a newline"),
    ({"capture": "mount", "backing": 7}, "backing", "absolute path"),
])
def test_capture_rules(kw: dict[str, Any], field: str, text: str) -> None:
    v = base()
    records(v).update(kw)
    err = one(check(v), F + field)
    assert err.mirror == "records"
    assert text in f"{err.problem}; {err.fix}", str(err)


def test_inside_the_path_names_the_default_as_the_fix() -> None:
    err = one(check(mount(backing="/srv/records/.store")), F + "backing")
    assert "backing: /srv/.records.mirrorkit (the default)" in err.fix


def test_sync_is_accepted_with_mount_and_gives_the_failover_members_mountd_sync() -> None:
    v = mount(mode="sync")
    assert check(v) == []
    inv = model(v)
    assert mount_units(inv, "node1")[0]["flags"] == "--sync"
    assert mount_units(inv, "node2")[0]["flags"] == "--sync"
    records(v)["async"] = [{"host": "dr1", "kind": "dr"}]
    assert mount_units(model(v), "dr1")[0]["flags"] == ""  # async members stay async


def test_sync_with_watch_is_refused() -> None:
    v = base()
    records(v)["mode"] = "sync"
    err = one(check(v), F + "mode")
    assert "needs capture: mount" in err.problem and "capture: mount" in err.fix


def test_backing_shared_between_mirrors_on_a_host() -> None:
    v = second_mirror(mount(backing="/srv/store"), paths=["/srv/orders"], capture="mount",
                      backing="/srv/store", **{"async": [{"host": "dr1", "kind": "dr"}]})
    errors = check(v)
    hits = [e for e in errors if e.mirror == "records" and e.host == "dr1"]
    assert hits and "/srv/store" in hits[0].problem and "overlapping" in hits[0].problem
    assert "root:" in hits[0].fix


def test_a_default_backing_overlapping_another_mirrors_path() -> None:
    v = second_mirror(mount(), paths=["/srv/.records.mirrorkit"],
                      **{"async": [{"host": "dr1", "kind": "dr", "root": "/r"}]})
    v["mirrorkit_mirrors"]["orders"].update(primary="node1", backup="node2")
    errors = check(v)
    assert any("overlapping" in e.problem and "/srv/.records.mirrorkit" in e.problem
               for e in errors), [str(e) for e in errors]


def test_two_mount_mirrors_side_by_side_are_fine() -> None:
    v = second_mirror(mount(), capture="mount")
    assert check(v) == []


def test_each_member_gets_the_backing_as_target_and_a_mountd() -> None:
    v = mount()
    records(v)["async"] = [{"host": "dr1", "kind": "dr", "root": "/srv/replicas"}]
    inv = model(v)
    for host in ("node1", "node2"):
        cfg = host_config(inv, host)["mirrors"]["records"]
        assert cfg["paths"] == ["/srv/records"]
        assert cfg["targets"] == ["/srv/.records.mirrorkit"]
        assert cfg["capture"] == "mount"
        assert cfg["mount_socket"] == "/run/mirrorkit/mount-records.sock"
        assert mount_units(inv, host) == [{
            "mirror": "records", "mountpoint": "/srv/records",
            "backing": "/srv/.records.mirrorkit",
            "socket": "/run/mirrorkit/mount-records.sock", "flags": ""}]
        parse_config(host_config(inv, host))  # the agent accepts it
    # an async member with a root: both the mount and the backing move under it
    cfg = host_config(inv, "dr1")["mirrors"]["records"]
    assert cfg["targets"] == ["/srv/replicas/srv/.records.mirrorkit"]
    assert mount_units(inv, "dr1")[0]["mountpoint"] == "/srv/replicas/srv/records"
    parse_config(host_config(inv, "dr1"))
    # the arbiter holds no data: no mount, no capture setting
    assert mount_units(inv, "arb1") == []
    assert "capture" not in host_config(inv, "arb1")["mirrors"]["records"]
    parse_config(host_config(inv, "arb1"))


def test_watch_mirrors_have_no_mountd_and_no_capture_key() -> None:
    inv = model(base())
    assert mount_units(inv, "node1") == []
    cfg = host_config(inv, "node1")["mirrors"]["records"]
    assert "capture" not in cfg and cfg["targets"] == ["/srv/records"]

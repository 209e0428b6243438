"""Agent config: the documented shape loads; every error is reported at once."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from mirrorkit.agent.cli.main import main
from mirrorkit.agent.config import ConfigError, load_config, parse_config

GOOD: dict[str, Any] = {
    "host": "node1",
    "api": {"listen": "127.0.0.1", "port": 7480},
    "state_dir": "/var/lib/mirrorkit",
    "mirrors": {
        "records": {
            "role": "primary", "kind": None, "mode": "async", "port": 7410,
            "paths": ["/srv/records"], "exclude": [], "targets": ["/srv/records"],
            "timeouts": {"heartbeat": 1.0, "qos": 8.0, "arbiter": 10.0},
            "tls": {"ca": "/etc/mirrorkit/pki/records/ca.crt",
                    "cert": "/etc/mirrorkit/pki/records/member.crt",
                    "key": "/etc/mirrorkit/pki/records/member.key"},
            "members": {
                "node1": {"address": "198.18.7.11", "role": "primary"},
                "node2": {"address": "198.18.7.12", "role": "backup"},
                "arb1": {"address": "198.18.7.13", "role": "arbiter"},
                "dr1": {"address": "198.18.7.14", "role": "async", "kind": "dr"},
            },
            "hooks": {},
        }
    },
}


def issues(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    return [str(i) for i in exc.value.issues]


def test_documented_shape_loads() -> None:
    cfg = parse_config(GOOD)
    m = cfg.mirrors["records"]
    assert cfg.host == "node1" and cfg.api_port == 7480
    assert m.members["dr1"].member_class == "async"
    assert m.members["node2"].member_class == "failover"
    assert m.members["node2"].port == 7410
    assert m.targets == [Path("/srv/records")]
    assert m.log_max_bytes == 1 << 30


def test_all_errors_reported_together() -> None:
    bad = copy.deepcopy(GOOD)
    r = bad["mirrors"]["records"]
    r["role"] = "boss"
    r["port"] = 70000
    r["paths"] = ["relative/path"]
    r["timeouts"] = {"heartbeat": 5.0, "qos": 8.0, "arbiter": 2.0}
    r["members"]["node2"]["address"] = "not-an-ip"
    r["surprise"] = 1
    found = issues(bad)
    text = "\n".join(found)
    for expected in ("mirrors.records.role: is 'boss' (expected one of primary",
                     "mirrors.records.port: is 70000 (expected a TCP port 1-65535)",
                     "mirrors.records.paths[0]: is 'relative/path' (expected an absolute path)",
                     "mirrors.records.timeouts.qos",
                     "mirrors.records.timeouts.arbiter",
                     "mirrors.records.members.node2.address",
                     "mirrors.records.surprise: unknown field"):
        assert expected in text, text
    assert len(found) >= 7


def test_host_must_be_a_member_and_roles_agree() -> None:
    bad = copy.deepcopy(GOOD)
    bad["host"] = "stranger"
    assert any("does not list this host 'stranger'" in i for i in issues(bad))
    bad = copy.deepcopy(GOOD)
    bad["mirrors"]["records"]["role"] = "backup"
    assert any("members.node1.role" in i for i in issues(bad))


def test_async_needs_kind_and_targets_match_paths() -> None:
    bad = copy.deepcopy(GOOD)
    r = bad["mirrors"]["records"]
    bad["host"] = "dr1"
    r["role"] = "async"
    r["targets"] = ["/a", "/b"]
    found = issues(bad)
    assert any("mirrors.records.kind: is missing" in i for i in found)
    assert any("one target per path" in i for i in found)


def test_not_a_mapping() -> None:
    assert issues(["x"]) == ["(top): is a list (['x']) (expected a mapping)"]


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yml"
    good.write_text(yaml.safe_dump(GOOD))
    assert main(["--check-config", str(good)]) == 0
    bad = tmp_path / "bad.yml"
    bad.write_text("host: [unclosed\n")
    assert main(["--check-config", str(bad)]) == 1
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["--check-config", str(tmp_path / "missing.yml")]) == 1
    broken = copy.deepcopy(GOOD)
    broken["mirrors"]["records"]["mode"] = "eventually"
    bad.write_text(yaml.safe_dump(broken))
    assert main(["--check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "mirrors.records.mode: is 'eventually' (expected one of sync, async)" in err
    assert "Traceback" not in err
    assert load_config(good).host == "node1"


def test_control_socket_defaults_to_run_mirrorkit() -> None:
    assert parse_config(GOOD).control_socket == Path("/run/mirrorkit/control.sock")
    cfg = parse_config({**GOOD, "control_socket": "/tmp/t1/agent.sock"})
    assert cfg.control_socket == Path("/tmp/t1/agent.sock")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("run/control.sock", "is 'run/control.sock'"),
        ("/run/../etc/control.sock", "contains '..'"),
        ("/run/mirrorkit/", "names a directory"),
        ("/", "names a directory"),
        ("/run//mirrorkit/control.sock", "is not normalised"),
        ("/run/" + "x" * 110, "bytes long"),
        (7, "is 7"),
        (None, "is None"),
    ],
)
def test_bad_control_socket_is_reported_clearly(tmp_path: Path, value: Any, problem: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    found = issues({**GOOD, "control_socket": value})
    assert len(found) == 1 and found[0].startswith("control_socket: ") and problem in found[0]
    assert "absolute path" in found[0] or "expected '/" in found[0]
    bad = tmp_path / "agent.yml"
    bad.write_text(yaml.safe_dump({**GOOD, "control_socket": value}))
    assert main(["--check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "control_socket: " in err and problem in err and "Traceback" not in err


# -- failover tunables (docs/architecture.md, "Failover timing") -------------------


def _with(**fields: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    data["mirrors"]["records"].update(fields)
    return data


def test_failover_tunables_default_to_the_documented_values() -> None:
    m = parse_config(GOOD).mirrors["records"]
    assert m.max_lag_on_failover == 1 << 20
    assert m.hook_timeout == 30.0
    assert (m.health.interval, m.health.timeout, m.health.failures) == (5.0, 5.0, 3)


def test_failover_tunables_good_values_load() -> None:
    m = parse_config(_with(
        max_lag_on_failover=0, hook_timeout=3600,
        health={"interval": 0.5, "timeout": 0.25, "failures": 1000},
        hooks={"health_check": "curl -f http://127.0.0.1/", "on_promote": "true"},
        timeouts={"heartbeat": 0.25, "qos": 1.0, "arbiter": 1.5},
    )).mirrors["records"]
    assert m.max_lag_on_failover == 0 and m.hook_timeout == 3600.0
    assert (m.health.interval, m.health.timeout, m.health.failures) == (0.5, 0.25, 1000)
    assert (m.timeouts.heartbeat, m.timeouts.qos, m.timeouts.arbiter) == (0.25, 1.0, 1.5)


@pytest.mark.parametrize(("fields", "path", "expected"), [
    ({"max_lag_on_failover": -1}, "mirrors.records.max_lag_on_failover", "bytes >= 0"),
    ({"max_lag_on_failover": 1.5}, "mirrors.records.max_lag_on_failover", "bytes >= 0"),
    ({"max_lag_on_failover": True}, "mirrors.records.max_lag_on_failover", "bytes >= 0"),
    ({"max_lag_on_failover": "1M"}, "mirrors.records.max_lag_on_failover", "bytes >= 0"),
    ({"hook_timeout": 0}, "mirrors.records.hook_timeout", "> 0 and <= 3600"),
    ({"hook_timeout": 3601}, "mirrors.records.hook_timeout", "> 0 and <= 3600"),
    ({"hook_timeout": float("nan")}, "mirrors.records.hook_timeout", "> 0 and <= 3600"),
    ({"hook_timeout": float("inf")}, "mirrors.records.hook_timeout", "> 0 and <= 3600"),
    ({"hook_timeout": "30s"}, "mirrors.records.hook_timeout", "> 0 and <= 3600"),
    ({"health": "often"}, "mirrors.records.health", "a mapping"),
    ({"health": {"interval": 0}}, "mirrors.records.health.interval", "> 0 and <= 3600"),
    ({"health": {"timeout": -1}}, "mirrors.records.health.timeout", "> 0 and <= 3600"),
    ({"health": {"failures": 0}}, "mirrors.records.health.failures", "from 1 to 1000"),
    ({"health": {"failures": 1001}}, "mirrors.records.health.failures", "from 1 to 1000"),
    ({"health": {"failures": True}}, "mirrors.records.health.failures", "from 1 to 1000"),
    ({"health": {"retries": 3}}, "mirrors.records.health.retries", "one of failures"),
    ({"hooks": {"on_start": "x"}}, "mirrors.records.hooks.on_start", "on_promote"),
    ({"timeouts": {"heartbeat": 0.25, "qos": 1.0, "arbiter": 1.49}},
     "mirrors.records.timeouts.arbiter", "arbiter >= qos + 2 * heartbeat"),
    ({"timeouts": {"heartbeat": 0.5, "qos": 1.0, "arbiter": 10}},
     "mirrors.records.timeouts.qos", "qos >= 3 * heartbeat"),
])
def test_each_bad_failover_tunable_is_reported_with_its_path(
        fields: dict[str, Any], path: str, expected: str) -> None:
    found = issues(_with(**fields))
    hits = [i for i in found if i.startswith(path + ":")]
    assert hits, found
    assert expected in hits[0], hits[0]


def test_bad_failover_tunables_are_reported_together() -> None:
    found = issues(_with(max_lag_on_failover=-1, hook_timeout=0,
                         health={"interval": 0, "failures": 0}))
    paths = {i.split(":")[0] for i in found}
    assert {"mirrors.records.max_lag_on_failover", "mirrors.records.hook_timeout",
            "mirrors.records.health.interval", "mirrors.records.health.failures"} <= paths


# -- capture method (issue 9) ---------------------------------------------------------


def test_capture_defaults_to_watch_and_mount_gets_its_socket() -> None:
    assert parse_config(GOOD).mirrors["records"].capture == "watch"
    m = parse_config(_with(capture="mount")).mirrors["records"]
    assert (m.capture, m.mode) == ("mount", "async")
    assert m.mount_socket == Path("/run/mirrorkit/mount-records.sock")


def test_sync_mode_is_accepted_with_the_mount_capture() -> None:
    m = parse_config(_with(mode="sync", capture="mount")).mirrors["records"]
    assert (m.mode, m.capture) == ("sync", "mount")


def test_an_arbiter_of_a_sync_mirror_needs_no_mount() -> None:
    data = _with(mode="sync", role="arbiter")
    data["host"] = "arb1"
    del data["mirrors"]["records"]["paths"], data["mirrors"]["records"]["targets"]
    assert parse_config(data).mirrors["records"].mode == "sync"


@pytest.mark.parametrize(("fields", "problem"), [
    ({"capture": "fanotify"}, "capture"),
    ({"mode": "sync"}, "mode: is 'sync' with capture 'watch', which cannot make fsync wait"),
    ({"mount_socket": "/run/x.sock"}, "capture is not 'mount'"),
    ({"capture": "mount", "paths": ["/a", "/b"], "targets": ["/a", "/b"]}, "exactly one path"),
    ({"capture": "mount", "mount_socket": "run/x.sock"}, "mount_socket"),
])
def test_bad_capture_settings_are_reported_clearly(fields: dict[str, Any], problem: str) -> None:
    found = issues(_with(**fields))
    assert any(problem in i for i in found), found

"""keepalived's probe: the agent's primary file (util/primary_file.py), its
writer (api/primary_publisher.py) and both readers, the Python probe and
the role's bash check (rendered from its template), on real files."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from mirrorkit.agent.api.primary_publisher import PrimaryPublisher
from mirrorkit.agent.capture.inotify import Inotify
from mirrorkit.agent.cli.probe import DEFAULT_RUNTIME_DIR, runtime_dir_from
from mirrorkit.agent.cli.probe import main as probe_main
from mirrorkit.agent.util import primary_file, vrrp_file
from mirrorkit.agent.util.primary_file import (
    STALE_SECONDS,
    boottime,
    file_for,
    read_verdict,
    render,
)

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "roles/mirrorkit_vip/templates/mirrorkit-primary-check.j2"
ROLES = {"records": "primary", "orders": "backup"}
CHECK_WAIT = yaml.safe_load((REPO / "roles/mirrorkit_vip/defaults/main.yml").read_text())[
    "mirrorkit_vip_check_wait"]
VIP = "198.18.7.100"
IN_CLOSE_NOWRITE = 0x10


def status() -> dict[str, Any]:
    return {"host": "node1", "mirrors": {
        name: {"role": role, "term": 4, "fenced": False, "alive": True, "connected": True,
               "primary": "node1" if role == "primary" else "node2", "lag_seconds": 0.0}
        for name, role in ROLES.items()}}


def probe(directory: Path, mirror: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mirrorkit.agent.entry", "probe", "primary",
                           "--mirror", mirror, "--runtime-dir", str(directory), *args],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def bash_check(tmp_path: Path) -> Path:
    text = jinja2.Template(TEMPLATE.read_text(), keep_trailing_newline=True).render(
        ansible_managed="test", mirrorkit_vip_check_stale_seconds=STALE_SECONDS,
        mirrorkit_vip_check_wait=CHECK_WAIT)
    path = tmp_path / "mirrorkit-primary-check"
    path.write_text(text)
    path.chmod(0o755)
    return path


def checks(bash: Path, directory: Path, mirror: str) -> tuple[int, int]:
    """(Python probe's exit, in this process; bash check's exit)."""
    shell = subprocess.run([str(bash), mirror, str(directory)], capture_output=True,
                           timeout=60, check=False)
    python = probe_main(["primary", "--mirror", mirror, "--runtime-dir", str(directory)])
    return python, shell.returncode


def test_the_publisher_writes_the_verdict_of_get_primary(tmp_path: Path,
                                                         bash_check: Path) -> None:
    run = tmp_path / "run"
    publisher = PrimaryPublisher(lambda: run, status)
    publisher.publish()
    assert (run.stat().st_mode & 0o777) == 0o700
    line = file_for(run, "records").read_text()
    assert line.startswith("mirrorkit-primary/1 1 4 ") and "writable primary" in line
    assert (file_for(run, "records").stat().st_mode & 0o777) == 0o600
    assert checks(bash_check, run, "records") == (0, 0)
    assert checks(bash_check, run, "orders") == (1, 1)  # backup: not primary
    assert checks(bash_check, run, "nosuch") == (1, 1)  # no file
    verbose = probe(run, "orders", "--verbose")
    assert verbose.stdout.strip() == "not primary: role is backup"
    publisher.stop()  # a stopping agent is nobody's primary
    # The track files stay (a routine restart must not drop the VIP at once).
    assert sorted(p.name for p in run.iterdir()) == ["orders.vrrp", "records.vrrp"]
    assert checks(bash_check, run, "records") == (1, 1)


def test_a_mirror_gone_from_status_loses_its_file(tmp_path: Path) -> None:
    mirrors = dict(status()["mirrors"])
    publisher = PrimaryPublisher(lambda: tmp_path, lambda: {"mirrors": mirrors})
    publisher.publish()
    del mirrors["records"]
    publisher.publish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orders.primary", "orders.vrrp",
                                                          "records.vrrp"]
    assert (tmp_path / "records.vrrp").read_text() == "1\n"  # gone: not primary


def test_a_failing_status_removes_the_files(tmp_path: Path) -> None:
    state = {"broken": False}

    def flaky() -> dict[str, Any]:
        if state["broken"]:
            raise RuntimeError("state unreadable")
        return status()

    publisher = PrimaryPublisher(lambda: tmp_path, flaky)
    publisher.publish()
    state["broken"] = True
    publisher.publish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orders.vrrp", "records.vrrp"]
    assert {p.read_text() for p in tmp_path.iterdir()} == {"1\n"}


def write_raw(directory: Path, mirror: str, data: bytes, mode: int = 0o600) -> None:
    path = file_for(directory, mirror)
    path.write_bytes(data)
    path.chmod(mode)


def test_fresh_at_the_bound_is_primary_one_past_is_not(tmp_path: Path) -> None:
    primary_file.write(tmp_path, "records", True, 4, "ok")
    written = float(file_for(tmp_path, "records").read_text().split(" ")[3])
    assert read_verdict(tmp_path, "records", now=written + STALE_SECONDS)[0]
    ok, why = read_verdict(tmp_path, "records", now=written + STALE_SECONDS + 0.02)
    assert not ok and "stale" in why


def test_both_probes_fail_on_a_stale_file(tmp_path: Path, bash_check: Path) -> None:
    write_raw(tmp_path, "records", render(True, 4, "ok", boottime()))
    assert checks(bash_check, tmp_path, "records") == (0, 0)
    write_raw(tmp_path, "records", render(True, 4, "ok", boottime() - STALE_SECONDS - 3))
    assert checks(bash_check, tmp_path, "records") == (1, 1)


@pytest.mark.parametrize("data", [
    b"",
    b"mirrorkit-primary/1 1 4\n",
    b"mirrorkit-primary/2 1 4 %s ok\n",
    b"mirrorkit-primary/1 yes 4 %s ok\n",
    b"mirrorkit-primary/1 0 4 %s role is backup\n",
    b"mirrorkit-primary/1 1 4 12.3 ok\n",
    b"mirrorkit-primary/1 1 4 -1.00 ok\n",
    b"mirrorkit-primary/1 1 4 99999999999.00 ok\n",  # from the future (a reboot)
    b"\xff\xfe garbage\n",
])
def test_anything_but_a_fresh_primary_line_is_not_primary(tmp_path: Path, bash_check: Path,
                                                          data: bytes) -> None:
    now = render(True, 4, "", boottime()).split(b" ")[3]
    write_raw(tmp_path, "records", data.replace(b"%s", now))
    assert checks(bash_check, tmp_path, "records") == (1, 1)


def test_a_file_others_may_write_is_not_trusted(tmp_path: Path) -> None:
    primary_file.write(tmp_path, "records", True, 4, "ok")
    os.chmod(file_for(tmp_path, "records"), 0o666)
    assert probe(tmp_path, "records").returncode == 1


def test_a_symlinked_file_is_not_followed(tmp_path: Path, bash_check: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    primary_file.write(elsewhere, "records", True, 4, "ok")
    run = tmp_path / "run"
    run.mkdir()
    file_for(run, "records").symlink_to(file_for(elsewhere, "records"))
    # Both checks (review: the bash check's -f followed the link and passed).
    assert checks(bash_check, run, "records") == (1, 1)


def test_a_mirror_name_that_is_no_name_is_refused(tmp_path: Path, bash_check: Path) -> None:
    primary_file.write(tmp_path, "records", True, 4, "ok")
    sub = tmp_path / "sub"
    sub.mkdir()
    assert checks(bash_check, sub, "../records") == (1, 1)


def test_the_probe_does_not_load_the_agent(tmp_path: Path) -> None:
    primary_file.write(tmp_path, "records", True, 4, "ok")
    code = (
        "import sys; from mirrorkit.agent.entry import main; "
        f"rc = main(['probe', 'primary', '--mirror', 'records', '--runtime-dir', '{tmp_path}']); "
        "print(rc, 'mirrorkit.agent.cli.main' in sys.modules, 'asyncio' in sys.modules, "
        "'prometheus_client' in sys.modules, 'urllib.request' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == ["0", "False", "False", "False", "False"]


def test_the_runtime_dir_comes_from_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yml"
    cfg.write_text("host: node1\ncontrol_socket: /run/mk/x/control.sock\n")
    assert runtime_dir_from(cfg) == Path("/run/mk/x")
    assert runtime_dir_from(tmp_path / "missing.yml") == DEFAULT_RUNTIME_DIR
    cfg.write_text(": not yaml [")
    assert runtime_dir_from(cfg) == DEFAULT_RUNTIME_DIR
    cfg.write_text("host: node1\n")
    assert runtime_dir_from(cfg) == DEFAULT_RUNTIME_DIR


def test_usage_error_is_2() -> None:
    assert subprocess.run([sys.executable, "-m", "mirrorkit.agent.entry", "probe", "primary"],
                          capture_output=True, timeout=60, check=False).returncode == 2


def test_an_unexpected_failure_does_not_end_the_publisher(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Review: only OSError was handled; anything else ended the task silently
    # and the files went stale for good on a healthy primary.
    rounds = {"n": 0}

    def directory() -> Path:
        rounds["n"] += 1
        if rounds["n"] <= 3:
            raise TypeError("not a path")
        return tmp_path

    async def main() -> None:
        publisher = PrimaryPublisher(directory, status)
        task = asyncio.create_task(publisher.run())
        while not file_for(tmp_path, "records").exists():
            await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(asyncio.wait_for(main(), 30))
    assert rounds["n"] >= 4
    assert len([r for r in caplog.records if "a round failed" in r.getMessage()]) == 1


def test_the_publisher_writes_the_primary_file_first_on_a_promotion(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    real_write = primary_file.write
    role = {"r": "backup"}

    def spy(directory: Path, name: str, primary: bool, *args: Any) -> None:
        order.append(f"primary-file {int(primary)}")
        real_write(directory, name, primary, *args)

    def status_now() -> dict[str, Any]:
        return {"host": "node1", "mirrors": {"records": {
            "role": role["r"], "term": 4, "fenced": False, "alive": True, "connected": True,
            "primary": "node1", "lag_seconds": 0.0}}}

    publisher = PrimaryPublisher(lambda: tmp_path, status_now)
    real_track = publisher._track

    def track(directory: Path, mirror: str, primary: bool) -> None:
        order.append(f"track {int(not primary)}")
        real_track(directory, mirror, primary)

    monkeypatch.setattr(primary_file, "write", spy)
    monkeypatch.setattr(publisher, "_track", track)
    publisher.publish()
    role["r"] = "primary"
    order.clear()
    publisher.publish()
    assert order == ["primary-file 1", "track 0"]
    role["r"] = "backup"
    order.clear()
    publisher.publish()
    assert order == ["track 1", "primary-file 0"]


# --- the check's wait for a promotion (roles/mirrorkit_vip, "VIP timing") ---------
#
# keepalived runs the check once a second and keeps a backup in FAULT until a run
# passes, so the check waits (bounded) inside a run for the primary file to say
# "primary". The trie argument is a FIFO here: the check opens it only once it
# has read a fresh "not primary" and asks whether this host holds the VIP, so the
# test knows where the check is without timing it.

TRIE_WITHOUT_VIP = """Main:
  +-- 198.18.7.0/24 2 0 2
     |-- 198.18.7.11
        /32 host LOCAL
     |-- 198.18.7.255
        /32 link BROADCAST
"""
TRIE_WITH_VIP = TRIE_WITHOUT_VIP.replace(
    "     |-- 198.18.7.255", f"     |-- {VIP}\n        /32 host LOCAL\n     |-- 198.18.7.255")


def start_check(bash: Path, run: Path, trie: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(bash), "records", str(run), VIP, str(trie)])


def feed_trie(fifo: Path, proc: subprocess.Popen[bytes], text: str) -> bool:
    """Write TEXT into the FIFO once the check opens it; False if it ended
    without opening it (it did not get as far as the VIP question)."""
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            if proc.poll() is not None:
                return False
            time.sleep(0.005)
            continue
        try:
            os.set_blocking(fd, True)
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        return True


def write_verdict(run: Path, ok: bool, at: float | None = None) -> None:
    (run / "records.primary").write_bytes(render(ok, 4, "test", boottime() if at is None
                                                  else at))
    (run / "records.primary").chmod(0o600)


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fib_trie"
    os.mkfifo(path)
    return path


def test_a_backup_passes_as_soon_as_it_is_promoted_within_the_run(
        tmp_path: Path, bash_check: Path, fifo: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_verdict(run, False)  # a live backup
    proc = start_check(bash_check, run, fifo)
    assert feed_trie(fifo, proc, TRIE_WITHOUT_VIP)  # it read "not primary", is waiting
    write_verdict(run, True)  # the agent promoted during the run
    assert proc.wait(timeout=60) == 0


def test_a_backup_still_not_promoted_fails_when_the_wait_ends(
        tmp_path: Path, bash_check: Path, fifo: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_verdict(run, False)
    proc = start_check(bash_check, run, fifo)
    assert feed_trie(fifo, proc, TRIE_WITHOUT_VIP)
    while proc.poll() is None:  # the agent stays alive and says "not primary"
        write_verdict(run, False)
        time.sleep(0.05)
    assert proc.returncode == 1


def test_a_host_holding_the_vip_never_waits(tmp_path: Path, bash_check: Path,
                                            fifo: Path) -> None:
    # A demoted host whose keepalived missed the track file: only the script
    # releases its VIP, at interval * fall, never a wait later.
    run = tmp_path / "run"
    run.mkdir()
    write_verdict(run, False)
    proc = start_check(bash_check, run, fifo)
    assert feed_trie(fifo, proc, TRIE_WITH_VIP)
    write_verdict(run, True)  # too late: it has decided
    assert proc.wait(timeout=60) == 1


def promote_after_first_read(run: Path, proc: subprocess.Popen[bytes]) -> None:
    """Say "primary" once the check has read the file once (inotify: closed
    after reading), while it runs: a check that waits would then pass."""
    with Inotify() as ino:
        ino.add_watch(run / "records.primary", IN_CLOSE_NOWRITE)
        while proc.poll() is None and not ino.read_now():
            time.sleep(0.002)
    write_verdict(run, True)


@pytest.mark.parametrize("trie", ["missing", "no-vip-argument"])
def test_without_knowing_whether_it_holds_the_vip_it_does_not_wait(
        tmp_path: Path, bash_check: Path, trie: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_verdict(run, False)
    args = [str(bash_check), "records", str(run)]
    args += [VIP, str(tmp_path / "nosuch")] if trie == "missing" else []
    with (tmp_path / "stderr").open("wb") as err:
        proc = subprocess.Popen(args, stderr=err)
        promote_after_first_read(run, proc)
        assert proc.wait(timeout=60) == 1
    assert (tmp_path / "stderr").read_bytes() == b""


@pytest.mark.parametrize("state", ["stale", "missing", "foreign"])
def test_a_dead_agent_fails_at_once_without_waiting(tmp_path: Path, bash_check: Path,
                                                    fifo: Path, state: str) -> None:
    # The dead-agent detection (interval * fall) is not made slower by the wait.
    run = tmp_path / "run"
    run.mkdir()
    if state == "stale":
        write_verdict(run, False, at=boottime() - STALE_SECONDS - 1)
    elif state == "foreign":
        (run / "records.primary").write_text("something else 0 4 1.00\n")
    proc = start_check(bash_check, run, fifo)
    assert proc.wait(timeout=60) == 1
    assert not feed_trie(fifo, proc, TRIE_WITHOUT_VIP)  # it never got to waiting


def test_a_file_that_goes_bad_during_the_wait_fails(tmp_path: Path, bash_check: Path,
                                                    fifo: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_verdict(run, False)
    proc = start_check(bash_check, run, fifo)
    assert feed_trie(fifo, proc, TRIE_WITHOUT_VIP)
    (run / "records.primary").unlink()  # the agent stopped
    assert proc.wait(timeout=60) == 1


def test_the_publisher_keeps_the_vip_while_a_switchovers_on_demote_runs(
        tmp_path: Path) -> None:
    entry: dict[str, Any] = {"role": "primary", "term": 4, "fenced": False, "alive": True}

    def status_now() -> dict[str, Any]:
        return {"host": "node1", "mirrors": {"records": dict(entry)}}

    publisher = PrimaryPublisher(lambda: tmp_path, status_now)
    publisher.publish()
    assert vrrp_file.read_value(tmp_path, "records") == "0"
    entry.update(fenced=True, keeps_vip=True)  # draining, on_demote running
    publisher.publish()
    assert read_verdict(tmp_path, "records")[0] is False  # not writable: the file says so
    assert vrrp_file.read_value(tmp_path, "records") == "0"  # the VIP stays meanwhile
    del entry["keeps_vip"]  # on_demote ended
    publisher.publish()
    assert vrrp_file.read_value(tmp_path, "records") == "1"

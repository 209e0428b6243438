"""molecule/default verify, after the failover behaviours (file order): the
scenario's second mirror, `ledger` (mode: sync, capture: mount, issue 9),
on the same converged lab.

Everything is checked from an ordinary SSH shell of each member, outside
every mirrorkit unit:

- every data member serves /srv/ledger as a FUSE mount in the host's
  namespace (mirrorkit-mountd@ledger), the agent kept its sandbox and
  reaches mountd's socket; the arbiter has no mount;
- what the primary's applications write reaches the backup's and the DR
  copy's backing directories and reads back through their read-only
  mounts; a write on a replica's mount fails with EROFS;
- a mountd killed with SIGKILL is brought back by systemd, nothing lost;
- the failover in sync mode, as clients see it: records-app on the
  ledger's VIP (port 8081) and a SQLite writer (WAL, synchronous=FULL) on
  the primary's mount, mol-node1 killed mid-load: mol-node2 is promoted,
  its SQLite database passes `PRAGMA integrity_check`, and not one record
  or row acknowledged before the kill is missing (asserted: sync mode);
- mol-node1, started again, rejoins as the ledger's backup.

The failover behaviours before this module fail the ledger over too (the
same hosts die); the module's fixture first makes mol-node1 its primary
again. Every wait polls with a generous deadline; figures are printed, no
speed is asserted.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import test_z_failover as failover
from test_z_failover import (
    _INV,
    ADDRESS,
    ARB,
    DR,
    INVENTORY,
    MUX,
    NODE1,
    NODE2,
    eventually,
    lab,
    mirrorkit,
    record,
    restore_lab,
    ssh,
)

from mirrorkit.lab.sshkey import ssh_command

MIRROR = "ledger"
_SPEC = _INV["vars"]["mirrorkit_mirrors"][MIRROR]
MNT = _SPEC["paths"][0]
BACKING = f"/srv/.{MNT.rsplit('/', 1)[1]}.mirrorkit"  # the default: a hidden sibling
UNIT = f"mirrorkit-mountd@{MIRROR}.service"
VIP = _SPEC["vip"]["address"].split("/")[0]
APP = f"http://{VIP}:8081"
APP_DIR = f"{MNT}/app"
DB = f"{MNT}/ledger.sqlite"
REPLICAS = (NODE2, DR)
DEADLINE = 120.0
# What a plain shell sees of a write attempt: the errno's name, or "ok".
TRY_WRITE = ("python3 -c \"import errno, sys\n"
             "try:\n"
             "    open(sys.argv[1], 'w').write('x')\n"
             "    print('ok')\n"
             "except OSError as e:\n"
             "    print(errno.errorcode[e.errno])\" ")
# Runs on the primary: inserts into a SQLite database on the mount (WAL,
# synchronous=FULL), printing each row's id once its commit returned (so
# once the backup has it, in sync mode). Ends by itself after LIMIT s.
SQLITE_WRITER = r"""
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, tag TEXT, body BLOB)")
tag, end = sys.argv[2], time.monotonic() + float(sys.argv[3])
n = 0
while time.monotonic() < end:
    n += 1
    db.execute("BEGIN")
    db.execute("INSERT INTO t (tag, body) VALUES (?, ?)", (f"{tag} {n}", b"x" * 2000))
    db.execute("COMMIT")
    print(n, flush=True)
    time.sleep(0.02)
"""
# Runs on the new primary: integrity_check and the committed numbers of TAG.
SQLITE_CHECK = r"""
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30)
check = db.execute("PRAGMA integrity_check").fetchall()
rows = [r[0] for r in db.execute("SELECT tag FROM t WHERE tag LIKE ?", (sys.argv[2] + " %",))]
print(json.dumps({"integrity": [c[0] for c in check],
                  "numbers": [int(r.split()[1]) for r in rows]}))
"""


# -- plumbing ---------------------------------------------------------------------------


def sh(host: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`command` in a plain shell of HOST over SSH (no mirrorkit unit, no sandbox)."""
    try:
        return ssh(host, command, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess([], 124, "", "timed out")


def ledger_status(host: str) -> dict[str, Any] | None:
    return failover.agent_status(host, MIRROR)


def writable_primary(host: str) -> bool:
    return failover.is_writable_primary(host, MIRROR)


def active_backup(host: str) -> bool:
    s = ledger_status(host)
    return bool(s and s.get("role") == "backup" and (s.get("ha") or {}).get("active"))


def holds_vip(host: str) -> bool:
    return failover.holds_vip(host, VIP)


def mounted(host: str) -> str:
    return sh(host, f"findmnt --noheadings --output FSTYPE,SOURCE --mountpoint {MNT}"
              ).stdout.split("\n")[0].strip()


def try_write(host: str, path: str) -> str:
    return sh(host, TRY_WRITE + path).stdout.strip()


def write_files(host: str, prefix: str, count: int) -> dict[str, str]:
    """`count` files written (and synced) on HOST's mount from its shell -> their sha256."""
    import hashlib

    names = {f"{prefix}{i}": hashlib.sha256(f"{prefix} {i}\n".encode() * (i + 1)).hexdigest()
             for i in range(count)}
    script = "; ".join(f"yes '{prefix} {i}' | head -n {i + 1} > {MNT}/{prefix}{i}"
                       for i in range(count))
    proc = sh(host, f"set -e; {script}; sync")
    assert proc.returncode == 0, proc.stderr
    return names


def digests(host: str, names: list[str]) -> dict[str, str]:
    """sha256 of each name in HOST's backing directory and through its mount."""
    paths = " ".join(f"{d}/{n}" for n in names for d in (BACKING, MNT))
    out = sh(host, f"sha256sum {paths} 2>/dev/null").stdout
    return {line.split()[1]: line.split()[0] for line in out.splitlines()
            if len(line.split()) == 2}


def on_replicas(files: dict[str, str]) -> bool:
    for host in REPLICAS:
        got = digests(host, list(files))
        for name, want in files.items():
            if got.get(f"{BACKING}/{name}") != want or got.get(f"{MNT}/{name}") != want:
                return False
    return True


def main_pid(host: str) -> str:
    return sh(host, f"systemctl show -p MainPID --value {UNIT}").stdout.strip()


def post(body: bytes, timeout: float = 1.0) -> dict[str, Any] | None:
    return failover.post(body, timeout, app=APP)


def records_on(host: str) -> set[str]:
    return failover.records_on(host, APP_DIR)


@dataclass
class AppWriter:
    """Writes to the ledger's records-app through its VIP every 50 ms until
    stopped (each request bounded by 1 s); the ids acknowledged, by host."""

    acked: list[tuple[float, str, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def __enter__(self) -> AppWriter:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        eventually(lambda: bool(self.acked), "records-app on the ledger acknowledges", 30)
        return self

    def _run(self) -> None:
        tag, n, end = uuid.uuid4().hex[:8], 0, time.time() + 600
        while not self.stop.is_set() and time.time() < end:
            n += 1
            sent = time.time()
            answer = post(f"{tag} {n}\n".encode())
            if answer and answer.get("id"):
                self.acked.append((time.time(), answer["id"], answer.get("host", "")))
            time.sleep(max(0.0, 0.05 - (time.time() - sent)))

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=10)


@dataclass
class SqliteWriter:
    """SQLITE_WRITER on HOST over SSH; the numbers it reported committed."""

    host: str
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    committed: list[int] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    thread: threading.Thread | None = None

    def __enter__(self) -> SqliteWriter:
        argv = ssh_command(ADDRESS[self.host], [
            f"python3 -c {shlex.quote(SQLITE_WRITER)} {DB} {self.tag} 300"],
            batch=True, connect_timeout=5)
        self.proc = subprocess.Popen([argv[0], *MUX, *argv[1:]], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        eventually(lambda: len(self.committed) >= 5, "the SQLite writer commits", 60)
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip().isdigit():
                self.committed.append(int(line))

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.thread is not None:
            self.thread.join(timeout=10)


# -- the ledger back on mol-node1 -------------------------------------------------------


@pytest.fixture(scope="module")
def ledger() -> Iterator[None]:
    """Every host up, no fault (the failover behaviours' reset), then the
    ledger's primary mol-node1 with its VIP and records-app, mol-node2 its
    active backup, mol-dr1 connected."""
    restore_lab()
    eventually(lambda: any(writable_primary(h) for h in (NODE1, NODE2, DR)),
               "some member is the ledger's writable primary", DEADLINE)
    if not writable_primary(NODE1):
        eventually(lambda: (ledger_status(NODE1) or {}).get("role") in ("backup", "async")
                   and bool((ledger_status(NODE1) or {}).get("connected", True)),
                   f"{NODE1} follows the ledger's primary", DEADLINE)
        if (ledger_status(NODE1) or {}).get("role") == "backup":
            eventually(lambda: active_backup(NODE1), f"{NODE1} an active backup", DEADLINE)
        proc = mirrorkit("switchover", str(INVENTORY), "--mirror", MIRROR, "--to", NODE1)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    eventually(lambda: writable_primary(NODE1) and active_backup(NODE2),
               f"{NODE1} the ledger's primary, {NODE2} its active backup", DEADLINE)
    eventually(lambda: bool((s := ledger_status(DR)) and s.get("role") == "async"
                            and s.get("connected")), f"{DR} follows {NODE1}", DEADLINE)
    eventually(lambda: holds_vip(NODE1) and not holds_vip(NODE2),
               f"the ledger's VIP is on {NODE1}")
    eventually(lambda: post(b"reset\n", timeout=2) is not None,
               "records-app answers on the ledger's VIP")
    yield


# -- the behaviours ---------------------------------------------------------------------


def test_every_data_member_serves_the_mount_in_the_hosts_namespace(ledger: None) -> None:
    for host in (NODE1, *REPLICAS):
        assert sh(host, f"systemctl is-active {UNIT}").stdout.strip() == "active", host
        assert mounted(host) == f"fuse.mirrorkit mirrorkit-{MIRROR}", host
        # the agent kept its sandbox and reaches mountd's socket through it
        unit = sh(host, "systemctl show -p ProtectSystem -p PrivateTmp mirrorkit-agent").stdout
        assert "ProtectSystem=strict" in unit and "PrivateTmp=yes" in unit, unit
        assert sh(host, f"stat -c '%a %F' /run/mirrorkit/mount-{MIRROR}.sock"
                  ).stdout.strip() == "600 socket", host
    assert sh(ARB, f"systemctl cat {UNIT}").returncode != 0  # no data, no mount
    assert mounted(ARB) == ""
    # the watch mirror on the same members is a plain directory
    assert sh(NODE1, "findmnt --noheadings --mountpoint /srv/records").stdout.strip() == ""


def test_the_primarys_writes_reach_the_replicas_backing_and_read_only_mounts(
        ledger: None) -> None:
    files = write_files(NODE1, "first-", 20)
    eventually(lambda: on_replicas(files), f"{NODE2} and {DR} hold {NODE1}'s files", DEADLINE)
    got = digests(NODE1, ["first-7"])
    assert got.get(f"{BACKING}/first-7") == files["first-7"]


def test_a_write_on_a_replicas_mount_fails_with_erofs(ledger: None) -> None:
    for host in REPLICAS:
        assert try_write(host, f"{MNT}/refused") == "EROFS", host
        assert try_write(host, f"{MNT}/first-3") == "EROFS", host
        assert sh(host, f"test -e {BACKING}/refused").returncode != 0, host


def test_a_killed_mountd_is_brought_back_and_nothing_is_lost(ledger: None) -> None:
    before = write_files(NODE1, "before-", 20)
    eventually(lambda: on_replicas(before), "the files before the kill on the replicas",
               DEADLINE)
    pid = main_pid(NODE1)
    proc = sh(NODE1, f"systemctl kill -s KILL {UNIT}")
    assert proc.returncode == 0, proc.stderr
    eventually(lambda: main_pid(NODE1) not in ("0", "", pid)
               and mounted(NODE1) == f"fuse.mirrorkit mirrorkit-{MIRROR}",
               f"systemd to bring {UNIT} back on {NODE1}", DEADLINE)
    eventually(lambda: try_write(NODE1, f"{MNT}/.probe") == "ok",
               f"{NODE1}'s new mount to become writable", 300)
    sh(NODE1, f"rm -f {MNT}/.probe")
    after = write_files(NODE1, "after-", 5)
    everything = {**before, **after}
    eventually(lambda: on_replicas(everything), "every file on the replicas after the restart",
               DEADLINE)
    on_primary = digests(NODE1, list(everything))
    for name, want in everything.items():
        assert on_primary.get(f"{MNT}/{name}") == want, name
    # records-app kept answering or came back (its files were reopened per request)
    eventually(lambda: post(b"after the mountd restart\n", timeout=2) is not None,
               "records-app answers on the ledger's VIP")


def test_failover_in_sync_mode_loses_no_acknowledged_write(ledger: None) -> None:
    eventually(lambda: writable_primary(NODE1) and active_backup(NODE2),
               f"{NODE1} primary, {NODE2} active backup of the ledger", DEADLINE)
    with AppWriter() as app, SqliteWriter(NODE1) as db:
        time.sleep(3)
        kill = time.time()
        lab("stop", NODE1)
        # what the clients were told before the kill: everything they hold now
        # (the writer on NODE1 died with it; records-app's later answers come
        # from NODE2)
        acked_rows = set(db.committed)
        acked_app = {i for t, i, h in app.acked if h == NODE1}
        eventually(lambda: writable_primary(NODE2), f"{NODE2} is the ledger's primary",
                   DEADLINE)
        eventually(lambda: holds_vip(NODE2), f"the ledger's VIP moves to {NODE2}")
        eventually(lambda: any(h == NODE2 for _, _, h in app.acked),
                   f"records-app on {NODE2} acknowledges through the VIP")
    first_new = min(t for t, _, h in app.acked if h == NODE2)
    on_new = records_on(NODE2)
    check = sh(NODE2, f"python3 -c {shlex.quote(SQLITE_CHECK)} {DB} {db.tag}", timeout=120)
    assert check.returncode == 0, check.stderr
    found = json.loads(check.stdout)
    record("sync_failover", {
        "mirror": MIRROR,
        "kill_to_first_write_via_vip_s": round(first_new - kill, 3),
        "records_acked_by_old_primary": len(acked_app),
        "records_missing_on_new_primary": len(acked_app - on_new),
        "sqlite_rows_committed_before_kill": len(acked_rows),
        "sqlite_rows_missing_on_new_primary": len(acked_rows - set(found["numbers"])),
        "sqlite_integrity": found["integrity"],
    })
    assert found["integrity"] == ["ok"], found["integrity"]
    assert acked_app and acked_rows
    assert not acked_app - on_new, f"acknowledged, missing: {sorted(acked_app - on_new)[:5]}"
    assert not acked_rows - set(found["numbers"]), sorted(acked_rows - set(found["numbers"]))[:5]
    ev = failover.events(NODE2, MIRROR)
    assert any(e.get("kind") == "decision" and e.get("situation") == "promote" for e in ev), ev


def test_the_old_primary_rejoins_the_ledger_as_backup(ledger: None) -> None:
    if writable_primary(NODE1):
        pytest.skip("runs after the failover above")
    lab("start", NODE1)
    eventually(lambda: (ledger_status(NODE1) or {}).get("role") == "backup",
               f"{NODE1} rejoins the ledger as backup", DEADLINE)
    eventually(lambda: active_backup(NODE1), f"{NODE1} an active backup", DEADLINE)
    assert try_write(NODE1, f"{MNT}/refused") == "EROFS"
    files = write_files(NODE2, "rejoined-", 5)
    eventually(lambda: digests(NODE1, list(files)).get(f"{MNT}/rejoined-4")
               == files["rejoined-4"], f"{NODE2}'s writes reach {NODE1}", DEADLINE)

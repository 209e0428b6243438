"""`capture: mount` deployed by `mirrorkit apply` on real lab containers
(issue 9): the lab inventory (inventories/lab.yml) moved to 198.18.13.0/24
with its records mirror on `capture: mount` (async), applied with the real
CLI. Everything is checked from an ordinary shell of each container
(`podman exec`), outside every mirrorkit unit: the mount is in the host's
namespace, what the primary's applications write reaches the backup's and
DR's backing directories and reads back through their read-only mounts, a
write on a replica's mount fails with EROFS, and a mountd killed with
SIGKILL is brought back by systemd with nothing lost.

The tests run in file order on one lab. Every wait is a poll with a generous
deadline; nothing asserts speed.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from mirrorkit.lab.podman import podman_env

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed"),
]

ROOT = Path(__file__).parents[2]
PREFIX = "mk-mount-"
MNT = "/srv/records"
BACKING = "/srv/.records.mirrorkit"  # the default: a hidden sibling of the path
UNIT = "mirrorkit-mountd@records.service"
REPLICAS = ("node2", "dr1")
# What a plain shell sees of a write attempt: the errno's name, or "ok".
TRY_WRITE = ("python3 -c \"import errno, sys\n"
             "try:\n"
             "    open(sys.argv[1], 'w').write('x')\n"
             "    print('ok')\n"
             "except OSError as e:\n"
             "    print(errno.errorcode[e.errno])\" ")


def inventory_text() -> str:
    """inventories/lab.yml on this test's own network, PKI store and names."""
    text = (ROOT / "inventories" / "lab.yml").read_text().replace("198.18.7.", "198.18.13.")
    data = yaml.safe_load(text)
    top = data["all"]["vars"]
    top["mirrorkit_lab"] = {"network": "mk-mount", "subnet": "198.18.13.0/24",
                            "prefix": PREFIX}
    top["mirrorkit_pki_dir"] = "~/.mirrorkit/mounttest/pki"
    records = top["mirrorkit_mirrors"]["records"]
    assert records["mode"] == "async"
    records["capture"] = "mount"
    return yaml.safe_dump(data, sort_keys=False)


def mirrorkit(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mirrorkit", *argv], capture_output=True,
                          text=True, timeout=timeout, check=False)


def sh(host: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`command` in a plain shell of the container: no mirrorkit unit, no sandbox."""
    return subprocess.run(["podman", "exec", PREFIX + host, "sh", "-c", command],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env=podman_env())


def eventually(check: Callable[[], bool], what: str, deadline: float = 120) -> None:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > deadline:
            pytest.fail(f"{what}: not true within {deadline:.0f} s")
        time.sleep(1)


def mounted(host: str) -> str:
    return sh(host, f"findmnt --noheadings --output FSTYPE,SOURCE --mountpoint {MNT}"
              ).stdout.split("\n")[0].strip()


def try_write(host: str, path: str) -> str:
    return sh(host, TRY_WRITE + path).stdout.strip()


def digest(host: str, path: str) -> str | None:
    proc = sh(host, f"sha256sum {path}")
    return proc.stdout.split()[0] if proc.returncode == 0 else None


def write_files(prefix: str, count: int) -> dict[str, str]:
    """`count` files written on node1's mount from its plain shell -> their sha256."""
    names = {f"{prefix}{i}": hashlib.sha256(f"{prefix} {i}\n".encode() * (i + 1)).hexdigest()
             for i in range(count)}
    script = "; ".join(f"yes '{prefix} {i}' | head -n {i + 1} > {MNT}/{prefix}{i}"
                       for i in range(count))
    proc = sh("node1", f"set -e; {script}; sync")
    assert proc.returncode == 0, proc.stderr
    return names


def digests(host: str, names: list[str]) -> dict[str, str]:
    """sha256 of each name in `host`'s backing directory and through its
    mount, keyed by path (one shell per host: a poll stays cheap)."""
    paths = " ".join(f"{d}/{n}" for n in names for d in (BACKING, MNT))
    out = sh(host, f"sha256sum {paths} 2>/dev/null").stdout
    return {line.split()[1]: line.split()[0] for line in out.splitlines() if len(line.split()) == 2}


def everywhere(files: dict[str, str]) -> bool:
    """Every file, byte for byte, in each replica's backing directory and
    through its read-only mount."""
    for host in REPLICAS:
        got = digests(host, list(files))
        for name, want in files.items():
            if got.get(f"{BACKING}/{name}") != want or got.get(f"{MNT}/{name}") != want:
                return False
    return True


def main_pid(host: str) -> str:
    return sh(host, f"systemctl show -p MainPID --value {UNIT}").stdout.strip()


@pytest.fixture(scope="module")
def inv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("mount") / "mount-lab.yml"
    path.write_text(inventory_text())
    mirrorkit("lab", "down", str(path))  # leftovers of an earlier run
    start = time.monotonic()
    proc = mirrorkit("lab", "up", str(path))
    assert proc.returncode == 0, proc.stderr
    proc = mirrorkit("apply", str(path), timeout=1800)
    print(f"lab up + apply: {time.monotonic() - start:.0f} s")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    try:
        yield path
    finally:
        mirrorkit("lab", "down", str(path))


def test_every_data_member_serves_the_mount_in_the_hosts_namespace(inv: Path) -> None:
    for host in ("node1", *REPLICAS):
        assert sh(host, f"systemctl is-active {UNIT}").stdout.strip() == "active", host
        assert mounted(host) == "fuse.mirrorkit mirrorkit-records", host
        # the agent kept its sandbox and reaches mountd's socket through it
        unit = sh(host, "systemctl show -p ProtectSystem -p PrivateTmp mirrorkit-agent").stdout
        assert "ProtectSystem=strict" in unit and "PrivateTmp=yes" in unit, unit
        assert sh(host, "stat -c '%a %F' /run/mirrorkit/mount-records.sock").stdout.strip() \
            == "600 socket"
    assert sh("arb1", f"systemctl cat {UNIT}").returncode != 0  # no data, no mount
    assert mounted("arb1") == ""


def test_the_primarys_writes_reach_the_replicas_backing_and_read_only_mounts(
        inv: Path) -> None:
    eventually(lambda: try_write("node1", f"{MNT}/.probe") == "ok",
               "node1's mount to become writable")
    sh("node1", f"rm -f {MNT}/.probe")
    files = write_files("first-", 20)
    eventually(lambda: everywhere(files), "node2 and dr1 to hold node1's files")
    # node1's own backing store holds what its applications wrote
    assert digest("node1", f"{BACKING}/first-7") == files["first-7"]


def test_a_write_on_a_replicas_mount_fails_with_erofs(inv: Path) -> None:
    for host in REPLICAS:
        assert try_write(host, f"{MNT}/refused") == "EROFS", host
        assert try_write(host, f"{MNT}/first-3") == "EROFS", host
        assert sh(host, f"test -e {BACKING}/refused").returncode != 0, host


def test_a_killed_mountd_is_brought_back_and_nothing_is_lost(inv: Path) -> None:
    before = write_files("before-", 20)
    eventually(lambda: everywhere(before), "the files before the kill on node2 and dr1")
    pid = main_pid("node1")
    proc = sh("node1", f"systemctl kill -s KILL {UNIT}")
    assert proc.returncode == 0, proc.stderr
    eventually(lambda: main_pid("node1") not in ("0", "", pid)
               and mounted("node1") == "fuse.mirrorkit mirrorkit-records",
               "systemd to bring mirrorkit-mountd@records back on node1")
    eventually(lambda: try_write("node1", f"{MNT}/.probe") == "ok",
               "node1's new mount to become writable", deadline=300)
    sh("node1", f"rm -f {MNT}/.probe")
    after = write_files("after-", 5)
    everything = {**before, **after}
    eventually(lambda: everywhere(everything), "every file on node2 and dr1 after the restart")
    on_primary = digests("node1", list(everything))  # and on the primary, through its mount
    for name, want in everything.items():
        assert on_primary.get(f"{MNT}/{name}") == want, name

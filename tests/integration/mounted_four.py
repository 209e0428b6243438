"""The four-member loopback cluster of four_cluster.py with the ``mount``
capture on both failover members: node1 and node2 each run a real
mirrorkit-mountd whose backing store is the member's data directory, and
applications write on ``mountds[name].mnt``. Used by
test_mount_failover.py and test_mount_apps.py (a helper module, not
conftest.py, like four_cluster.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from four_cluster import print_logs, start_four, stop_four  # type: ignore[import-not-found]
from mountd_proc import Mountd  # type: ignore[import-not-found]
from test_loopback import MIRROR, Cluster  # type: ignore[import-not-found]

__all__ = ["FAILOVER_MEMBERS", "mounted_four"]

FAILOVER_MEMBERS = ("node1", "node2")


@contextmanager
def mounted_four(base: Path, *, mode: str = "async",
                 show_logs: Callable[[], bool] | None = None
                 ) -> Iterator[tuple[Cluster, dict[str, Mountd]]]:
    """The cluster under ``base`` (node1 the writable primary) and the
    mountds of node1 and node2, all stopped and unmounted on exit.
    ``mode`` is the mirror's mode (``sync`` also starts mountd with
    ``--sync``); ``show_logs()`` says at exit whether to print the logs."""
    mountds: dict[str, Mountd] = {}

    def on_mounts(c: Cluster) -> None:
        for member in c.nodes.values():
            cfg = yaml.safe_load(member.config.read_text())
            mirror = cfg["mirrors"][MIRROR]
            if mode != "async":  # the mirror's mode, in every member's config
                mirror["mode"] = mode
            if member.name in FAILOVER_MEMBERS:
                mountd = Mountd(base / f"mountd-{member.name}", backing=member.root,
                                sync=mode == "sync")
                mirror["capture"] = "mount"
                mirror["mount_socket"] = str(mountd.socket)
                mountds[member.name] = mountd
            member.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        for mountd in mountds.values():
            mountd.start()

    try:
        c = start_four(base / "cluster", before_start=on_mounts)
    except BaseException:
        for m in mountds.values():
            m.stop()
        raise
    failed = True
    try:
        yield c, mountds
        failed = False
    finally:
        if show_logs() if show_logs is not None else failed:
            print_logs(c)
            for name, m in mountds.items():
                print(f"===== mountd {name}\n{m.logfile.read_text()[-3000:]}")
        stop_four(c)
        for m in mountds.values():
            m.stop()

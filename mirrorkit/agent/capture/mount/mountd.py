"""``mirrorkit-mountd``: the FUSE process of one mirror's ``mount`` capture.

    mirrorkit-mountd --mirror M --backing DIR --mountpoint DIR --socket PATH [--sync]

Serves ``--mountpoint`` over ``--backing`` (:mod:`.passthrough`), journals
every change (:mod:`.journal`) and hands the journal to the agent on the Unix
socket (:mod:`.wire`): one agent connection at a time, a new one replacing
the old (an agent that restarted finds its dead predecessor's connection
still open). Peer credentials must be uid 0.

The mount starts **read-only**: only the agent of the mirror's primary makes
it writable, with a lease it renews (``MODE``); if the lease runs out (the
agent is gone or stalled for longer than the primary's own lease) writes
fail with EROFS, and on ``MODE ro`` at once. Reads never need the agent.

Runs in the host's mount namespace (its unit has no sandbox options that
would give it its own), so the mount is what every process on the host
sees. SIGTERM unmounts (libfuse's handler); a mount left by a killed mountd
(ENOTCONN) is cleared at start with ``fusermount3 -u -z``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import socket
import struct
import subprocess
import sys
import threading

from mirrorkit.agent.capture.mount import wire
from mirrorkit.agent.capture.mount.journal import Journal

__all__ = ["AgentLink", "main"]

log = logging.getLogger("mirrorkit.mountd")

_OPS_FRAME_BYTES = 4 * 1024 * 1024
_RESUME_TIMEOUT = 5.0


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionResetError("agent closed the connection")
        buf += chunk
    return bytes(buf)


def _read_frame(sock: socket.socket) -> tuple[wire.Kind, bytes]:
    kind, length = wire.decode_header(_recv_exact(sock, wire.HEADER.size))
    return kind, _recv_exact(sock, length)


class _Session:
    """One agent connection: a sender (journal → agent) and a reader."""

    def __init__(self, journal: Journal, sock: socket.socket) -> None:
        self.journal = journal
        self.sock = sock
        self.send_lock = threading.Lock()
        self.closed = threading.Event()

    def send(self, frame: bytes) -> None:
        with self.send_lock:
            self.sock.sendall(frame)

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        try:
            self._run()
        except (OSError, wire.WireError) as exc:
            if not self.closed.is_set():
                log.warning("agent connection ended: %s", exc)
        finally:
            self.closed.set()
            with contextlib.suppress(OSError):
                self.sock.close()

    def _run(self) -> None:
        j = self.journal
        self.send(wire.hello(j.session, j.first_held(), j.last_seq() + 1))
        self.sock.settimeout(_RESUME_TIMEOUT)
        kind, payload = _read_frame(self.sock)
        if kind is not wire.Kind.RESUME:
            raise wire.WireError(f"expected RESUME, got {kind.name}")
        session, durable = wire.parse_resume(payload)
        self.sock.settimeout(None)
        if session == j.session:
            j.set_durable(durable)
            sent = max(durable, j.first_held() - 1)
        else:
            sent = j.first_held() - 1
        log.info("agent connected (session %s, resuming after %d)", j.session,
                 sent)
        reader = threading.Thread(target=self._read, name="mountd-agent-reader", daemon=True)
        reader.start()
        while not self.closed.is_set():
            if not j.wait_new(sent, 0.2):
                continue
            batch = j.held_after(sent, _OPS_FRAME_BYTES)
            if not batch:
                continue
            self.send(wire.encode(wire.Kind.OPS, b"".join(data for _, data in batch)))
            sent = batch[-1][0]

    def _read(self) -> None:
        j = self.journal
        try:
            while not self.closed.is_set():
                kind, payload = _read_frame(self.sock)
                if kind is wire.Kind.DURABLE:
                    j.set_durable(wire.parse_seq(payload))
                elif kind is wire.Kind.ACKED:
                    j.set_acked(wire.parse_seq(payload))
                elif kind is wire.Kind.MODE:
                    writable, deadline = wire.parse_mode(payload)
                    if self.closed.is_set():
                        break  # replaced by a newer agent connection: not ours to grant
                    if writable:
                        j.set_writable(deadline)
                    else:
                        self.send(wire.seq_frame(wire.Kind.FENCED, j.fence()))
                        log.info("fenced by the agent: read-only after change %d",
                                 j.last_seq())
                else:
                    raise wire.WireError(f"unexpected {kind.name} from the agent")
        except (OSError, wire.WireError) as exc:
            if not self.closed.is_set():
                log.warning("agent connection ended: %s", exc)
        finally:
            self.close()


class AgentLink:
    """The Unix socket the agent connects to."""

    def __init__(self, journal: Journal, path: str) -> None:
        self.journal = journal
        self.path = path
        self._sock: socket.socket | None = None
        self._session: _Session | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(4)
        self._sock = sock
        threading.Thread(target=self._accept, name="mountd-accept", daemon=True).start()

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
            pid, uid, _gid = struct.unpack("3i", creds)
            if uid != 0:
                log.warning("refused a connection from uid %d (pid %d): only root's agent "
                            "may drive the mount", uid, pid)
                conn.close()
                continue
            session = _Session(self.journal, conn)
            with self._lock:
                old, self._session = self._session, session
            if old is not None:
                log.info("a new agent connection replaces the previous one")
                old.close()
            threading.Thread(target=session.run, name="mountd-agent", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        with self._lock:
            if self._session is not None:
                self._session.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def clear_stale_mount(mountpoint: str) -> None:
    """A mount whose FUSE process died answers ENOTCONN: unmount it lazily."""
    try:
        os.stat(mountpoint)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise
        log.warning("%s is a mount left by a dead mountd: unmounting it", mountpoint)
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], check=True, timeout=30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mirrorkit-mountd", description=__doc__.split("\n")[0])
    ap.add_argument("--mirror", required=True)
    ap.add_argument("--backing", required=True, help="the directory the mount serves")
    ap.add_argument("--mountpoint", required=True, help="where applications see it")
    ap.add_argument("--socket", required=True, help="the agent's Unix socket")
    ap.add_argument("--sync", action="store_true",
                    help="fsync waits until the active backup has the change durably (mode: sync)")
    ap.add_argument("--queue-mib", type=int, default=64,
                    help="changes held until the agent has them (back-pressure beyond)")
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format=f"mirrorkit-mountd[{args.mirror}] %(levelname)s %(message)s")
    for what, path in (("--backing", args.backing), ("--mountpoint", args.mountpoint)):
        if not os.path.isabs(path):
            ap.error(f"{what} must be an absolute path, not {path!r}")
    if not 1 <= args.queue_mib <= 4096:
        ap.error("--queue-mib must be between 1 and 4096")
    if not os.path.isdir(args.backing):
        ap.error(f"--backing {args.backing} is not a directory")
    from mirrorkit.agent.capture.mount.passthrough import MirrorFS, MirrorFUSE

    clear_stale_mount(args.mountpoint)
    os.makedirs(args.mountpoint, exist_ok=True)
    journal = Journal(args.queue_mib * 1024 * 1024)
    link = AgentLink(journal, args.socket)
    link.start()
    log.info("serving %s over %s (%s, read-only until the agent says otherwise)",
             args.mountpoint, args.backing, "sync" if args.sync else "async")
    try:
        MirrorFUSE(MirrorFS(args.backing, journal, sync=args.sync), args.mountpoint,
                   foreground=True, nothreads=False, fsname=f"mirrorkit-{args.mirror}",
                   subtype="mirrorkit", default_permissions=True, allow_other=True,
                   hard_remove=True, use_ino=True)
    finally:
        journal.close()
        link.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A TCP forwarder that a test can cut and heal: a network partition
between two agents on loopback (one direction of dialling: whoever dials
through it). Cut, it forwards nothing and holds what is open (a silent
network, not a refused connection); healed, it forwards again and new
connections get through."""

from __future__ import annotations

import selectors
import socket
import threading
import time

__all__ = ["Proxy"]


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.cut = threading.Event()
        self._stop = threading.Event()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def partition(self) -> None:
        self.cut.set()

    def heal(self) -> None:
        """Forward again; connections held during the cut are dropped (as a
        real network's would have timed out), new ones get through."""
        self.cut.clear()
        self._drop = True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()

    _drop = False

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        held: list[socket.socket] = []  # accepted during a cut: never forwarded
        while not self._stop.is_set():
            if self._drop:
                self._drop = False
                for s in list(self._pairs):
                    sel.unregister(s)
                    s.close()
                self._pairs.clear()
                for s in held:
                    s.close()
                held.clear()
            if self.cut.is_set():
                # Nothing is read or forwarded (select would only spin on the
                # waiting data); new connections are held, unanswered.
                time.sleep(0.05)
                try:
                    client, _addr = self.listener.accept()
                    held.append(client)
                except BlockingIOError:
                    pass
                continue
            for key, _ in sel.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.listener:
                    self._accept(sel)
                    continue
                self._forward(sel, sock)
        for s in [*self._pairs, *held]:
            s.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        try:
            client, _addr = self.listener.accept()
        except BlockingIOError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            client.close()
            return
        for a, b in ((client, upstream), (upstream, client)):
            a.setblocking(False)
            self._pairs[a] = b
            sel.register(a, selectors.EVENT_READ)

    def _forward(self, sel: selectors.BaseSelector, sock: socket.socket) -> None:
        other = self._pairs.get(sock)
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data or other is None:
            for s in (sock, other):
                if s is not None and s in self._pairs:
                    sel.unregister(s)
                    del self._pairs[s]
                    s.close()
            return
        try:
            other.setblocking(True)
            other.sendall(data)
            other.setblocking(False)
        except OSError:
            pass

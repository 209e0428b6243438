"""Just enough of PostgreSQL's frontend/backend protocol (version 3, simple
query, trust authentication over a Unix socket) for the application tests:
no PostgreSQL driver is a dependency of the project, and psql's output
buffering would blur when a COMMIT returned."""

from __future__ import annotations

import contextlib
import socket
import struct
from pathlib import Path

__all__ = ["PgConn", "PgError"]

_PROTOCOL_3 = 196608


class PgError(Exception):
    """An ErrorResponse from the server, or a connection it closed."""


class PgConn:
    """One connection; :meth:`query` runs one statement (autocommit: its
    CommandComplete and ReadyForQuery mean the transaction committed)."""

    def __init__(self, socket_dir: Path, port: int = 5432, user: str = "postgres",
                 database: str = "postgres", timeout: float = 60.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(socket_dir / f".s.PGSQL.{port}"))
            params = b"".join(k.encode() + b"\0" + v.encode() + b"\0"
                              for k, v in (("user", user), ("database", database)))
            body = struct.pack("!I", _PROTOCOL_3) + params + b"\0"
            self.sock.sendall(struct.pack("!I", len(body) + 4) + body)
            self._until_ready()
        except BaseException:
            self.sock.close()
            raise

    def _exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise PgError("the server closed the connection")
            out += chunk
        return bytes(out)

    def _message(self) -> tuple[bytes, bytes]:
        kind = self._exact(1)
        (length,) = struct.unpack("!I", self._exact(4))
        return kind, self._exact(length - 4)

    def _until_ready(self) -> list[tuple[str | None, ...]]:
        rows: list[tuple[str | None, ...]] = []
        error: str | None = None
        while True:
            kind, body = self._message()
            if kind == b"R":
                (code,) = struct.unpack("!I", body[:4])
                if code != 0:
                    raise PgError(f"the server asks for authentication method {code}; "
                                  "only trust is supported here")
            elif kind == b"E":
                fields = dict((f[:1], f[1:].decode(errors="replace"))
                              for f in body.split(b"\0") if f)
                error = f"{fields.get(b'S', 'ERROR')}: {fields.get(b'M', '?')}"
            elif kind == b"D":
                (count,) = struct.unpack("!H", body[:2])
                pos, row = 2, []
                for _ in range(count):
                    (size,) = struct.unpack("!i", body[pos:pos + 4])
                    pos += 4
                    if size < 0:
                        row.append(None)
                    else:
                        row.append(body[pos:pos + size].decode())
                        pos += size
                rows.append(tuple(row))
            elif kind == b"Z":
                if error is not None:
                    raise PgError(error)
                return rows

    def query(self, sql: str) -> list[tuple[str | None, ...]]:
        """The rows of ``sql`` (text), once the server is ready again."""
        payload = sql.encode() + b"\0"
        self.sock.sendall(b"Q" + struct.pack("!I", len(payload) + 4) + payload)
        return self._until_ready()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"X" + struct.pack("!I", 4))
        self.sock.close()

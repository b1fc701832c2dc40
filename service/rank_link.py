"""How a job's ranks talk to its worker: a Unix stream socket in a private directory, JSON lines.

torchrun's elastic agent starts each rank with ``close_fds``, so a rank cannot inherit
the worker's pipe to the daemon. The worker listens on a socket instead, in a fresh
directory of mode 0700 (only this user can reach it), and each rank connects and sends
one JSON object per line, as the worker sends them to the daemon: JSON text only,
never pickle. A rank's first message carries a random token the worker chose, so a
stale rank of another job cannot speak for this one. A rank's connection closes when
its process ends, however it ends: that is how the worker sees a rank die.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

MAX_MESSAGE_BYTES = 64 * 1024**2  # a prune report is a few hundred KiB; this is a runaway rank
READ_BYTES = 256 * 1024


class RankLink:
    """A rank's end: ``send_bytes`` takes one JSON document (what service.job_context.JobContext sends)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def connect(cls, address: str) -> RankLink:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address)
        return cls(sock)

    def send_bytes(self, data: bytes) -> None:
        if b"\n" in data:
            raise ValueError("a rank message is one line of JSON")
        self.sock.sendall(data + b"\n")

    def send(self, message: dict[str, Any]) -> None:
        self.send_bytes(json.dumps(message).encode())

    def close(self) -> None:
        self.sock.close()


class RankListener:
    """The worker's end: a listening socket in a new private directory, removed on ``close``.

    The directory comes from :func:`tempfile.mkdtemp` (``$TMPDIR``, else /tmp): a Unix
    socket's path must fit in 108 bytes, which a state dir deep in a file system may not.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=dir_prefix(os.getpid())))  # mode 0700
        self.address = str(self.dir / "link")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(self.address)
            self.sock.listen(128)
            self.sock.setblocking(False)
        except OSError:
            self.close()
            raise

    def accept(self) -> socket.socket | None:
        """A rank that connected, as a non-blocking socket; None when none is waiting."""
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        conn.setblocking(False)
        return conn

    def private_file(self, name: str, text: str) -> Path:
        """Write ``text`` to a file of mode 0600 in the private directory; its path."""
        path = self.dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RankListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dir_prefix(worker_pid: int) -> str:
    """The name a worker's private directory starts with, in the temporary directory."""
    return f"prunerd-ranks-{int(worker_pid)}-"


def remove_left_behind(worker_pid: int) -> None:
    """Remove the private directories a worker killed before it could clean up left behind.

    The daemon calls it when it reaps a worker; only directories of this user are touched.
    """
    for path in Path(tempfile.gettempdir()).glob(dir_prefix(worker_pid) + "*"):
        try:
            owned = path.lstat().st_uid == os.geteuid() and path.is_dir() and not path.is_symlink()
        except OSError:
            continue
        if owned:
            shutil.rmtree(path, ignore_errors=True)


class LineBuffer:
    """Bytes read from one connection, cut into JSON documents at newlines."""

    def __init__(self, limit: int = MAX_MESSAGE_BYTES) -> None:
        self.limit = limit
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        """The documents ``data`` completes; ValueError on a line that is not JSON or too long."""
        self._pending += data
        *lines, rest = self._pending.split(b"\n")
        if len(rest) > self.limit:
            raise ValueError(f"a rank sent a message over {self.limit} bytes")
        self._pending = bytearray(rest)
        return [json.loads(line) for line in lines if line]

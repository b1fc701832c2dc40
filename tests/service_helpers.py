"""Shared helpers for the daemon tests: run `prunerd serve` on free loopback ports in a temp state dir.

Every socket binds 127.0.0.1 with port 0 ("any free port"); the daemon writes the ports it
got to ``<state_dir>/daemon.json``, which is how the tests find it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.client import Client

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 60.0  # the daemon imports torch; a loaded 2-core machine takes a while


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (for servers that cannot bind port 0 and report it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class DaemonProcess:
    """A `prunerd serve` subprocess. ``start()`` waits until it serves; ``stop()`` sends SIGTERM."""

    def __init__(
        self,
        state_dir: Path,
        *extra_args: str,
        preexec_fn: Any = None,
        command: tuple[str, ...] = (sys.executable, "-m", "service.commands.serve"),
    ) -> None:
        """``preexec_fn`` runs in the child before it execs (e.g. to lower a resource limit);
        ``command`` starts the daemon (``(PRUNERD, "serve")``: the installed console script)."""
        self.state_dir = Path(state_dir)
        self.extra_args = extra_args
        self.preexec_fn = preexec_fn
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self.log_path = self.state_dir.parent / f"{self.state_dir.name}-daemon.log"

    def start(self) -> DaemonProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            *self.command,
            "--host",
            LOOPBACK,
            "--rpc-port",
            "0",
            "--events-port",
            "0",
            "--ingest-port",
            "0",
            "--metrics-port",
            "0",
            "--state-dir",
            str(self.state_dir),
            *self.extra_args,
        ]
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=self.preexec_fn
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        info_file = self.state_dir / "daemon.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            try:
                info = json.loads(info_file.read_text())
                if info.get("pid") == self.proc.pid:  # not a stale file of a killed predecessor
                    self.info = info
                    return self
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"daemon did not start within {START_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self, timeout_s: float = 10.0) -> Client:
        return Client(self.info["rpc"], self.info["events"], timeout_s=timeout_s)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        """Signal the daemon and wait for it; returns its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Any]:
    """``daemon_factory(state_dir=None, *args)`` starts daemons; all are stopped at teardown."""
    started: list[DaemonProcess] = []

    def make(state_dir: Path | None = None, *args: str) -> DaemonProcess:
        d = DaemonProcess(state_dir or tmp_path / "state", *args).start()
        started.append(d)
        return d

    yield make
    for d in started:
        d.kill()


def wait_for(predicate: Any, timeout_s: float = 30.0, interval_s: float = 0.1) -> Any:
    """Poll ``predicate()`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"condition not met within {timeout_s} s")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still "exists"; it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _parents() -> dict[int, int]:
    """Each process's parent pid, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def parent_of(pid: int) -> int:
    """The parent pid of ``pid``, from /proc."""
    return _parents()[pid]


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``, from /proc."""
    return [p for p, parent in _parents().items() if parent == pid]


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, their children, ...), from /proc."""
    parents = _parents()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return {p for p in found if pid_alive(p)}


PROFILE_PARAMS = {"model": "resnet20", "in_channels": 1, "input_size": [8, 8], "batch_size": 1}

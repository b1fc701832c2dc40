"""Connection headroom: clients may never take the file descriptors a job needs.

Three measures, together:

- at start the soft ``RLIMIT_NOFILE`` is raised to the hard limit, and the daemon refuses to
  start when the connection caps plus ``fd_reserve`` do not fit under it;
- each bound socket's connections are counted from its ZeroMQ monitor, in a thread of its
  own (the request loop polls only what it serves); a connection past the socket's cap is
  shut down as soon as it is seen (libzmq then closes it), so idle connections cannot pile up;
- a job whose worker cannot start for want of descriptors stays queued and is retried
  (service.daemon), instead of failing.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import threading
from dataclasses import dataclass, field

import zmq
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger("prunerd")

_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED


def raise_fd_limit(needed: int) -> int:
    """Raise the soft descriptor limit to the hard one; error if ``needed`` still does not fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and needed > soft:
        raise RuntimeError(
            f"the connection caps and fd_reserve need {needed} file descriptors but this process "
            f"may open {soft} (RLIMIT_NOFILE hard limit); raise it (ulimit -Hn, LimitNOFILE=) "
            "or lower max_connections / max_ingest_connections / fd_reserve"
        )
    return soft


def _local_port(fd: int) -> int | None:
    """The local TCP port of descriptor ``fd``, or None when it is no TCP socket (any more)."""
    try:
        dup = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        return dup.getsockname()[1] if dup.family in (socket.AF_INET, socket.AF_INET6) else None
    except OSError:
        return None
    finally:
        dup.close()  # closes our duplicate only; libzmq's descriptor stays open


def _shut_down(fd: int) -> None:
    try:
        dup = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        dup.shutdown(socket.SHUT_RDWR)  # affects the connection itself, not just the duplicate
    except OSError:
        pass
    finally:
        dup.close()


@dataclass
class ConnectionCap:
    """Counts one bound socket's TCP connections and shuts down those past ``cap``."""

    name: str
    sock: zmq.Socket
    cap: int
    port: int
    open_fds: set[int] = field(default_factory=set)
    refused: int = 0

    def __post_init__(self) -> None:
        self.monitor = self.sock.get_monitor_socket(_EVENTS)

    def drain(self) -> None:
        """Read the monitor's events (called when it polls readable)."""
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            fd = event["value"]
            if event["event"] == zmq.EVENT_ACCEPTED:
                self._accepted(fd)
            else:
                self.open_fds.discard(fd)

    def _accepted(self, fd: int) -> None:
        self.open_fds.add(fd)
        if len(self.open_fds) <= self.cap:
            return
        # Before refusing, forget descriptors that closed without an event reaching us.
        self.open_fds = {f for f in self.open_fds if _local_port(f) == self.port}
        if len(self.open_fds) <= self.cap or fd not in self.open_fds:
            return
        self.open_fds.discard(fd)
        _shut_down(fd)
        self.refused += 1
        if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
            log.warning(
                "%s socket: %d connections, its cap; refused %d so far",
                self.name,
                self.cap,
                self.refused,
            )

    def close(self) -> None:
        self.monitor.close()


class ConnectionGuard(threading.Thread):
    """Reads the monitors of ``caps`` until ``stop()``; owns their monitor sockets."""

    def __init__(self, caps: list[ConnectionCap], poll_ms: int = 200) -> None:
        super().__init__(name="prunerd-connections", daemon=True)
        self.caps = caps
        self.poll_ms = poll_ms
        self._stop_flag = threading.Event()

    def run(self) -> None:
        poller = zmq.Poller()
        for cap in self.caps:
            poller.register(cap.monitor, zmq.POLLIN)
        try:
            while not self._stop_flag.is_set():
                ready = dict(poller.poll(self.poll_ms))
                for cap in self.caps:
                    if cap.monitor in ready:
                        try:
                            cap.drain()
                        except Exception:  # noqa: BLE001 - counting must not stop for one event
                            log.exception("%s connection count failed", cap.name)
        finally:
            for cap in self.caps:
                cap.close()

    def stop(self) -> None:
        """Stop reading and close the monitor sockets (before their sockets are closed)."""
        for cap in self.caps:
            cap.sock.disable_monitor()
        self._stop_flag.set()
        self.join(timeout=5)

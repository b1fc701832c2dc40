"""Python client of the daemon: requests over DEALER, job events over SUB.

::

    from service.client import Client

    with Client("tcp://127.0.0.1:5750") as c:
        job = c.submit("profile", model="resnet20", input_size=[8, 8])
        for event in c.watch(job["id"]):
            print(event.event, event.data)
        profile = c.result(job["id"])["result"]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq

from . import protocol as p
from .commands.argtypes import positive_float
from .config import DEFAULT_EVENTS_PORT, DEFAULT_HOST, DEFAULT_RPC_PORT


class DaemonUnavailable(RuntimeError):
    """No reply within the timeout: the daemon is not running or not reachable."""


class RequestError(RuntimeError):
    """The daemon answered with an error (``code``, ``field`` as in service.protocol)."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (field {field})" if field else ""))
        self.code = code
        self.message = message
        self.field = field


def events_endpoint_for(rpc_endpoint: str) -> str:
    """The daemon's default layout: events on the port after the request port."""
    head, _, port = rpc_endpoint.rpartition(":")
    return (
        f"{head}:{int(port) + 1}"
        if port.isdigit()
        else f"tcp://{DEFAULT_HOST}:{DEFAULT_EVENTS_PORT}"
    )


class Client:
    """One connection to a daemon. Not thread-safe (ZeroMQ sockets belong to one thread)."""

    def __init__(
        self,
        connect: str = f"tcp://{DEFAULT_HOST}:{DEFAULT_RPC_PORT}",
        events: str | None = None,
        timeout_s: float = 10.0,
        server_key: str | Path | None = None,
        client_key: str | Path | None = None,
    ) -> None:
        """``server_key``: the daemon's public certificate file; ``client_key``: our secret one (CurveZMQ)."""
        self.endpoint = connect
        self._events = events  # None: asked of the daemon when first needed
        self.timeout_s = timeout_s
        self._curve: tuple[bytes, bytes, bytes] | None = None
        if server_key is not None:
            from zmq.auth import load_certificate

            server_public, _ = load_certificate(server_key)
            if client_key is None:
                raise ValueError("CurveZMQ needs the client's own key pair too (client_key)")
            public, secret = load_certificate(client_key)
            if secret is None:
                raise ValueError(f"{client_key} holds no secret key; pass the .key_secret file")
            self._curve = (server_public, public, secret)
        self.ctx = zmq.Context.instance()
        self._ids = itertools.count(1)
        self._sock = self._connect(zmq.DEALER, self.endpoint)

    @property
    def events_endpoint(self) -> str:
        """Where the daemon publishes job events: as given, else the port its ping names, at the
        host this client reaches it by (a daemon on port 0 picks its ports; request port + 1
        would subscribe to nothing, and a watch would see only its final status)."""
        if self._events is None:
            named = self.ping().get("endpoints")
            said = named.get("events") if isinstance(named, dict) else None
            port = str(said).rpartition(":")[2]
            head = self.endpoint.rpartition(":")[0]
            self._events = (
                f"{head}:{port}"
                if port.isdigit() and 0 < int(port) < 65536 and head
                else events_endpoint_for(self.endpoint)
            )
        return self._events

    def _socket(self, kind: int) -> zmq.Socket:
        s = self.ctx.socket(kind)
        s.linger = 0
        if self._curve is not None:
            s.curve_serverkey, s.curve_publickey, s.curve_secretkey = self._curve
        return s

    def _connect(self, kind: int, endpoint: str) -> zmq.Socket:
        s = self._socket(kind)
        s.connect(endpoint)
        return s

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ requests

    def request_raw(self, payload: bytes, req_id: str | None = None) -> dict[str, Any]:
        """Send one frame, return the decoded reply (whatever its ``ok``).

        Replies to earlier requests that timed out are skipped by their ``req_id``.
        """
        deadline = time.monotonic() + self.timeout_s
        # A connection the daemon refused (its CurveZMQ handshake failed: a key not on its
        # list) leaves no peer to queue for, and a plain send would wait for one forever.
        if self._sock.poll(int(self.timeout_s * 1000) + 1, zmq.POLLOUT) and self._sent(payload):
            while (left := deadline - time.monotonic()) > 0:
                if not self._sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                    break
                reply = json.loads(self._sock.recv())
                if req_id is None or reply.get("req_id") in (req_id, None):
                    return reply
        # The socket may now hold a late reply; a fresh socket keeps request and reply in step.
        self._sock.close()
        self._sock = self._connect(zmq.DEALER, self.endpoint)
        raise DaemonUnavailable(
            f"no reply from {self.endpoint} within {self.timeout_s:g} s; is `prunerd serve` "
            "running, and does it accept this client's key?"
        )

    def _sent(self, payload: bytes) -> bool:
        try:
            self._sock.send(payload, zmq.NOBLOCK)
        except zmq.Again:  # the peer went between the poll and the send
            return False
        return True

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send a request; return its ``data`` or raise RequestError."""
        req_id = str(next(self._ids))
        reply = self.request_raw(p.encode_request(op, req_id, **fields), req_id)
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise RequestError(err.get("code", "unknown"), err.get("message", ""), err.get("field"))
        return reply["data"]

    def ping(self) -> dict[str, Any]:
        return self.request("ping")

    def submit(self, kind: str, **params: Any) -> dict[str, Any]:
        """Queue a job; returns the job record (``id``, ``status``...)."""
        return self.request("submit", kind=kind, params=params)["job"]

    def status(self, job_id: str) -> dict[str, Any]:
        return self.request("status", job_id=job_id)

    def jobs(
        self, limit: int = 50, status: str | None = None, before: str | None = None
    ) -> list[dict[str, Any]]:
        """Newest first, one page (the daemon caps its size); ``before``: a job id to page from."""
        fields: dict[str, Any] = {"limit": limit}
        if status:
            fields["status"] = status
        if before:
            fields["before"] = before
        return self.request("list", **fields)["jobs"]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.request("cancel", job_id=job_id)

    def result(self, job_id: str) -> dict[str, Any]:
        return self.request("result", job_id=job_id)

    # ------------------------------------------------------------------ events

    def subscribe(self, job_id: str | None = None) -> zmq.Socket:
        """A SUB socket on one job's events (or every job's, with None), returned once connected.

        A PUB socket drops what it publishes before our subscription reaches it (ZeroMQ's
        slow joiner): a job submitted right after a plain connect lost its ``queued`` and
        ``started`` events. The subscription goes out as soon as the handshake is done, so
        this waits for that (at most 3 s; an unreachable endpoint leaves the watch to the
        status it polls).
        """
        sub = self._socket(zmq.SUB)
        sub.subscribe(p.event_topic(job_id) if job_id else b"job.")
        monitor = sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        try:
            sub.connect(self.events_endpoint)
            if monitor.poll(int(1000 * min(self.timeout_s, 3.0))):
                monitor.recv_multipart()
        finally:
            sub.disable_monitor()
            monitor.close()
        return sub

    def watch(
        self, job_id: str, timeout_s: float | None = None, sub: zmq.Socket | None = None
    ) -> Iterator[p.Event]:
        """Yield the job's events until it finishes.

        The PUB stream is lossy by design (a late subscriber misses what came before), so the
        job's status is also asked for every second: a job that finished unseen still ends the
        watch, with a synthetic final event carrying the stored status.
        """
        own = sub is None
        sub = sub or self.subscribe(job_id)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        next_check = 0.0
        try:
            while deadline is None or time.monotonic() < deadline:
                if sub.poll(200, zmq.POLLIN):
                    event = p.decode_event(sub.recv_multipart())
                    if event.job_id != job_id:
                        continue
                    yield event
                    if event.finished:
                        return
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + 1.0
                    job = self.status(job_id)["job"]
                    if job["status"] in p.FINISHED_STATUSES:
                        # Give events already in flight a moment, then end with the stored truth.
                        while sub.poll(300, zmq.POLLIN):
                            event = p.decode_event(sub.recv_multipart())
                            if event.job_id == job_id:
                                yield event
                                if event.finished:
                                    return
                        yield p.Event(
                            job_id,
                            job["status"],
                            job["finished_at"] or time.time(),
                            {"error": job["error"]},
                        )
                        return
            raise TimeoutError(f"job {job_id} did not finish within {timeout_s} s")
        finally:
            if own:
                sub.close()

    def wait(self, job_id: str, timeout_s: float | None = None) -> dict[str, Any]:
        """Block until the job finishes; return its stored record."""
        for _ in self.watch(job_id, timeout_s):
            pass
        return self.status(job_id)["job"]


# ---------------------------------------------------------------------- command-line helpers


def endpoint(text: str) -> str:
    """``tcp://HOST:PORT`` with a port in 1..65535: what the daemon binds (its endpoints are
    written to STATE_DIR/daemon.json); anything else is refused before a socket is made."""
    m = re.fullmatch(r"tcp://(\[[0-9A-Fa-f:.]+\]|[^\s/:\[\]]+):(\d{1,5})", text)
    if m is None or not 1 <= int(m.group(2)) <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected tcp://HOST:PORT with a port in 1..65535 (the daemon writes its "
            f"endpoints to STATE_DIR/daemon.json), got {text!r}"
        )
    return text


def add_client_args(parser: Any) -> None:
    """The options every client command shares."""
    default = os.environ.get("PRUNERD_CONNECT", f"tcp://{DEFAULT_HOST}:{DEFAULT_RPC_PORT}")
    parser.add_argument(
        "--connect",
        type=endpoint,
        default=default,
        metavar="tcp://HOST:PORT",
        help=f"the daemon's request endpoint (default {default}; env PRUNERD_CONNECT)",
    )
    parser.add_argument(
        "--events",
        type=endpoint,
        default=None,
        metavar="tcp://HOST:PORT",
        help="the daemon's event endpoint (default: the one the daemon names, at --connect's host)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="seconds to wait for a reply (default 10)",
    )
    parser.add_argument(
        "--server-key",
        default=None,
        metavar="FILE",
        help="CurveZMQ: the daemon's public certificate (server.key)",
    )
    parser.add_argument(
        "--client-key",
        default=None,
        metavar="FILE",
        help="CurveZMQ: this client's secret certificate (client.key_secret)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output (JSON)")


def client_from_args(args: Any) -> Client:
    return Client(args.connect, args.events, args.timeout, args.server_key, args.client_key)


def run_command(args: Any, fn: Any) -> int:
    """Run ``fn(client) -> (exit status, data, text)`` and print ``data`` (--json) or ``text``.

    Daemon errors print as ``{"ok": false, "error": {...}}`` with --json, else as a message;
    either way the exit status is 1 (2 when the daemon cannot be reached).
    """
    import sys

    try:
        with client_from_args(args) as c:
            status, data, text = fn(c)
    except RequestError as e:
        err = {"code": e.code, "message": e.message, "field": e.field}
        print(
            json.dumps({"ok": False, "error": err})
            if args.json
            else f"prunerd: {terminal(str(e))}",
            file=sys.stderr,
        )
        return 1
    except DaemonUnavailable as e:
        print(
            json.dumps({"ok": False, "error": {"code": "unavailable", "message": str(e)}})
            if args.json
            else f"prunerd: {e}",
            file=sys.stderr,
        )
        return 2
    if args.json:
        print(json.dumps(data, indent=2))
    elif text:
        print(terminal(text))
    return status


def terminal(text: str) -> str:
    """``text`` with every control character but newline and tab written as an escape:
    what the daemon returns (a job's paths, an error) may come from any client, and raw
    escape sequences would drive the reader's terminal."""
    return "".join(
        c if c.isprintable() or c in "\n\t" else c.encode("unicode_escape").decode() for c in text
    )


class ProgressFilter:
    """Which events a person is shown: all but most ``progress`` ones, of which a profile
    sends one per timed piece (400 lines for resnet20). Kept: the first and the last of
    each phase (held back until the next event shows it was the last) and at most one per
    ``interval_s`` between."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._phase: object = None
        self._next = 0.0
        self._held: p.Event | None = None

    def feed(self, event: p.Event) -> list[p.Event]:
        """The events to show now, in order: none, ``event``, or the held one and it."""
        d = event.data
        same_phase = event.event == "progress" and d.get("what") == self._phase
        if same_phase and d.get("done") != d.get("total") and time.monotonic() < self._next:
            self._held = event
            return []
        # The held line is news only when this event ends its phase; else this one is newer.
        shown = [] if self._held is None or same_phase else [self._held]
        self._held = None
        self._phase = d.get("what") if event.event == "progress" else None
        self._next = time.monotonic() + self.interval_s
        return [*shown, event]


def _ms(seconds: Any) -> str:
    return f"{1e3 * float(seconds):.3f} ms"


_MILESTONES = {
    "profiled": lambda d: (
        f"end to end {_ms(d['end_to_end_s'])}, budget {_ms(d['budget_s'])}, "
        f"additivity {float(d['additivity_error']):+.1%}"
    ),
    "scored": lambda d: (
        f"round {d['round']}: {len(d.get('scores') or d.get('removals') or [])} blocks scored"
    ),
    "selected": lambda d: (
        f"round {d['round']}: remove {', '.join(map(str, d['removed']))} "
        f"(predicted {_ms(d['predicted_latency_s'])})"
    ),
    "finetuned": lambda d: (
        f"accuracy {float(d['accuracy_before']):.4f} -> {float(d['accuracy_after']):.4f}"
    ),
    "measured": lambda d: f"{_ms(d['latency_s'])} against the baseline's {_ms(d['baseline_s'])}",
    "fit": lambda d: f"width fit {d['fit']}: {_ms(d['latency_s'])} for {_ms(d['budget_s'])}",
    "done": lambda d: (
        f"speed-up {float(d['speedup']):.2f}x, budget {'met' if d['budget_met'] else 'missed'}"
    ),
}


def milestone_text(d: dict[str, Any]) -> str:
    """A prune milestone (see ``pruner.prune``'s ``on_event``) as a few words; the name alone
    where its figures are missing or not what this client knows."""
    name = str(d.get("event", ""))
    try:
        return f"{name}: {_MILESTONES[name](d)}"
    except (KeyError, TypeError, ValueError):
        return name


def format_event(event: p.Event) -> str:
    """One human-readable line per job event."""
    d = event.data
    stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
    if event.event == "progress":
        what = f"{d.get('what', '')} {d.get('done', '?')}/{d.get('total', '?')}"
    elif event.event == "block":
        what = f"{d.get('name', '?'):<32} {1e3 * float(d.get('latency_s', 0.0)):9.4f} ms"
    elif event.event == "started":
        what = f"{d.get('kind', '')} in pid {d.get('pid')}"
    elif event.event == "queued":
        what = f"{d.get('kind', '')} {(d.get('params') or {}).get('model', '')}"
    elif event.event == "milestone":
        what = milestone_text(d)
    elif event.event == "ranks":
        alive, world = len(d.get("alive") or []), d.get("world_size", "?")
        each = ", ".join(
            f"rank {r.get('rank')} pid {r.get('pid')} {r.get('state')}"
            for r in d.get("ranks") or []
        )
        what = f"{alive}/{world} alive on {d.get('device')}: {each}"
    else:
        err = d.get("error") or {}
        what = err.get("message", "") if isinstance(err, dict) else str(err)
    return f"{stamp} {event.job_id} {event.event:<11} {what}".rstrip()

"""A prune job run as several processes (``params.ranks`` > 1), from the job's worker process.

The worker starts the ranks through :func:`pruner.distributed.launch` (torchrun's
elastic agent, in the worker itself): each runs ``python -m service.rank_main JOB``,
joins the process group (gloo on CPU; NCCL on CUDA with GPU ``LOCAL_RANK``) and prunes
as ``prunerd prune --nproc-per-node N`` would. Rank 0 alone measures latency and
writes the files.

Each rank reports to the worker over a :mod:`service.rank_link` socket; the worker's
:class:`Relay` thread passes rank 0's progress and milestones on to the daemon, keeps
rank 0's result and every rank's own error, and sends a ``ranks`` message whenever a
rank reports in or goes away. When a rank dies, the agent stops the others and the
job fails naming the rank and how it died. When the daemon stops the worker (cancel,
shutdown: SIGTERM), the agent stops every rank and the worker dies of that signal,
as a one-process worker would.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from .job_context import JobContext, JobFailed, default_output
from .rank_link import READ_BYTES, LineBuffer, RankListener
from .ranks import RankInfo, RankReport

if TYPE_CHECKING:
    from pruner.distributed import RankFailure

RANK_MODULE = "service.rank_main"  # what each rank runs: `python -m service.rank_main JOB`
FINISH_S = 10.0  # after the agent returns: how long the relay waits for the ranks' last words
TICK_S = 0.1  # the relay's poll interval, seconds
RELAYED = ("progress", "milestone", "block")  # rank 0's reports, passed on as they come


class RankJob(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What every rank of one job reads from its job file (mode 0600, in a 0700 directory)."""

    params: dict[str, Any]
    state_dir: str
    address: str  # the worker's rank_link socket
    token: str  # a rank's hello must carry it
    parent_pid: int  # the worker: a rank exits when it dies


# --------------------------------------------------------------------------- the relay


@dataclass
class _Peer:
    """One rank's connection, before and after it said who it is."""

    sock: socket.socket
    buffer: LineBuffer = field(default_factory=LineBuffer)
    rank: int | None = None
    said_bye: bool = False


class Relay(threading.Thread):
    """Reads every rank's link; passes rank 0's reports on through ``send``.

    ``result`` is rank 0's result; ``errors`` the ranks' own failures in the order they
    arrived, as ``(rank, error)``; ``ranks`` each rank that reported in, by rank;
    ``deaths`` the ranks that went away without a goodbye, in order.
    """

    def __init__(
        self,
        listener: RankListener,
        token: str,
        world_size: int,
        device: str,
        send: Callable[[dict[str, Any]], None],
    ) -> None:
        super().__init__(name="prunerd-rank-relay", daemon=True)
        self.listener, self.token = listener, token
        self.world_size, self.device, self.send = world_size, device, send
        self.ranks: dict[int, RankInfo] = {}
        self.result: dict[str, Any] | None = None
        self.errors: list[tuple[int, dict[str, Any]]] = []
        self.deaths: list[int] = []  # ranks whose link closed without a goodbye, in order
        self._peers: dict[int, _Peer] = {}
        self._finish_by: float | None = None

    def finish(self, timeout_s: float = FINISH_S) -> None:
        """The ranks have ended: read what they left in their sockets, then stop."""
        self._finish_by = time.monotonic() + timeout_s
        self.join(timeout_s + 1.0)

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener.sock, selectors.EVENT_READ, None)
        try:
            while True:
                for key, _ in sel.select(TICK_S):
                    if key.data is None:
                        self._accept(sel)
                    else:
                        self._read(sel, key.data)
                if self._finish_by is not None:
                    self._accept(sel)  # a rank that connected just before it died
                    if not self._peers or time.monotonic() >= self._finish_by:
                        break
        finally:
            for peer in list(self._peers.values()):
                self._close(sel, peer)
            sel.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        while (conn := self.listener.accept()) is not None:
            peer = _Peer(conn)
            self._peers[conn.fileno()] = peer
            sel.register(conn, selectors.EVENT_READ, peer)

    def _read(self, sel: selectors.BaseSelector, peer: _Peer) -> None:
        try:
            data = peer.sock.recv(READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(sel, peer)
            return
        try:
            for message in peer.buffer.feed(data):
                self._on_message(peer, message)
        except (ValueError, KeyError, TypeError, AttributeError):
            # Our own rank processes, but they run model code: a garbled link ends that link.
            self._close(sel, peer)

    def _close(self, sel: selectors.BaseSelector, peer: _Peer) -> None:
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(peer.sock)
        self._peers.pop(peer.sock.fileno(), None)
        peer.sock.close()
        if peer.rank is not None and self.ranks[peer.rank].state == "alive":
            state = "exited" if peer.said_bye else "died"
            if state == "died":
                self.deaths.append(peer.rank)
            self._set(msgspec.structs.replace(self.ranks[peer.rank], state=state))

    def _on_message(self, peer: _Peer, msg: dict[str, Any]) -> None:
        event = msg["event"]
        if peer.rank is None:
            if event != "hello" or not secrets.compare_digest(str(msg["token"]), self.token):
                raise ValueError("a rank's first message must be its hello with the job's token")
            info = msgspec.convert({k: msg[k] for k in _HELLO}, RankInfo)
            if not 0 <= info.rank < self.world_size or info.rank in self.ranks:
                raise ValueError(f"rank {info.rank} does not belong to this job")
            peer.rank = info.rank
            self._set(info)
        elif event in RELAYED:
            if peer.rank == 0:
                self.send(msg)
        elif event == "done":
            if peer.rank == 0:
                self.result = msg["result"]
        elif event == "failed":
            self.errors.append((peer.rank, dict(msg["error"])))
        elif event == "bye":
            peer.said_bye = True

    def _set(self, info: RankInfo) -> None:
        self.ranks[info.rank] = info
        self.send({"event": "ranks", "report": msgspec.to_builtins(self.report())})

    def report(self) -> RankReport:
        ordered = tuple(self.ranks[r] for r in sorted(self.ranks))
        return RankReport(self.world_size, self.device, ordered)


_HELLO = ("rank", "local_rank", "pid", "device")


# --------------------------------------------------------------------------- why it failed


def job_error(
    failures: tuple[RankFailure, ...],
    errors: list[tuple[int, dict[str, Any]]],
    deaths: list[int] | tuple[int, ...] = (),
) -> dict[str, Any]:
    """The job's error from what the agent saw (``failures``, first first) and what the
    ranks reported themselves (``errors``: ``(rank, error)`` in the order they arrived;
    ``deaths``: the ranks whose link closed without a goodbye, in that order).

    A rank killed by a signal is the cause: the others fail because it went away. When
    several were, the agent stopped the rest with SIGTERM after the first died, so the
    cause is the first to die by another signal (the agent's own order breaks ties
    within a second). Else the first error a rank reported, which is rank 0's
    when rank 0 reported the same one (every rank loading the same bad input), with the
    rank named when it is another; else the first exit code the agent saw.
    """
    error = _died(failures, deaths) or _reported(errors) or _exited(failures)
    if error is None:
        return {"type": "RankFailed", "message": "rank 0 ended without reporting a result"}
    listed = [
        {"rank": f.rank, "pid": f.pid, "exitcode": f.exitcode, "signal": f.signal} for f in failures
    ]
    return {**error, "failures": listed}


def _died(failures: tuple[RankFailure, ...], deaths: list[int] | tuple[int, ...]) -> dict | None:
    """The first rank killed by a signal other than the agent's SIGTERM, as the cause."""
    order = {rank: i for i, rank in enumerate(deaths)}
    killed = sorted(
        (f for f in failures if f.signal),
        key=lambda f: (f.signal == "SIGTERM", order.get(f.rank, len(order))),
    )
    if not killed:
        return None
    first = killed[0]
    hint = " (out of memory, or killed)" if first.signal == "SIGKILL" else ""
    after = [f.describe() for f in failures if f is not first]
    message = first.describe() + hint + (f"; after it, {'; '.join(after)}" if after else "")
    return {
        "type": "RankDied",
        "message": message,
        "rank": first.rank,
        "pid": first.pid,
        "signal": first.signal,
    }


def _reported(errors: list[tuple[int, dict[str, Any]]]) -> dict | None:
    """The first error a rank reported; rank 0's when it reported the same one."""
    if not errors:
        return None
    # MainRankError is rank 0's error raised again on another rank: rank 0 reports it too.
    own = [(r, e) for r, e in errors if e.get("type") != "MainRankError"] or errors
    rank, error = own[0]
    same = ("type", "message")
    rank, error = next(
        ((r, e) for r, e in own if r == 0 and all(e.get(k) == error.get(k) for k in same)),
        (rank, error),
    )
    message = str(error.get("message", ""))
    return {**error, "message": message if rank == 0 else f"rank {rank}: {message}", "rank": rank}


def _exited(failures: tuple[RankFailure, ...]) -> dict | None:
    """The first exit the agent saw."""
    if not failures:
        return None
    first = failures[0]
    return {"type": "RankFailed", "message": first.describe(), "rank": first.rank, "pid": first.pid}


# --------------------------------------------------------------------------- the job


def run_ranks(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Run the prune job ``params`` as ``params["ranks"]`` processes; rank 0's result.

    Raises :class:`~service.job_context.JobFailed` with :func:`job_error`'s description when a
    rank fails or dies.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from pruner.distributed import command_of, launch

    # The agent stops the ranks on the signals it handles: SIGTERM is how the daemon stops a
    # worker; SIGINT from a terminal stays ignored, as the daemon decides what stops.
    os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = "SIGTERM"
    n, device = int(params["ranks"]), str(params.get("device") or "cpu")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    # One output directory for every rank (the default one names this process).
    params = {**params, "output": params.get("output") or default_output(ctx)}
    with RankListener() as listener:
        token = secrets.token_hex(16)
        job = RankJob(params, str(ctx.state_dir), listener.address, token, os.getpid())
        job_file = listener.private_file("job.json", json.dumps(msgspec.to_builtins(job)))
        relay = Relay(listener, token, n, kind, ctx.send)
        relay.start()
        try:
            with _signal_handlers_kept():
                command = command_of(RANK_MODULE, [str(job_file)])
                outcome = launch(n, command, log_dir=str(listener.dir / "agent"))
        except SignalException as e:
            # The daemon asked this worker to stop; the agent has stopped every rank.
            relay.finish(1.0)
            listener.close()
            _die_of(e.sigval)
        finally:
            relay.finish()  # also when the agent itself failed (its error is the job's)
    if outcome.exitcode == 0 and relay.result is not None:
        return relay.result
    raise JobFailed(job_error(outcome.failures, relay.errors, relay.deaths))


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """The agent installs a handler for SIGTERM that raises in this thread; put ours back after."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _die_of(sig: int) -> None:
    """End this process by ``sig``, so that its exit status says it was stopped."""
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
    os._exit(128 + int(sig))  # should the signal be blocked

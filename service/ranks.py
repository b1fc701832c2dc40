"""The ranks of a job run as several processes: what the worker reports, what the daemon keeps.

A prune job with ``params.ranks`` N > 1 runs as N processes under torchrun's elastic
agent (service.rank_job). Its worker sends the daemon a ``ranks`` message whenever a
rank's state changes; the daemon publishes it as the job's ``ranks`` event, answers it
in ``status`` and exports it to Prometheus (service.metrics) from a :class:`RankTracker`.

A rank is ``alive`` from the moment it reports in until its connection to the worker
closes; then it ``exited`` if it said goodbye first (it returned, with or without an
error of its own), or ``died`` if it did not (killed by a signal, crashed).
"""

from __future__ import annotations

import threading
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

MAX_RANKS = 64  # processes one job may run as, whatever the daemon's caps say
RANK_STATES = ("alive", "exited", "died")

RankNumber = Annotated[int, Meta(ge=0, lt=MAX_RANKS)]


class RankInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One rank: global and local rank, process id, device (``cpu``, or ``cuda:LOCAL_RANK``)."""

    rank: RankNumber
    local_rank: RankNumber
    pid: Annotated[int, Meta(ge=1, le=2**31)]
    device: Annotated[str, Meta(pattern=r"^(cpu|cuda:[0-9]{1,2})\Z")]
    state: Literal[RANK_STATES] = "alive"  # type: ignore[valid-type]


class RankReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Every rank of a job that has reported in, by rank; the ``ranks`` event's data."""

    world_size: Annotated[int, Meta(ge=2, le=MAX_RANKS)]
    device: Annotated[str, Meta(pattern=r"^(cpu|cuda)\Z")]
    ranks: Annotated[tuple[RankInfo, ...], Meta(max_length=MAX_RANKS)] = ()

    @property
    def alive(self) -> list[int]:
        """The ranks alive now, in order."""
        return [r.rank for r in self.ranks if r.state == "alive"]

    def to_event(self) -> dict[str, Any]:
        """``{"world_size", "device", "alive": [rank, ...], "ranks": [{rank, local_rank, pid,
        device, state}, ...]}``: what the ``ranks`` event and ``status`` carry."""
        return {**msgspec.to_builtins(self), "alive": self.alive}


def parse_report(data: Any) -> RankReport:
    """A worker's ``ranks`` message, validated (ValueError when malformed: it is input too)."""
    return msgspec.convert(data, RankReport)


class RankTracker:
    """The latest :class:`RankReport` of each running multi-rank job.

    The daemon's loop updates it; the /metrics thread reads it at scrape time. A job
    leaves it when its worker is reaped, so it holds at most ``max_workers`` jobs.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, RankReport] = {}

    def update(self, job_id: str, report: RankReport) -> None:
        with self._lock:
            self._jobs[job_id] = report

    def drop(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def get(self, job_id: str) -> RankReport | None:
        with self._lock:
            return self._jobs.get(job_id)

    def snapshot(self) -> dict[str, RankReport]:
        with self._lock:
            return dict(self._jobs)

"""Watch for other processes competing for the CPU while we time.

A timing run with ``threads`` threads on a machine with ``cores`` logical cores
leaves ``cores - threads`` cores to everybody else. When other processes use
more than that, our threads are descheduled mid-sample and every number is
distorted (multi-threaded kernels wait at each barrier for the slowest thread),
so the profiler must notice and say so. Linux only: the counters come from
``/proc/stat`` (all CPUs) and ``os.times()`` (this process, all its threads);
elsewhere the watch reports nothing rather than guess.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from .records import Interference

_STAT = "/proc/stat"
_LOADAVG = "/proc/loadavg"
# The counters tick at 1/CLK_TCK (10 ms at the usual 100 Hz): a shorter window reads as
# nothing or as a whole tick. A watch spans at least this long, waiting out the rest.
MIN_WINDOW_S = 0.1


@dataclass(frozen=True)
class _Snapshot:
    wall_s: float
    busy_s: float  # all CPUs together, seconds of non-idle time since boot
    own_s: float  # this process (every thread), user + system seconds
    load_1m: float


def _busy_seconds() -> float | None:
    """Non-idle CPU seconds over all CPUs since boot, from the first line of /proc/stat."""
    try:
        with open(_STAT) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]
    return busy / os.sysconf("SC_CLK_TCK")


def _load_1m() -> float:
    try:
        with open(_LOADAVG) as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def _snapshot() -> _Snapshot | None:
    busy = _busy_seconds()
    if busy is None:
        return None
    t = os.times()
    return _Snapshot(time.monotonic(), busy, t.user + t.system, _load_1m())


def logical_cores() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class InterferenceWatch:
    """Measures how much CPU other processes used between ``start()`` and ``stop()``.

    Usage::

        watch = InterferenceWatch(threads=2).start()
        ...  # time things
        seen = watch.stop()  # Interference, or None where /proc is not available
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._start: _Snapshot | None = None

    def start(self) -> InterferenceWatch:
        self._start = _snapshot()
        return self

    def stop(self) -> Interference | None:
        if self._start is None:
            return None
        if (rest := MIN_WINDOW_S - (time.monotonic() - self._start.wall_s)) > 0:
            time.sleep(rest)  # others' use still shows; ours is what it was
        end = _snapshot()
        if end is None:
            return None
        a = self._start
        wall = max(end.wall_s - a.wall_s, 1e-9)
        own = max(end.own_s - a.own_s, 0.0)
        # Clock-tick granularity can make busy - own slightly negative on a quiet machine.
        others = max(end.busy_s - a.busy_s - own, 0.0)
        return Interference(
            wall_s=wall,
            cores=logical_cores(),
            threads=self.threads,
            own_cores=own / wall,
            other_cores=others / wall,
            load_1m_start=a.load_1m,
            load_1m_end=end.load_1m,
        )

"""What a job function gets in its process, and how it says it failed.

Shared by the worker (``service.jobs``) and the ranks of a job run as several
processes (``service.rank_job``, ``service.rank_main``), which import nothing
else from each other.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any


class JobContext:
    """What a job function gets in the worker: callbacks that report to the daemon.

    ``conn`` is anything with ``send_bytes`` (the worker's pipe to the daemon, or a
    rank's link to its worker); messages from several threads go out whole, one at a time.
    """

    def __init__(self, conn: Any, state_dir: Path, bounds: dict[str, Any] | None = None) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.state_dir = state_dir
        self.bounds = bounds  # the daemon's RequestBounds as a dict; None: unbounded (tests)

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode()
        with self._lock:
            self._conn.send_bytes(data)

    def progress(self, what: str, done: int, total: int) -> None:
        self.send({"event": "progress", "what": str(what), "done": int(done), "total": int(total)})

    def block(self, timing: Any) -> None:
        self.send({"event": "block", "timing": timing.to_dict()})

    def milestone(self, data: dict[str, Any]) -> None:
        """A step of a long job (e.g. a prune job's profiled, scored, selected, ...)."""
        self.send({"event": "milestone", "data": data})


class JobFailed(Exception):
    """A failure the job has described itself: ``error`` ({"type", "message", ...}) is sent as is.

    A job run as several processes raises it with what its ranks reported (which rank
    died, and how), which no exception type of the worker's own would say.
    """

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["message"])
        self.error = error


def default_output(ctx: JobContext) -> str:
    """Where a prune job that named no ``output`` writes: a new directory in the state dir."""
    return str(ctx.state_dir / "prune" / f"{int(time.time())}-{os.getpid()}")

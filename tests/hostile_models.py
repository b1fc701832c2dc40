"""Model callables that misbehave inside a worker, as code from an allowed module might."""

from __future__ import annotations

import gc
import os
import signal
import time
from multiprocessing.connection import Connection

from torch import nn


def garbage_to_daemon(**_: object) -> nn.Module:
    """Writes to the worker's pipe what the daemon cannot read: a block event without a
    latency, then bytes that are not JSON."""
    for obj in gc.get_objects():
        if isinstance(obj, Connection) and obj.writable and not obj.closed:
            obj.send_bytes(b'{"event": "block", "timing": {"name": "x"}}')
            obj.send_bytes(b"\xff not json")
    time.sleep(30)  # the daemon stops this worker long before
    return nn.Identity()


def kills_its_parent(**_: object) -> nn.Module:
    """Kills the process this worker was started from (the daemon's forkserver), as a
    library that signals more than its own process might."""
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(30)  # the parent-death signal ends this worker first
    return nn.Identity()

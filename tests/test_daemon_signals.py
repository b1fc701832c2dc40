"""Stopping the daemon: SIGTERM during a job stops it cleanly; a killed daemon's jobs are interrupted."""

from __future__ import annotations

import signal
from pathlib import Path

from .service_helpers import PROFILE_PARAMS, DaemonProcess, descendants, pid_alive, wait_for


def test_sigterm_during_a_job(tmp_path: Path) -> None:
    state = tmp_path / "state"
    d = DaemonProcess(state).start()
    try:
        with d.client() as c:
            job = c.submit("profile", **PROFILE_PARAMS, remeasure=True)
            queued = c.submit("selftest", seconds=0.1, steps=1)
            worker = wait_for(lambda: c.status(job["id"])["worker_pid"])
        assert d.stop(signal.SIGTERM, timeout_s=30) == 0
        assert not pid_alive(worker), "the job's worker outlived the daemon"
        assert "stopped" in d.log()
    finally:
        d.kill()
    again = DaemonProcess(state).start()
    try:
        with again.client() as c:
            stopped = c.status(job["id"])["job"]
            assert stopped["status"] == "interrupted"
            assert "stopped" in stopped["error"]["message"]
            # A job that had not started yet is still there, and now runs.
            assert c.wait(queued["id"], 60)["status"] == "done"
    finally:
        assert again.stop() == 0


def test_killed_daemon_marks_running_jobs_interrupted(tmp_path: Path) -> None:
    state = tmp_path / "state"
    d = DaemonProcess(state).start()
    try:
        with d.client() as c:
            job = c.submit("selftest", seconds=60, steps=600)
            worker = wait_for(lambda: c.status(job["id"])["worker_pid"])
        below = descendants(d.pid)  # the worker, the forkserver it was forked from, ...
        assert worker in below
        d.stop(signal.SIGKILL)
        # The forkserver sees the daemon gone and exits; the worker gets SIGKILL as its
        # parent dies (parent-death signal): no orphan keeps running.
        wait_for(lambda: not any(pid_alive(p) for p in below), 10)
    finally:
        d.kill()
    again = DaemonProcess(state).start()
    try:
        with again.client() as c:
            assert c.status(job["id"])["job"]["status"] == "interrupted"
    finally:
        assert again.stop() == 0

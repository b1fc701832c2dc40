"""How job workers start: forked from a forkserver that has imported torch (the default), or
each in a new interpreter (``--worker-start spawn``). Real daemons on loopback."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
import torch

from .cli_helpers import PRUNERD, ok, run
from .service_helpers import PROFILE_PARAMS, DaemonProcess, parent_of, wait_for

SERVE = (PRUNERD, "serve")  # the installed console script


@pytest.mark.parametrize("start", ["forkserver", "spawn"])
def test_a_worker_starts_as_configured(start: str, tmp_path: Path) -> None:
    """forkserver: the worker's parent is the daemon's forkserver, and torch is already
    mapped into a worker whose job (a selftest) never imports it. spawn: the worker is the
    daemon's own child, a new interpreter without torch. Either way jobs run to the end."""
    d = DaemonProcess(tmp_path / "state", "--worker-start", start, command=SERVE).start()
    try:
        with d.client() as c:
            job = c.submit("selftest", seconds=30, steps=300)
            worker = wait_for(lambda: c.status(job["id"])["worker_pid"])
            wait_for(lambda: c.status(job["id"])["progress"])  # the job's own code runs
            parent = parent_of(worker)
            cmdline = Path(f"/proc/{parent}/cmdline").read_bytes()
            maps = Path(f"/proc/{worker}/maps").read_text()
            if start == "forkserver":
                assert parent_of(parent) == d.pid and b"forkserver" in cmdline
                assert "libtorch" in maps
            else:
                assert parent == d.pid
                assert "libtorch" not in maps
            c.cancel(job["id"])
            assert c.wait(job["id"], 60)["status"] == "cancelled"
            quick = c.submit("selftest", seconds=0, steps=1)
            assert c.wait(quick["id"], 60)["status"] == "done"
    finally:
        assert d.stop() == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none present")
def test_a_forked_worker_runs_on_the_gpu(tmp_path: Path) -> None:
    """The forkserver imports torch and prunerd but must not touch CUDA: a CUDA context does
    not survive a fork, and every GPU job forked from it would fail. A profile job on cuda
    runs to the end, timed with CUDA events. The daemon, which never imports torch, counts
    the GPUs a job sees as torch does (asked of torch in a process of its own)."""
    d = DaemonProcess(tmp_path / "state", command=SERVE).start()
    try:
        with d.client() as c:
            assert c.ping()["max_gpus"] == torch.cuda.device_count()
            job = c.submit("profile", **PROFILE_PARAMS, device="cuda")
            final = c.wait(job["id"], 300)
            assert final["status"] == "done", final
            profile = c.result(job["id"])["result"]
            assert profile["device"]["kind"] == "cuda"
    finally:
        assert d.stop() == 0


def test_the_daemon_never_loads_torch(tmp_path: Path) -> None:
    """The daemon runs no model: its workers (and their forkserver) hold torch, the daemon
    stays small (it held about 230 MB, torch for the built-in model names, the GPU count
    and NVML telemetry). A profile job, a scrape of /metrics and a job list later, no
    torch library is mapped into it."""
    d = DaemonProcess(tmp_path / "state", command=SERVE).start()
    try:
        with d.client() as c:
            job = c.submit("profile", **PROFILE_PARAMS)
            assert c.wait(job["id"], 180)["status"] == "done"
            assert c.jobs()
        with urllib.request.urlopen(d.info["metrics"], timeout=10) as r:
            assert b"prunerd_model_latency_seconds" in r.read()
        maps = Path(f"/proc/{d.pid}/maps").read_text()
        assert "libtorch" not in maps
    finally:
        assert d.stop() == 0


def test_a_dead_forkserver_is_named_and_replaced(tmp_path: Path) -> None:
    """A job that kills the forkserver takes the other running jobs with it (they are its
    children): each fails naming the forkserver's death (it said "worker exited with code
    255"), the daemon serves on, and the next job starts from a new forkserver."""
    # `python -m` (not the console script): its workers import tests.hostile_models from the
    # checkout, which the installed package does not carry.
    hostile = ("--max-workers", "2", "--allow-import", "tests.hostile_models")
    d = DaemonProcess(tmp_path / "state", *hostile).start()
    try:
        with d.client() as c:
            bystander = c.submit("selftest", seconds=60, steps=600)
            wait_for(lambda: c.status(bystander["id"])["progress"])
            killer = c.submit("profile", model="tests.hostile_models:kills_its_parent")
            for job in (bystander, killer):
                final = c.wait(job["id"], 120)
                assert final["status"] == "failed", final
                assert "the forkserver it was started from (pid " in final["error"]["message"]
        # The next job, as a user submits it, starts from a new forkserver.
        ok(run(PRUNERD, "submit", "selftest", "--seconds", "0", "--steps", "1", "--wait",
               "--connect", d.info["rpc"], timeout=60))  # fmt: skip
        with d.client() as c:
            assert wait_for(lambda: c.ping()["running"] == 0, 30)
    finally:
        assert d.stop() == 0

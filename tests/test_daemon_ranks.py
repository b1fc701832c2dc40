"""Prune jobs run as several processes (ranks) by the daemon, as users run them.

A real ``prunerd serve`` (the installed console script) on loopback, allowed two CPU
ranks (``--max-procs 2``); jobs on scikit-learn's digits with two ranks under gloo:
one completes and its events show both ranks alive; one whose rank 1 is SIGKILLed
mid-run fails naming the rank and the signal and leaves no process behind, while the
daemon serves on; a cancelled one stops every rank; requests over the caps are refused.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch

from profiler import ModelSpec, build_model, save_checkpoint
from pruner.distributed import RankFailure
from service import protocol as p
from service.client import Client
from service.config import Settings
from service.limits import RequestBounds
from service.rank_job import job_error
from service.rank_link import remove_left_behind

from .cli_helpers import PRUNERD, run
from .service_helpers import DaemonProcess, descendants, pid_alive, wait_for

SPEC = ModelSpec("resnet20", 1, 10, (8, 8))  # what digits feeds: 8x8 grey, 10 classes
QUICK = {
    "epochs": 1,
    "threads": 1,
    "limit": 256,
    "calibration_samples": 64,
    "heldout_samples": 32,
    "timing_budget_s": 0.3,
}
# Long enough to be killed or cancelled mid-run (it never gets to finish).
LONG = {**QUICK, "epochs": 20, "limit": 1024}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ranks")
    torch.manual_seed(0)
    save_checkpoint(root / "resnet20.pt", SPEC, build_model(SPEC))
    d = DaemonProcess(
        tmp_path_factory.mktemp("daemon") / "state",
        "--path-root",
        str(root),
        "--max-procs",
        "2",
        command=(PRUNERD, "serve"),
    ).start()
    d.root = root
    yield d
    d.kill()


def _connect(d: DaemonProcess) -> list[str]:
    return ["--connect", d.info["rpc"], "--events", d.info["events"]]


def _submit_args(d: DaemonProcess, *extra: str) -> list[str]:
    ckpt = str(d.root / "resnet20.pt")
    return [PRUNERD, "submit", "prune", "resnet20", "--checkpoint", ckpt, "--dataset", "digits",
            "--budget-ratio", "0.7", *extra, *_connect(d)]  # fmt: skip


def _options(options: dict[str, Any]) -> list[str]:
    return [a for k, v in options.items() for a in ("--option", f"{k}={v}")]


def _ranks_gauges(d: DaemonProcess, job_id: str) -> dict[str, float]:
    """``prunerd_job_ranks*`` of one job, as Prometheus reads them."""
    text = urllib.request.urlopen(d.info["metrics"], timeout=10).read().decode()
    found = re.findall(r"^(prunerd_job_ranks\w*)\{([^}]*)\} (\S+)$", text, re.M)
    mine = f'job_id="{job_id}"'
    return {name: float(value) for name, labels, value in found if mine in labels.split(",")}


def _start_long_job(client: Client, root: Path) -> tuple[str, Any, dict[int, int], list[p.Event]]:
    """A two-rank job, once both ranks are alive and rank 0 has profiled the model.

    Returns its id, the open event subscription, each rank's pid and the events so far.
    """
    sub = client.subscribe()
    time.sleep(0.3)  # PUB drops what no one has subscribed to yet
    ckpt = str(root / "resnet20.pt")
    job = client.submit(
        "prune", model="resnet20", checkpoint=ckpt, dataset="digits", budget_ratio=0.7,
        ranks=2, options=LONG,
    )  # fmt: skip
    events, pids = [], {}
    for event in client.watch(job["id"], timeout_s=120, sub=sub):
        events.append(event)
        if event.event == "ranks" and event.data["alive"] == [0, 1]:
            pids = {r["rank"]: r["pid"] for r in event.data["ranks"]}
        if event.event == "milestone" and pids:
            return job["id"], sub, pids, events
    raise AssertionError(f"the job ended before it was running: {[e.event for e in events]}")


# --------------------------------------------------------------------------- jobs


def test_a_two_rank_job_completes_with_both_ranks_alive(daemon: DaemonProcess) -> None:
    result = run(*_submit_args(daemon, "--procs", "2", *_options(QUICK), "--wait", "--json"),
                 timeout=180)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert out["job"]["status"] == "done" and out["job"]["params"]["ranks"] == 2
    ranks = [e["data"] for e in out["events"] if e["event"] == "ranks"]
    both = [r for r in ranks if r["alive"] == [0, 1]]
    assert both, ranks
    assert both[0]["world_size"] == 2 and both[0]["device"] == "cpu"
    pids = {r["rank"]: r["pid"] for r in both[0]["ranks"]}
    assert sorted(pids) == [0, 1] and len(set(pids.values())) == 2
    assert ranks[-1]["alive"] == [] and {r["state"] for r in ranks[-1]["ranks"]} == {"exited"}
    assert not any(map(pid_alive, pids.values()))
    milestones = [e["data"]["event"] for e in out["events"] if e["event"] == "milestone"]
    assert milestones[0] == "profiled" and milestones[-1] == "done"  # rank 0's, once each
    with daemon.client() as c:
        report = c.result(out["job"]["id"])["result"]
    assert report["removed_blocks"]
    written = Path(report["checkpoint_path"]).parent / "report.json"  # by rank 0 alone
    assert json.loads(written.read_text())["removed_blocks"] == report["removed_blocks"]


def _job_processes(client: Client, job_id: str, pids: dict[int, int]) -> set[int]:
    """The job's worker and every process below it: its ranks and anything they started."""
    worker = client.status(job_id)["worker_pid"]
    started = {worker} | descendants(worker)
    assert set(pids.values()) <= started
    return started


def test_a_killed_rank_fails_the_job_and_leaves_nothing(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        job_id, sub, pids, _ = _start_long_job(client, daemon.root)
        assert client.status(job_id)["ranks"]["alive"] == [0, 1]
        assert _ranks_gauges(daemon, job_id) == {
            "prunerd_job_ranks": 2.0,
            "prunerd_job_ranks_alive": 2.0,
        }
        started = _job_processes(client, job_id, pids)
        os.kill(pids[1], signal.SIGKILL)
        events = list(client.watch(job_id, timeout_s=60, sub=sub))
        sub.close()
        final = client.status(job_id)
        assert final["job"]["status"] == "failed", final
        error = final["job"]["error"]
        assert error["type"] == "RankDied" and (error["rank"], error["pid"]) == (1, pids[1])
        assert f"rank 1 (pid {pids[1]}) was killed by SIGKILL" in error["message"]
        assert events[-1].event == "failed"
        died = [e.data for e in events if e.event == "ranks"][0]  # the first change
        assert died["alive"] == [0] and died["ranks"][1]["state"] == "died"
        # Nothing the job started survives it: the worker, both ranks, anything below them.
        wait_for(lambda: not any(map(pid_alive, started)), timeout_s=30)
        assert not descendants(daemon.pid) & started
        assert _ranks_gauges(daemon, job_id) == {}
        # The daemon serves on.
        after = client.submit("selftest", seconds=0.2, steps=2)
        assert client.wait(after["id"], timeout_s=60)["status"] == "done"


def test_cancelling_a_two_rank_job_stops_every_rank(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        job_id, sub, pids, _ = _start_long_job(client, daemon.root)
        started = _job_processes(client, job_id, pids)
        assert client.cancel(job_id)["cancelling"]
        events = list(client.watch(job_id, timeout_s=60, sub=sub))
        sub.close()
        assert events[-1].event == "cancelled"
        assert client.status(job_id)["job"]["status"] == "cancelled"
    wait_for(lambda: not any(map(pid_alive, started)), timeout_s=30)


def test_requests_over_the_caps_are_refused(daemon: DaemonProcess) -> None:
    three = run(*_submit_args(daemon, "--procs", "3", "--json"))
    assert three.returncode == 1
    error = json.loads(three.stderr)["error"]
    assert (error["code"], error["field"]) == ("bad_request", "params.ranks")
    assert "params.ranks=3 on cpu" in error["message"] and "max_procs (2)" in error["message"]
    assert "--max-procs" in error["message"]
    with daemon.client() as c:
        gpus = c.ping()["max_gpus"]
    assert gpus == torch.cuda.device_count()  # the default: the GPUs the daemon sees
    over = run(*_submit_args(daemon, "--gpus", str(gpus + 1), "--json"))
    assert over.returncode == 1
    error = json.loads(over.stderr)["error"]
    assert error["code"] == "bad_request" and f"max_gpus ({gpus})" in error["message"]
    assert "--max-gpus" in error["message"]
    # Contradicting flags never reach the daemon.
    both = run(*_submit_args(daemon, "--gpus", "2", "--device", "cpu"))
    assert both.returncode == 2 and "--device cpu contradicts it" in both.stderr


# --------------------------------------------------------------------------- in this process


def test_ranks_are_bounded_by_the_protocol(tmp_path: Path) -> None:
    (tmp_path / "c.pt").write_bytes(b"")
    policy = p.ModelPolicy(frozenset({"resnet20"}), path_roots=(tmp_path.resolve(),))
    params = {"model": "resnet20", "checkpoint": str(tmp_path / "c.pt"), "budget_ratio": 0.5}

    def refused(**extra: Any) -> p.ProtocolError:
        doc = {"v": 1, "op": "submit", "kind": "prune", "params": {**params, **extra}}
        with pytest.raises(p.ProtocolError) as e:
            p.parse_request(doc, policy)
        return e.value

    assert refused(ranks=0).field == "params.ranks"
    assert refused(ranks=65).field == "params.ranks"
    e = refused(ranks=2, device="cuda:1")
    assert (e.code, e.field) == ("bad_request", "params.device") and "give device 'cuda'" in str(e)
    doc = {"v": 1, "op": "submit", "kind": "prune", "params": params}
    assert p.parse_request(doc, policy).params.ranks == 1


def test_a_job_error_names_the_rank_that_died() -> None:
    killed = RankFailure(1, 1, 4242, -9, "SIGKILL")
    stopped = RankFailure(0, 0, 4241, -15, "SIGTERM")
    gloo = (0, {"type": "DistBackendError", "message": "Connection closed by peer"})
    error = job_error((stopped, killed), [gloo])  # the agent stopped rank 0 with SIGTERM
    assert error["type"] == "RankDied" and (error["rank"], error["pid"]) == (1, 4242)
    assert error["message"].startswith("rank 1 (pid 4242) was killed by SIGKILL")
    assert "rank 0 (pid 4241) was killed by SIGTERM" in error["message"]
    # Both killed by the same signal: the first whose link to the worker closed.
    other = RankFailure(0, 0, 4241, -9, "SIGKILL")
    assert job_error((other, killed), [], deaths=[1, 0])["rank"] == 1
    assert job_error((killed, other), [], deaths=[0, 1])["rank"] == 0
    # Every rank read the same bad input: rank 0's error, however they arrived.
    same = {"type": "ValueError", "message": "dataset 'digits' has 10 classes"}
    exited = (RankFailure(1, 1, 7, 1, None), RankFailure(0, 0, 6, 1, None))
    error = job_error(exited, [(1, dict(same)), (0, dict(same))])
    assert (error["rank"], error["message"]) == (0, same["message"])
    # One rank's own error, and the others' failures that followed it.
    own = {"type": "ValueError", "message": "3 training batches cannot be shared by 2"}
    error = job_error(exited, [(1, own), gloo])
    assert error["message"] == f"rank 1: {own['message']}" and error["type"] == "ValueError"
    assert job_error(exited, [])["message"] == "rank 1 (pid 7) exited with 1"


def test_a_killed_daemon_leaves_no_rank_running(tmp_path: Path) -> None:
    """SIGKILL to the daemon: its worker dies with it, and the ranks with their worker."""
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "resnet20.pt", SPEC, build_model(SPEC))
    d = DaemonProcess(tmp_path / "state", "--path-root", str(tmp_path), "--max-procs", "2",
                      command=(PRUNERD, "serve")).start()  # fmt: skip
    try:
        with d.client() as client:
            job_id, sub, pids, _ = _start_long_job(client, tmp_path)
            sub.close()
            started = _job_processes(client, job_id, pids)
        d.stop(signal.SIGKILL)
        wait_for(lambda: not any(map(pid_alive, started)), timeout_s=30)
    finally:
        d.kill()
        for pid in started:  # what a reaping daemon would have removed
            remove_left_behind(pid)


def test_the_gpu_cap_holds_for_every_job_on_cuda() -> None:
    bounds = RequestBounds.from_settings(Settings(max_procs=2), visible_gpus=0)
    assert (bounds.max_gpus, bounds.max_procs) == (0, 2)
    profile = {"model": "resnet20", "batch_size": 1, "in_channels": 1, "input_size": [8, 8]}
    bounds.check("profile", {**profile, "device": "cpu"})
    with pytest.raises(p.ProtocolError) as e:
        bounds.check("profile", {**profile, "device": "cuda"})
    assert e.value.field == "params.device" and "max_gpus (0)" in e.value.message
    assert "sees no CUDA device" in e.value.message
    four = RequestBounds.from_settings(Settings(), visible_gpus=4)
    four.check("prune", {**profile, "device": "cuda", "ranks": 4})
    with pytest.raises(p.ProtocolError, match=r"params.ranks=5 on cuda .* max_gpus \(4\)"):
        four.check("prune", {**profile, "device": "cuda", "ranks": 5})
    assert RequestBounds.from_settings(Settings(max_gpus=1), visible_gpus=4).max_gpus == 1
    with pytest.raises(ValueError, match="max_gpus must be in 0..64, got -1"):
        Settings(max_gpus=-1)
    with pytest.raises(ValueError, match="max_procs must be in 1..64, got 0"):
        Settings(max_procs=0)

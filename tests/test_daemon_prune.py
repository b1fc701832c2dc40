"""A prune job through the daemon: the pipeline runs in a worker, milestones stream, the report comes back."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from profiler import ModelSpec, build_model, save_checkpoint
from service.client import RequestError

from .service_helpers import DaemonProcess

SPEC = ModelSpec("resnet20", 1, 4, (16, 16))  # what the synthetic dataset produces
QUICK = {
    "epochs": 1,
    "batch_size": 32,
    "threads": 1,
    "limit": 160,
    "calibration_samples": 96,
    "heldout_samples": 16,
    "timing_budget_s": 0.3,
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_checkpoint(root / "resnet20.pt", SPEC, build_model(SPEC))
    config = root / "prunerd.toml"
    config.write_text(f'path_roots = ["{root}"]\n')
    d = DaemonProcess(tmp_path_factory.mktemp("daemon") / "state", "--config", str(config)).start()
    d.root = root
    yield d
    d.kill()


def test_prune_job_runs_the_pipeline(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        sub = client.subscribe()
        time.sleep(0.3)  # PUB drops what no one has subscribed to yet
        params = {
            "model": "resnet20",
            "checkpoint": str(daemon.root / "resnet20.pt"),
            "dataset": "synthetic",
        }
        job = client.submit("prune", **params, budget_ratio=0.6, options=QUICK)
        events = list(client.watch(job["id"], timeout_s=600, sub=sub))
        sub.close()
        result = client.result(job["id"])
    kinds = [e.event for e in events]
    assert kinds[-1] == "done", [(e.event, e.data) for e in events if e.event == "failed"]
    milestones = [e.data["event"] for e in events if e.event == "milestone"]
    assert milestones[0] == "profiled" and milestones[-1] == "done"
    report = result["result"]
    assert (
        report["removed_blocks"] and report["pruned"]["latency_s"] < report["baseline"]["latency_s"]
    )
    out = Path(report["out"]) if "out" in report else None
    if out is not None:
        assert (
            json.loads((out / "report.json").read_text())["removed_blocks"]
            == report["removed_blocks"]
        )


def test_prune_job_errors(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        with pytest.raises(RequestError) as e:
            client.submit("prune", model="resnet20", checkpoint="/etc/passwd", budget_ratio=0.5)
        assert (e.value.code, e.value.field) == ("not_allowed", "params.checkpoint")
        # Fields the request owns cannot be smuggled in through options: the job fails with the reason.
        job = client.submit(
            "prune",
            model="resnet20",
            checkpoint=str(daemon.root / "resnet20.pt"),
            budget_ratio=0.5,
            options={"out": "/"},
        )
        status = client.wait(job["id"], timeout_s=120)
        assert status["status"] == "failed"
        assert "may not set ['out']" in json.dumps(client.result(job["id"]))

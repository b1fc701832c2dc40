"""A prune job through the daemon: the pipeline runs in a worker, milestones stream, the report comes back."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from profiler import ModelSpec, build_model, read_checkpoint, save_checkpoint
from pruner.adapt import InputAdaptation, recorded_adaptation
from service.client import RequestError

from .service_helpers import DaemonProcess

SPEC = ModelSpec("resnet20", 1, 4, (16, 16))  # what the synthetic dataset produces
RGB_MODEL = "tests.models_for_tests:torchvision_style_resnet"
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
    rgb = ModelSpec(RGB_MODEL, 3, 4, (24, 24))  # a fixed three-channel builder, bigger inputs
    adapted = InputAdaptation(1, (16, 16), 3, (24, 24)).to_dict()
    save_checkpoint(root / "rgb.pt", rgb, build_model(rgb), input_adaptation=adapted)
    config.write_text(f'path_roots = ["{root}"]\nallow_imports = ["tests.models_for_tests"]\n')
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


def test_prune_job_feeds_an_adapted_model_as_its_checkpoint_says(daemon: DaemonProcess) -> None:
    """One-channel 16x16 data into a three-channel 24x24 model, through a worker."""
    with daemon.client() as client:
        params = {"model": RGB_MODEL, "checkpoint": str(daemon.root / "rgb.pt")}
        job = client.submit("prune", **params, dataset="synthetic", budget_ratio=0.8, options=QUICK)
        events = list(client.watch(job["id"], timeout_s=600))
        result = client.result(job["id"])
    assert events[-1].event == "done", [e.data for e in events if e.event == "failed"]
    pruned = read_checkpoint(result["result"]["checkpoint_path"])
    assert (pruned.spec.in_channels, pruned.spec.input_size) == (3, (24, 24))
    assert recorded_adaptation(pruned.meta) == InputAdaptation(1, (16, 16), 3, (24, 24))


def test_a_profile_job_times_a_pruned_checkpoint(daemon: DaemonProcess) -> None:
    """A prune job's pruned.pt given to a profile job: it failed ("load it with
    pruner.load_pruned"); now the model is rebuilt from its plan and its kept blocks timed."""
    params = {**_synthetic_prune(daemon), "output": str(daemon.root / "for-profile")}
    with daemon.client() as client:
        job = client.submit("prune", **params, method="l1", options=QUICK)
        assert client.wait(job["id"], timeout_s=600)["status"] == "done"
        report = client.result(job["id"])["result"]
        ckpt = report["checkpoint_path"]
        timed = client.submit("profile", model="resnet20", checkpoint=ckpt)
        status = client.wait(timed["id"], timeout_s=600)
        profile = client.result(timed["id"])["result"]
    assert status["status"] == "done", status
    kept = {b["name"] for b in profile["blocks"]}
    assert kept and not kept & set(report["removed_blocks"])
    assert profile["input_shape"] == [1, *SPEC.input_shape(1)[1:]]  # the checkpoint's own
    # Named apart from the architecture it was cut from, in the profile and in the metrics:
    # the same label as the unpruned resnet20 would have overwritten its gauges.
    assert profile["model"] == f"resnet20@{ckpt}"
    text = urllib.request.urlopen(daemon.info["metrics"], timeout=30).read().decode()
    label = f'model="resnet20@{ckpt}"'
    assert f'prunerd_model_latency_seconds{{batch="1",device="cpu",{label}}}' in text
    assert re.search(
        rf'prunerd_block_latency_seconds{{batch="1",block="[^"]+",device="cpu",{re.escape(label)}}}',
        text,
    )


def test_an_output_inside_another_jobs_output_is_refused(daemon: DaemonProcess) -> None:
    """A second request whose output lay inside a queued job's (its pruned.pt, say) was
    accepted and the directory made: that job then failed writing its checkpoint."""
    first = str(daemon.root / "victim")
    with daemon.client() as client:
        job = client.submit("prune", **_synthetic_prune(daemon), output=first, options=QUICK)
        for inside in ("victim/pruned.pt", "victim/a/b"):
            with pytest.raises(RequestError) as e:
                client.submit("prune", **_synthetic_prune(daemon), output=inside, options=QUICK)
            assert (e.value.code, e.value.field) == ("conflict", "params.output")
            assert f"the output directory of job {job['id']}" in e.value.message
        assert not (daemon.root / "victim" / "pruned.pt").is_dir()
        client.cancel(job["id"])


def test_prune_job_errors(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        with pytest.raises(RequestError) as e:
            client.submit("prune", model="resnet20", checkpoint="/etc/passwd", budget_ratio=0.5)
        assert (e.value.code, e.value.field) == ("not_allowed", "params.checkpoint")
        # Fields the request owns cannot be smuggled in through options: refused at submit.
        with pytest.raises(RequestError) as e:
            client.submit(
                "prune",
                model="resnet20",
                checkpoint=str(daemon.root / "resnet20.pt"),
                budget_ratio=0.5,
                options={"out": "/"},
            )
        assert (e.value.code, e.value.field) == ("bad_request", "params.options")
        assert "may not set ['out']" in str(e.value)
        # A misspelt option is named with the ones a request may set (not the fixed ones).
        with pytest.raises(RequestError) as e:
            client.submit("prune", **_synthetic_prune(daemon), options={"epoch": 1})
        assert (e.value.code, e.value.field) == ("bad_request", "params.options")
        said = str(e.value)
        assert "unknown option(s) ['epoch']; a request may set [" in said
        assert "'epochs'" in said and "'checkpoint'" not in said and "'out'" not in said


def _synthetic_prune(daemon: DaemonProcess) -> dict:
    """A prune request's fields for the saved resnet20 on synthetic data, at budget 0.7."""
    return {
        "model": "resnet20",
        "checkpoint": str(daemon.root / "resnet20.pt"),
        "dataset": "synthetic",
        "budget_ratio": 0.7,
    }


def test_removal_prune_job_and_an_unknown_method(daemon: DaemonProcess) -> None:
    """``method: removal`` runs through the daemon and its scores come back in the report; a
    method that is not registered is refused by name, and the daemon goes on serving."""
    params = _synthetic_prune(daemon)
    with daemon.client() as client:
        with pytest.raises(RequestError) as e:
            client.submit("prune", **params, method="removal; rm -rf /", options=QUICK)
        assert e.value.field == "params.method" and "removal" in str(e.value)
        job = client.submit("prune", **params, method="removal", options=QUICK)
        status = client.wait(job["id"], timeout_s=600)
        report = client.result(job["id"])["result"]
    assert status["status"] == "done", report
    removals = report["depth"]["removals"]
    assert removals and all(r["samples"] == 16 for r in removals)
    assert not report["depth"]["scores"]  # no probes were fit
    assert daemon.proc.poll() is None


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("iterative", "no", "must be true or false, got 'no'"),
        ("calibration_samples", 0, "must be >= 1, got 0"),
        ("lr", -1, "must be finite and > 0, got -1"),
        ("timing_budget_s", 0, "must be finite and > 0, got 0"),
        ("tolerance", 2, "must be in [0, 1], got 2"),
        ("depth_share", 1.5, "must be in [0, 1], got 1.5"),
        ("buckets", 0, "must be >= 1, got 0"),
        ("threads", 0, "must be >= 1, got 0"),
    ],
)
def test_bad_options_are_refused_at_submit_by_name(
    daemon: DaemonProcess, option: str, value: object, said: str
) -> None:
    """What the worker would refuse, the daemon refuses when the request arrives (a
    ``bad_request`` naming ``params.options.NAME``): no job is queued, no worker started. A
    request's ``"iterative": "no"`` is not a truthy string that switches rounds on."""
    params = _synthetic_prune(daemon)
    with daemon.client() as client:
        before = client.jobs()
        with pytest.raises(RequestError) as e:
            client.submit("prune", **params, options={**QUICK, option: value})
        assert (e.value.code, e.value.field) == ("bad_request", f"params.options.{option}")
        assert f"params.options.{option} {said}" in str(e.value)
        assert client.jobs() == before
    assert daemon.proc.poll() is None

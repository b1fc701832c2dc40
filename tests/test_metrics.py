"""Collectors read the job store and the deployment tracker at scrape time."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.jobs import JobStore
from service.metrics import INFERENCE_BUCKETS_S, DeploymentTracker, PrunerdCollector
from service.protocol import SampleBatch


def scrape(collector: PrunerdCollector) -> dict[tuple[str, tuple], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_latency_and_jobs_from_the_store(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    collector = PrunerdCollector(store.path, DeploymentTracker())
    store.record_block("resnet20", "layer1.0", "cpu", 1, 0.00125)
    store.record_block("resnet20", "layer1.0", "cpu", 1, 0.0015)  # the latest profile wins
    store.record_model("resnet20", "cpu", 1, 0.01, -0.02)
    for status in ("done", "done", "failed"):
        job = store.create("profile", {"model": "resnet20"})
        store.mark_started(job.id)
        store.finish(job.id, status)
    store.create("profile", {"model": "resnet20"})
    m = scrape(collector)
    labels = (("batch", "1"), ("block", "layer1.0"), ("device", "cpu"), ("model", "resnet20"))
    assert m[("prunerd_block_latency_seconds", labels)] == 0.0015
    assert (
        m[
            (
                "prunerd_model_latency_seconds",
                (("batch", "1"), ("device", "cpu"), ("model", "resnet20")),
            )
        ]
        == 0.01
    )
    assert (
        m[
            (
                "prunerd_additivity_error_ratio",
                (("batch", "1"), ("device", "cpu"), ("model", "resnet20")),
            )
        ]
        == -0.02
    )
    assert m[("prunerd_jobs_total", (("kind", "profile"), ("status", "done")))] == 2
    assert m[("prunerd_jobs_total", (("kind", "profile"), ("status", "failed")))] == 1
    assert m[("prunerd_jobs", (("kind", "profile"), ("status", "queued")))] == 1
    assert m[("prunerd_job_duration_seconds_count", (("kind", "profile"),))] == 3
    assert m[("prunerd_job_duration_seconds_bucket", (("kind", "profile"), ("le", "1.0")))] == 3
    # No GPU: the GPU gauges are absent, not zero.
    assert not any(name.startswith("prunerd_gpu_") for name, _ in m)


def test_profile_checks_reach_the_metrics(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    collector = PrunerdCollector(store.path, DeploymentTracker())
    store.record_model(
        "resnet20", "cpu", 1, 0.01, -0.6, checks_passed=False, other_cores=1.4,
        prediction_error=0.031,
    )  # fmt: skip
    store.record_model("resnet56", "cpu", 1, 0.03, 0.01)  # unchecked: no checks gauges
    m = scrape(collector)
    labels = (("batch", "1"), ("device", "cpu"), ("model", "resnet20"))
    assert m[("prunerd_profile_checks_passed", labels)] == 0.0
    assert m[("prunerd_profile_other_cpu_cores", labels)] == 1.4
    assert m[("prunerd_prediction_error_ratio", labels)] == 0.031
    for gauge in ("prunerd_profile_checks_passed", "prunerd_prediction_error_ratio"):
        assert not any(name == gauge and ("model", "resnet56") in key for name, key in m)


def test_an_older_store_gains_the_new_columns(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "jobs.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE model_latency (model TEXT, device TEXT, batch INTEGER, seconds REAL "
            "NOT NULL, additivity_error REAL, updated_at REAL NOT NULL, "
            "PRIMARY KEY (model, device, batch))"
        )
        db.execute("INSERT INTO model_latency VALUES ('resnet20', 'cpu', 1, 0.01, 0.0, 0.0)")
    store = JobStore(path)
    store.record_model("resnet56", "cpu", 1, 0.03, 0.01, checks_passed=True, other_cores=0.1)
    m = scrape(PrunerdCollector(store.path, DeploymentTracker()))
    assert (
        m[
            (
                "prunerd_model_latency_seconds",
                (("batch", "1"), ("device", "cpu"), ("model", "resnet20")),
            )
        ]
        == 0.01
    )
    assert (
        m[
            (
                "prunerd_profile_checks_passed",
                (("batch", "1"), ("device", "cpu"), ("model", "resnet56")),
            )
        ]
        == 1.0
    )


def test_gpu_gauges_when_telemetry_is_there(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    gpus = [
        {
            "index": 0.0,
            "name": "A100",
            "utilization_ratio": 0.5,
            "power_watts": 250.0,
            "sm_clock_hertz": 1.4e9,
        }
    ]
    m = scrape(PrunerdCollector(store.path, DeploymentTracker(), lambda: gpus))
    assert m[("prunerd_gpu_utilization_ratio", (("gpu", "0"), ("name", "A100")))] == 0.5
    assert m[("prunerd_gpu_power_watts", (("gpu", "0"), ("name", "A100")))] == 250.0
    assert not any(name == "prunerd_gpu_temperature_celsius" for name, _ in m)


def test_deployment_histogram_and_budget(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    tracker = DeploymentTracker(budgets={"a": 0.001, "idle": 0.5}, max_deployments=2)
    samples = [50e-6, 51e-6, 0.001, 0.0011, 2.0]
    assert tracker.add(SampleBatch("a", samples, budget_s=0.1, dropped=7))  # configured budget wins
    assert tracker.add(SampleBatch("b", [0.01]))
    assert not tracker.add(SampleBatch("c", [0.01, 0.02]))  # over the cardinality cap
    m = scrape(PrunerdCollector(store.path, tracker))
    dep = (("deployment", "a"),)

    def bucket(le: str) -> float:
        return m[("prunerd_inference_latency_seconds_bucket", (("deployment", "a"), ("le", le)))]

    assert bucket("5e-05") == 1  # "le" is inclusive
    assert bucket("0.0001") == 2
    assert bucket("0.001") == 3
    assert bucket("1.0") == 4
    assert bucket("+Inf") == 5
    assert (
        len(INFERENCE_BUCKETS_S) == 14
        and INFERENCE_BUCKETS_S[0] == 50e-6
        and INFERENCE_BUCKETS_S[-1] == 1.0
    )
    assert abs(m[("prunerd_inference_latency_seconds_sum", dep)] - sum(samples)) < 1e-12
    assert m[("prunerd_latency_budget_seconds", dep)] == 0.001
    assert m[("prunerd_budget_violations_total", dep)] == 2
    assert m[("prunerd_monitor_dropped_samples_total", dep)] == 7
    assert m[("prunerd_latency_budget_seconds", (("deployment", "idle"),))] == 0.5
    assert m[("prunerd_ingest_rejected_total", (("reason", "too_many_deployments"),))] == 2
    assert m[("prunerd_ingest_samples_total", ())] == 6


def test_a_deployments_budget_is_the_first_reported(tmp_path: Path) -> None:
    """A batch without a budget erased the deployment's budget and violations from the
    metrics, and one with a huge budget hid every violation after it."""
    tracker = DeploymentTracker()
    assert tracker.add(SampleBatch("svc", [0.002, 0.003], budget_s=0.0025))
    assert tracker.add(SampleBatch("svc", [0.004]))  # no budget
    assert tracker.add(SampleBatch("svc", [0.005], budget_s=3600.0))
    m = scrape(PrunerdCollector(JobStore(tmp_path / "jobs.sqlite").path, tracker))
    dep = (("deployment", "svc"),)
    assert m[("prunerd_latency_budget_seconds", dep)] == 0.0025
    assert m[("prunerd_budget_violations_total", dep)] == 3

"""Prometheus metrics, computed when Prometheus scrapes (custom collectors, no shadow counters).

Latencies and jobs are read from the job store (SQLite, WAL: reading never blocks the
daemon's writes), deployment latency from the in-memory :class:`DeploymentTracker`, the
ranks of jobs run as several processes from the daemon's ``RankTracker`` (service.ranks),
GPU telemetry from NVML through ``profiler.gpu_telemetry``. Every duration is in seconds.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    ProcessCollector,
    make_wsgi_app,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .jobs import connect_readonly
from .protocol import FINISHED_STATUSES, SampleBatch
from .ranks import RankTracker

# 50 us .. 1 s: from a small CNN on a GPU to a large one on a CPU.
INFERENCE_BUCKETS_S = (
    50e-6,
    100e-6,
    250e-6,
    500e-6,
    1e-3,
    2.5e-3,
    5e-3,
    10e-3,
    25e-3,
    50e-3,
    0.1,
    0.25,
    0.5,
    1.0,
)
JOB_DURATION_BUCKETS_S = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    4 * 3600.0,
)

# profiler.gpu_telemetry() key -> (metric name, help)
GPU_GAUGES = {
    "utilization_ratio": (
        "prunerd_gpu_utilization_ratio",
        "GPU busy fraction over the last sample period (0..1).",
    ),
    "memory_used_bytes": ("prunerd_gpu_memory_used_bytes", "GPU memory in use, bytes."),
    "temperature_celsius": (
        "prunerd_gpu_temperature_celsius",
        "GPU core temperature, degrees Celsius.",
    ),
    "power_watts": ("prunerd_gpu_power_watts", "GPU power draw, watts."),
    "sm_clock_hertz": ("prunerd_gpu_sm_clock_hertz", "GPU streaming-multiprocessor clock, hertz."),
}


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


# --------------------------------------------------------------------------- deployment latency


@dataclass
class DeploymentStats:
    """Histogram state of one deployment: per-bucket (not cumulative) counts, sum in seconds."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(INFERENCE_BUCKETS_S) + 1))
    sum_s: float = 0.0
    budget_s: float | None = None
    violations: int = 0
    client_dropped: int = 0


class DeploymentTracker:
    """Deployment latency samples from service.monitor. The daemon's loop adds, the scrape thread reads.

    The number of deployments is capped (``max_deployments``) so that a misbehaving
    client cannot blow up the label cardinality, and so is the number one client may
    start (``per_client``): the first client to report a name owns its slot. When a cap
    is reached, the deployment silent longest is evicted if it has been silent
    ``idle_s``; otherwise the new name's samples are rejected and counted. Deployments
    named in the daemon's ``[budgets]`` always have a slot and are never evicted.
    """

    def __init__(
        self,
        budgets: dict[str, float] | None = None,
        max_deployments: int = 256,
        per_client: int | None = None,
        idle_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._stats: dict[str, DeploymentStats] = {}
        self._configured = dict(budgets or {})  # the daemon's own budgets win over a client's claim
        self.max_deployments = max_deployments
        self.per_client = per_client if per_client is not None else max_deployments
        self.idle_s = idle_s
        self._clock = clock
        self._owner: dict[str, str] = {}
        self._seen: dict[str, float] = {}
        self.samples_total = 0
        self.evicted = 0
        self.rejected: dict[str, int] = {}

    def reject(self, reason: str, samples: int = 1) -> None:
        with self._lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + samples

    def _evict_idle(self, names: list[str], now: float) -> bool:
        idle = [
            n for n in names if n not in self._configured and now - self._seen[n] >= self.idle_s
        ]
        if not idle:
            return False
        oldest = min(idle, key=self._seen.__getitem__)
        del self._stats[oldest], self._owner[oldest], self._seen[oldest]
        self.evicted += 1
        return True

    def _admit(self, name: str, client: str, now: float) -> str | None:
        """Make room for a new deployment; the reason it cannot have one, or None."""
        if name not in self._configured:
            mine = [n for n, c in self._owner.items() if c == client and n not in self._configured]
            if len(mine) >= self.per_client and not self._evict_idle(mine, now):
                return "too_many_deployments_for_client"
            unconfigured = [n for n in self._stats if n not in self._configured]
            if len(self._stats) >= self.max_deployments and not self._evict_idle(unconfigured, now):
                return "too_many_deployments"
        self._stats[name] = DeploymentStats()
        self._owner[name] = client
        return None

    def add(self, batch: SampleBatch, client: str = "") -> bool:
        """Count a batch; False (and counted as rejected) when no slot can be had for it."""
        with self._lock:
            now = self._clock()
            stats = self._stats.get(batch.deployment)
            if stats is None:
                reason = self._admit(batch.deployment, client, now)
                if reason is not None:
                    self.rejected[reason] = self.rejected.get(reason, 0) + len(batch.samples)
                    return False
                stats = self._stats[batch.deployment]
            self._seen[batch.deployment] = now
            # The daemon's budget, else the first one reported: a later batch (from any
            # sender) neither moves it nor, without one, erases it and its violations.
            budget = self._configured.get(batch.deployment, stats.budget_s)
            stats.budget_s = budget = batch.budget_s if budget is None else budget
            counts, bounds = stats.counts, INFERENCE_BUCKETS_S
            for s in batch.samples:
                # bisect_left: the first bucket whose upper bound is >= s ("le" is inclusive).
                counts[bisect.bisect_left(bounds, s)] += 1
            stats.sum_s += math.fsum(batch.samples)
            if budget is not None:
                stats.violations += sum(1 for s in batch.samples if s > budget)
            stats.client_dropped = max(stats.client_dropped, batch.dropped)
            self.samples_total += len(batch.samples)
            return True

    def snapshot(self) -> dict[str, DeploymentStats]:
        with self._lock:
            snap = {
                k: DeploymentStats(
                    list(v.counts), v.sum_s, v.budget_s, v.violations, v.client_dropped
                )
                for k, v in self._stats.items()
            }
            # Configured budgets are exported even before the deployment reports.
            for name, budget in self._configured.items():
                snap.setdefault(name, DeploymentStats(budget_s=budget))
            return snap

    def count(self, deployment: str) -> int:
        with self._lock:
            stats = self._stats.get(deployment)
            return 0 if stats is None else sum(stats.counts)


# --------------------------------------------------------------------------- the collector


class PrunerdCollector(Collector):
    """Yields every prunerd_* metric from current state at scrape time."""

    def __init__(
        self,
        store_path: Path,
        deployments: DeploymentTracker,
        gpu_telemetry: Callable[[], list[dict[str, Any]]] | None = None,
        ranks: RankTracker | None = None,
    ) -> None:
        self.store_path = store_path
        self.deployments = deployments
        self.gpu_telemetry = gpu_telemetry
        self.ranks = ranks

    def collect(self) -> Iterator[Metric]:
        db = connect_readonly(self.store_path)
        try:
            yield from self._latency(db)
            yield from self._jobs(db)
        finally:
            db.close()
        yield from self._deployments()
        yield from self._ranks()
        yield from self._gpus()

    def _latency(self, db: Any) -> Iterator[Metric]:
        block = GaugeMetricFamily(
            "prunerd_block_latency_seconds",
            "Serial latency (median) of one block in place, seconds; latest profile per model/device/batch.",
            labels=["model", "block", "device", "batch"],
        )
        for model, name, device, batch, seconds in db.execute(
            "SELECT model, block, device, batch, seconds FROM block_latency"
        ):
            block.add_metric([model, name, device, str(batch)], seconds)
        yield block
        e2e = GaugeMetricFamily(
            "prunerd_model_latency_seconds",
            "End-to-end latency (median) of a model, seconds.",
            labels=["model", "device", "batch"],
        )
        add = GaugeMetricFamily(
            "prunerd_additivity_error_ratio",
            "(sum of block latencies + rest - end-to-end) / end-to-end of the latest profile.",
            labels=["model", "device", "batch"],
        )
        passed = GaugeMetricFamily(
            "prunerd_profile_checks_passed",
            "1 when the latest profile passed its own checks (additivity, spread, drift, "
            "other processes' CPU use), 0 when it failed and was not stored.",
            labels=["model", "device", "batch"],
        )
        others = GaugeMetricFamily(
            "prunerd_profile_other_cpu_cores",
            "Cores other processes used, on average, while the latest profile was timed (CPU).",
            labels=["model", "device", "batch"],
        )
        predicted = GaugeMetricFamily(
            "prunerd_prediction_error_ratio",
            "The latest profile's prediction check: latency predicted for the model without "
            "every second removable block over that model measured, minus 1.",
            labels=["model", "device", "batch"],
        )
        for model, device, batch, seconds, err, ok, other, pred in db.execute(
            "SELECT model, device, batch, seconds, additivity_error, checks_passed, other_cores, "
            "prediction_error FROM model_latency"
        ):
            labels = [model, device, str(batch)]
            e2e.add_metric(labels, seconds)
            if err is not None:
                add.add_metric(labels, err)
            if ok is not None:
                passed.add_metric(labels, float(ok))
            if other is not None:
                others.add_metric(labels, other)
            if pred is not None:
                predicted.add_metric(labels, pred)
        yield from (e2e, add, passed, others, predicted)

    def _jobs(self, db: Any) -> Iterator[Metric]:
        finished = ",".join(f"'{s}'" for s in FINISHED_STATUSES)
        total = CounterMetricFamily(
            "prunerd_jobs_total",
            "Jobs that finished, by kind and final status.",
            labels=["kind", "status"],
        )
        for kind, status, n in db.execute(
            f"SELECT kind, status, COUNT(*) FROM jobs WHERE status IN ({finished}) GROUP BY kind, status"
        ):
            total.add_metric([kind, status], n)
        yield total
        current = GaugeMetricFamily(
            "prunerd_jobs", "Jobs queued or running now.", labels=["kind", "status"]
        )
        for kind, status, n in db.execute(
            "SELECT kind, status, COUNT(*) FROM jobs WHERE status IN ('queued', 'running') GROUP BY kind, status"
        ):
            current.add_metric([kind, status], n)
        yield current
        # Cumulative bucket counts in one pass in SQLite rather than in Python.
        bounds = JOB_DURATION_BUCKETS_S
        cols = ", ".join(f"SUM(d <= {b!r})" for b in bounds)
        hist = HistogramMetricFamily(
            "prunerd_job_duration_seconds",
            "Wall time of finished jobs, from start to finish, seconds.",
            labels=["kind"],
        )
        for row in db.execute(
            f"SELECT kind, COUNT(*), TOTAL(d), {cols} FROM "
            f"(SELECT kind, finished_at - started_at AS d FROM jobs WHERE status IN ({finished}) "
            "AND started_at IS NOT NULL) GROUP BY kind"
        ):
            kind, count, total_s, cum = row[0], row[1], row[2], row[3:]
            buckets = [(_le(b), c or 0) for b, c in zip(bounds, cum, strict=True)] + [
                ("+Inf", count)
            ]
            hist.add_metric([kind], buckets, total_s)
        yield hist

    def _deployments(self) -> Iterator[Metric]:
        snap = self.deployments.snapshot()
        hist = HistogramMetricFamily(
            "prunerd_inference_latency_seconds",
            "Inference latency reported by deployed models (service.monitor), seconds.",
            labels=["deployment"],
        )
        budget = GaugeMetricFamily(
            "prunerd_latency_budget_seconds",
            "Latency budget of a deployment, seconds.",
            labels=["deployment"],
        )
        violations = CounterMetricFamily(
            "prunerd_budget_violations_total",
            "Inference samples over the deployment's budget.",
            labels=["deployment"],
        )
        dropped = CounterMetricFamily(
            "prunerd_monitor_dropped_samples_total",
            "Samples a deployment's monitor dropped because the daemon was away or slow (as it reports).",
            labels=["deployment"],
        )
        for name, s in sorted(snap.items()):
            if s.budget_s is not None:
                budget.add_metric([name], s.budget_s)
                violations.add_metric([name], s.violations)
            n = sum(s.counts)
            if n == 0:
                continue
            cum, buckets = 0, []
            for bound, c in zip((*INFERENCE_BUCKETS_S, math.inf), s.counts, strict=True):
                cum += c
                buckets.append((_le(bound), cum))
            hist.add_metric([name], buckets, s.sum_s)
            dropped.add_metric([name], s.client_dropped)
        yield hist
        yield budget
        yield violations
        yield dropped
        ingested = CounterMetricFamily(
            "prunerd_ingest_samples_total", "Deployment latency samples accepted."
        )
        ingested.add_metric([], self.deployments.samples_total)
        yield ingested
        rejected = CounterMetricFamily(
            "prunerd_ingest_rejected_total",
            "Deployment latency samples or messages rejected.",
            labels=["reason"],
        )
        for reason, n in sorted(self.deployments.rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected
        evicted = CounterMetricFamily(
            "prunerd_deployments_evicted_total",
            "Deployments dropped to make room after they were idle deployment_idle_s.",
        )
        evicted.add_metric([], self.deployments.evicted)
        yield evicted

    def _ranks(self) -> Iterator[Metric]:
        # One series per running multi-process job: at most max_workers at any time.
        jobs = self.ranks.snapshot() if self.ranks is not None else {}
        world = GaugeMetricFamily(
            "prunerd_job_ranks",
            "Processes (ranks) a running job was started as (prune jobs with params.ranks > 1).",
            labels=["job_id", "device"],
        )
        alive = GaugeMetricFamily(
            "prunerd_job_ranks_alive",
            "Ranks of a running job alive now (reported in, connection to the worker open).",
            labels=["job_id", "device"],
        )
        for job_id, report in sorted(jobs.items()):
            world.add_metric([job_id, report.device], report.world_size)
            alive.add_metric([job_id, report.device], len(report.alive))
        yield world
        yield alive

    def _gpus(self) -> Iterator[Metric]:
        # No GPU (or no NVML): the gauges are absent, not zero, so dashboards show "no data".
        gpus = self.gpu_telemetry() if self.gpu_telemetry is not None else []
        if not gpus:
            return
        for key, (name, doc) in GPU_GAUGES.items():
            g = GaugeMetricFamily(name, doc, labels=["gpu", "name"])
            for i, gpu in enumerate(gpus):
                if key in gpu and gpu[key] is not None:
                    g.add_metric(
                        [str(int(gpu.get("index", i))), str(gpu.get("name", ""))], float(gpu[key])
                    )
            yield g


def default_gpu_telemetry() -> Callable[[], list[dict[str, Any]]] | None:
    """profiler.gpu_telemetry (with GPU names) when this build has it: NVML only, no torch."""
    try:
        from profiler.nvml import gpu_names, gpu_telemetry
    except ImportError:
        return None
    fn, names_fn = gpu_telemetry, gpu_names

    def safe() -> list[dict[str, Any]]:
        try:
            gpus = [dict(g) for g in fn()]
            if gpus and names_fn is not None:
                for gpu, name in zip(gpus, names_fn(), strict=False):
                    gpu.setdefault("name", name)
            return gpus
        except Exception:  # noqa: BLE001 - a flaky NVML must not fail the whole scrape
            return []

    return safe


def serve_metrics(
    host: str, port: int, collector: Collector, basic_auth: tuple[str, str] | None = None
) -> Any:
    """Start /metrics on a daemon thread; returns the server (``.server_port``, ``.shutdown()``).

    With ``basic_auth`` (user, password) every request must carry those credentials.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)  # the daemon's own CPU, memory and open files
    if basic_auth is None:
        server, _thread = start_http_server(port, addr=host, registry=registry)
        return server
    # prometheus_client's own server has TLS options but no basic auth: wrap its WSGI app.
    from .auth import basic_auth as guard
    from .auth import serve_wsgi

    return serve_wsgi(host, port, guard(make_wsgi_app(registry), *basic_auth))

"""A real Prometheus server scrapes the daemon; block latencies come back through its query API."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from .service_helpers import LOOPBACK, PROFILE_PARAMS, DaemonProcess, free_port, wait_for

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

pytestmark = [
    pytest.mark.slow,  # a profile job plus a Prometheus start: ~35 s on a busy 2-core machine
    pytest.mark.skipif(
        not Path(PROMETHEUS).exists(),
        reason="the prometheus server is not installed (Debian package `prometheus`)",
    ),
]


def query(port: int, promql: str) -> list[dict]:
    url = f"http://{LOOPBACK}:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as r:
        doc = json.load(r)
    assert doc["status"] == "success", doc
    return doc["data"]["result"]


def test_prometheus_reads_block_latencies(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path / "state").start()
    prom = None
    try:
        with daemon.client() as c:
            job = c.submit("profile", **PROFILE_PARAMS)
            assert c.wait(job["id"], 180)["status"] == "done"
            profile = c.result(job["id"])["result"]
        metrics = urllib.parse.urlparse(daemon.info["metrics"])
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: prunerd\n    static_configs:\n"
            f"      - targets: ['{LOOPBACK}:{metrics.port}']\n"
        )
        log = (tmp_path / "prometheus.log").open("wb")
        prom = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address={LOOPBACK}:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def scraped() -> list[dict] | None:
            if prom.poll() is not None:
                raise RuntimeError((tmp_path / "prometheus.log").read_text())
            try:
                return query(port, 'prunerd_block_latency_seconds{model="resnet20"}') or None
            except OSError:
                return None  # not listening yet

        series = wait_for(scraped, 60, 0.5)
        got = {s["metric"]["block"]: float(s["value"][1]) for s in series}
        want = {b["name"]: b["latency_s"] for b in profile["blocks"]}
        assert got.keys() == want.keys()
        for name, seconds in want.items():
            assert got[name] == pytest.approx(seconds, rel=1e-9), name
        assert {s["metric"]["device"] for s in series} == {"cpu"}
        assert {s["metric"]["batch"] for s in series} == {"1"}
        total = query(port, 'sum(prunerd_jobs_total{kind="profile",status="done"})')
        assert float(total[0]["value"][1]) == 1.0
        up = query(port, 'up{job="prunerd"}')
        assert float(up[0]["value"][1]) == 1.0
    finally:
        if prom is not None:
            prom.terminate()
            try:
                prom.wait(20)
            except subprocess.TimeoutExpired:
                prom.kill()
        daemon.stop()

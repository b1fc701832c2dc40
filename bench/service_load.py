"""Load figures of the daemon: request round trip, deployment-sample ingest rate, /metrics scrape time.

    python bench/service_load.py [--requests 5000] [--samples 2000000] [--out bench/results/service_load.md]

Starts `prunerd serve` on free 127.0.0.1 ports in a temporary state dir, then:

1. round trip: sequential ``ping`` and ``status`` requests from one client, p50/p99 in microseconds;
2. ingest: one process reports ``--samples`` latencies through service.monitor as fast as it
   can; the rate is samples / (first send .. daemon has counted them all), and the test of
   "none lost" is the daemon's ``prunerd_ingest_samples_total`` against what the monitor sent
   (its queue stays below the high-water mark, so nothing may be dropped);
3. scrape: 1,000 ``prunerd_block_latency_seconds`` series in the store, GET /metrics p50/p99.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from profiler import cpu_model  # noqa: E402
from service.client import Client  # noqa: E402
from service.jobs import JobStore  # noqa: E402
from service.monitor import Monitor  # noqa: E402


def start_daemon(state: Path) -> tuple[subprocess.Popen[bytes], dict]:
    args = ["--host", "127.0.0.1", "--state-dir", str(state), "--log-level", "WARNING"]
    for name in ("rpc", "events", "ingest", "metrics"):
        args += [f"--{name}-port", "0"]
    proc = subprocess.Popen([sys.executable, "-m", "service.commands.serve", *args], cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            info = json.loads((state / "daemon.json").read_text())
            if info["pid"] == proc.pid:
                return proc, info
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("daemon did not start")


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def round_trip(client: Client, n: int, op: str, **fields: object) -> dict[str, float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        client.request(op, **fields)
        times.append(time.perf_counter() - t)
    return {"p50_us": 1e6 * percentile(times, 0.5), "p99_us": 1e6 * percentile(times, 0.99), "n": n}


def metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url, timeout=30).read().decode()
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def ingest(info: dict, samples: int, batch: int) -> dict[str, float]:
    # hwm counts batches: samples / batch of them fit, so the queue never reaches the mark.
    hwm = samples // batch + 10
    m = Monitor("bench", info["ingest"], batch_size=batch, flush_interval_s=3600, hwm=hwm)
    value = 0.0025
    t0 = time.perf_counter()
    for _ in range(samples):
        m.observe(value)
    m.flush()
    send_s = time.perf_counter() - t0
    while metric(info["metrics"], "prunerd_ingest_samples_total") < m.sent:
        time.sleep(0.05)
        if time.perf_counter() - t0 > 300:
            break
    total_s = time.perf_counter() - t0
    counted = metric(info["metrics"], "prunerd_ingest_samples_total")
    out = {
        "samples": samples,
        "batch": batch,
        "sent": m.sent,
        "dropped": m.dropped,
        "counted": counted,
        "observe_us": 1e6 * send_s / samples,
        "rate_per_s": counted / total_s,
    }
    m.close()
    return out


def scrape(info: dict, state: Path, series: int, n: int) -> dict[str, float]:
    store = JobStore(state / "jobs.sqlite")
    for i in range(series):
        store.record_block(f"model{i // 100}", f"layer{i % 100}", "cpu", 1, 1e-4 * (1 + i % 7))
    store.close()
    text = urllib.request.urlopen(info["metrics"], timeout=30).read().decode()
    found = text.count("prunerd_block_latency_seconds{")
    times = []
    for _ in range(n):
        t = time.perf_counter()
        body = urllib.request.urlopen(info["metrics"], timeout=30).read()
        times.append(time.perf_counter() - t)
    return {
        "series": found,
        "bytes": len(body),
        "p50_ms": 1e3 * percentile(times, 0.5),
        "p99_ms": 1e3 * percentile(times, 0.99),
        "mean_ms": 1e3 * statistics.fmean(times),
    }


def report(args: argparse.Namespace, rt: dict, st: dict, ing: dict, sc: dict) -> str:
    cmd = "python bench/service_load.py " + " ".join(sys.argv[1:])
    goal = (
        "met"
        if ing["rate_per_s"] >= 100_000 and ing["dropped"] == 0 and ing["counted"] == ing["sent"]
        else "NOT met"
    )
    return f"""# Daemon load figures (bench/service_load.py)

- Command: `{cmd.strip()}`
- Date: {datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
- Machine: {cpu_model()}, {os.cpu_count()} logical cores, Python {platform.python_version()},
  load average at start {os.getloadavg()[0]:.2f} (the machine is shared; other work was running)
- Daemon and client on the same host over 127.0.0.1 TCP.

## Request round trip (one client, sequential, DEALER -> ROUTER -> reply)

| request | n | p50 | p99 |
| --- | ---: | ---: | ---: |
| ping | {rt["n"]} | {rt["p50_us"]:.0f} us | {rt["p99_us"]:.0f} us |
| status (SQLite read) | {st["n"]} | {st["p50_us"]:.0f} us | {st["p99_us"]:.0f} us |

## Deployment-sample ingest (service.monitor PUSH -> daemon PULL)

| samples | batch | sent | dropped | counted by daemon | observe() cost | ingest rate |
| ---: | ---: | ---: | ---: | ---: | ---: | ---: |
| {ing["samples"]:,} | {ing["batch"]} | {ing["sent"]:,} | {ing["dropped"]:,} | {ing["counted"]:,.0f} | {ing["observe_us"]:.2f} us | {ing["rate_per_s"]:,.0f} samples/s |

Goal (>= 100,000 samples/s, none lost below the high-water mark): **{goal}**.
The rate is end to end: from the first `observe()` until the daemon's
`prunerd_ingest_samples_total` has counted every sample (one sender process, one daemon).

## /metrics scrape

| block-latency series | body | n | p50 | p99 | mean |
| ---: | ---: | ---: | ---: | ---: | ---: |
| {sc["series"]:,} | {sc["bytes"] / 1024:.0f} KiB | {args.scrapes} | {sc["p50_ms"]:.1f} ms | {sc["p99_ms"]:.1f} ms | {sc["mean_ms"]:.1f} ms |
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--samples", type=int, default=2_000_000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "service_load.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="prunerd-bench-") as tmp:
        state = Path(tmp) / "state"
        proc, info = start_daemon(state)
        try:
            with Client(info["rpc"], info["events"]) as c:
                round_trip(c, 200, "ping")  # warm-up
                rt = round_trip(c, args.requests, "ping")
                job = c.submit("selftest", seconds=0.0, steps=1)
                st = round_trip(c, args.requests, "status", job_id=job["id"])
            ing = ingest(info, args.samples, args.batch)
            sc = scrape(info, state, args.series, args.scrapes)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    text = report(args, rt, st, ing, sc)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Load and abuse figures of the daemon: round trip against a plain echo server, ingest rate,
/metrics scrape time, and daemon memory and ping latency under an ingest flood and a job flood.

    python bench/service_load.py [--requests 1000] [--rounds 8] [--samples 2000000]
                                 [--flood-mb 700] [--flood-jobs 1000] [--out bench/results/service_load.md]

Starts `prunerd serve` on free 127.0.0.1 ports in a temporary state dir, then:

1. round trip: sequential ``ping`` and ``status`` requests from one client, interleaved round
   by round with the same ``ping`` sent to a plain ROUTER that decodes and answers JSON in a
   process of its own (the floor a Python daemon can reach), so that load from other work
   on the machine hits both alike; p50/p99 in microseconds and the load average per round;
2. ingest: one process reports ``--samples`` latencies through service.monitor as fast as it
   can; the rate is samples / (first send .. daemon has counted them all), and the test of
   "none lost" is the daemon's ``prunerd_ingest_samples_total`` against what the monitor sent;
3. scrape: 1,000 ``prunerd_block_latency_seconds`` series in the store, GET /metrics p50/p99;
4. abuse (a second daemon, CurveZMQ on, two operator keys): "mallory" sends ``--flood-mb`` of
   deployment samples from four processes, then ``--flood-jobs`` submits without reading the
   replies, while "alice" pings and runs a job of her own; daemon RSS growth (peak over the
   idle baseline), alice's ping p50/p99, and whether her job was failed by mallory's traffic.
   Goals: RSS growth <= 200 MB, ping p99 <= 50 ms, alice's jobs all done.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from profiler import cpu_model  # noqa: E402
from service import protocol as p  # noqa: E402
from service.client import Client  # noqa: E402
from service.jobs import JobStore  # noqa: E402
from service.monitor import Monitor  # noqa: E402

SPAWN = multiprocessing.get_context("spawn")


def start_daemon(state: Path, *extra: str) -> tuple[subprocess.Popen[bytes], dict]:
    args = ["--host", "127.0.0.1", "--state-dir", str(state), "--log-level", "WARNING", *extra]
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


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def load1() -> float:
    return os.getloadavg()[0]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return 1024 * int(next(line for line in f if line.startswith("VmRSS:")).split()[1])


# --------------------------------------------------------------------------- round trip


def echo_server(queue: multiprocessing.Queue) -> None:
    """A plain ROUTER that decodes each request and answers it in JSON: the floor to compare with."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.linger = 0
    s.bind("tcp://127.0.0.1:*")
    queue.put(s.last_endpoint.decode())
    while True:
        route, body = s.recv_multipart()
        doc = json.loads(body)
        reply = {"v": 1, "ok": True, "op": doc.get("op"), "req_id": doc.get("req_id"), "data": {}}
        s.send_multipart([route, json.dumps(reply).encode()])


def timed(client: Client, n: int, op: str, **fields: object) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        client.request(op, **fields)
        times.append(time.perf_counter() - t)
    return times


def summary(times: list[float]) -> dict[str, float]:
    return {
        "p50_us": 1e6 * percentile(times, 0.5),
        "p99_us": 1e6 * percentile(times, 0.99),
        "n": len(times),
    }


def round_trips(info: dict, echo: str, rounds: int, n: int) -> dict:
    """Echo, ping and status in turn, ``rounds`` times (the order rotates each round)."""
    pooled: dict[str, list[float]] = {"echo": [], "ping": [], "status": []}
    rows = []
    with Client(info["rpc"], info["events"]) as c, Client(echo) as e:
        job = c.submit("selftest", seconds=0.0, steps=1)
        tests = {
            "echo": lambda: timed(e, n, "ping"),
            "ping": lambda: timed(c, n, "ping"),
            "status": lambda: timed(c, n, "status", job_id=job["id"]),
        }
        for fn in tests.values():
            fn()  # warm-up
        names = list(tests)
        for r in range(rounds):
            load = load1()
            row = {"round": r + 1, "load": load}
            for name in names[r % 3 :] + names[: r % 3]:
                times = tests[name]()
                pooled[name] += times
                row[name] = 1e6 * percentile(times, 0.5)
            rows.append(row)
    out = {name: summary(times) for name, times in pooled.items()}
    out["rows"] = rows
    return out


# --------------------------------------------------------------------------- ingest rate and scrape


def metric(url: str, name: str, auth: str | None = None) -> float:
    req = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    text = urllib.request.urlopen(req, timeout=30).read().decode()
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


# --------------------------------------------------------------------------- abuse


@dataclass
class Keys:
    root: Path

    def server(self) -> Path:
        return self.root / "server.key"

    def secret(self, name: str) -> Path:
        return self.root / f"{name}.key_secret"

    def client(self, info: dict, name: str, timeout_s: float = 30.0) -> Client:
        return Client(info["rpc"], info["events"], timeout_s, self.server(), self.secret(name))


def make_keys(root: Path) -> Keys:
    from zmq.auth import create_certificates

    (root / "operators").mkdir(parents=True)
    for name in ("server", "alice", "mallory"):
        create_certificates(root, name)
    for name in ("alice", "mallory"):
        (root / "operators" / f"{name}.key").write_bytes((root / f"{name}.key").read_bytes())
    return Keys(root)


def curve_socket(
    ctx: zmq.Context, kind: int, endpoint: str, keys_root: str, name: str
) -> zmq.Socket:
    from zmq.auth import load_certificate

    s = ctx.socket(kind)
    s.curve_serverkey = load_certificate(Path(keys_root) / "server.key")[0]
    s.curve_publickey, s.curve_secretkey = load_certificate(Path(keys_root) / f"{name}.key_secret")
    s.connect(endpoint)
    return s


def flood_samples(endpoint: str, keys_root: str, nbytes: int) -> None:
    """One flooding process: valid sample messages just under max_sample_bytes, blocking sends."""
    ctx = zmq.Context()
    s = curve_socket(ctx, zmq.PUSH, endpoint, keys_root, "mallory")
    s.sndhwm = 1000
    msg = p.encode_samples("flood", [0.00123456789] * 4000)  # about 60 KB
    for _ in range(max(1, nbytes // len(msg))):
        s.send(msg)
    s.linger = -1
    s.close()
    ctx.term()  # close() only queues; term() returns once every message is delivered


class Watch(threading.Thread):
    """Samples the daemon's RSS every 20 ms while alice pings it every 10 ms."""

    def __init__(self, pid: int, keys: Keys, info: dict) -> None:
        super().__init__(daemon=True)
        self.pid, self.keys, self.info = pid, keys, info
        self.stop_flag = threading.Event()
        self.peak = rss_bytes(pid)
        self.pings: list[float] = []
        self.unanswered = 0

    def run(self) -> None:
        with self.keys.client(self.info, "alice", 10.0) as c:
            next_rss = 0.0
            while not self.stop_flag.is_set():
                if time.monotonic() >= next_rss:
                    self.peak = max(self.peak, rss_bytes(self.pid))
                    next_rss = time.monotonic() + 0.02
                t = time.perf_counter()
                try:
                    c.ping()
                    self.pings.append(time.perf_counter() - t)
                except Exception:  # noqa: BLE001 - a ping that got no answer is the figure
                    self.unanswered += 1
                time.sleep(0.01)

    def finish(self) -> None:
        self.stop_flag.set()
        self.join()


@dataclass
class FloodResult:
    what: str
    seconds: float
    rss_before: int
    rss_peak: int
    pings: list[float]
    unanswered: int
    detail: dict = field(default_factory=dict)


def watched(name: str, proc: subprocess.Popen[bytes], keys: Keys, info: dict, run) -> FloodResult:
    before = rss_bytes(proc.pid)
    w = Watch(proc.pid, keys, info)
    w.start()
    t = time.perf_counter()
    detail = run()
    seconds = time.perf_counter() - t
    w.finish()
    return FloodResult(name, seconds, before, w.peak, w.pings, w.unanswered, detail)


def ingest_flood(info: dict, keys: Keys, mb: int, senders: int = 4) -> dict:
    url = info["metrics"]
    start = metric(url, "prunerd_ingest_samples_total")
    procs = [
        SPAWN.Process(
            target=flood_samples, args=(info["ingest"], str(keys.root), mb * 10**6 // senders)
        )
        for _ in range(senders)
    ]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join()
    msg = len(p.encode_samples("flood", [0.00123456789] * 4000))
    expected = senders * max(1, mb * 10**6 // senders // msg) * 4000
    deadline = time.monotonic() + 600
    while (
        metric(url, "prunerd_ingest_samples_total") - start < expected
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    counted = metric(url, "prunerd_ingest_samples_total") - start
    return {
        "mb": senders * (mb * 10**6 // senders // msg) * msg / 1e6,
        "samples": expected,
        "counted": counted,
    }


def job_flood(info: dict, keys: Keys, n: int, ckpt: Path) -> dict:
    """mallory sends ``n`` prune submits of about 60 KB each without waiting, then reads replies."""
    options = {f"pad{i}": "x" * 4000 for i in range(15)}
    params = {"model": "resnet20", "checkpoint": str(ckpt), "budget_ratio": 0.5, "options": options}
    s = curve_socket(zmq.Context.instance(), zmq.DEALER, info["rpc"], str(keys.root), "mallory")
    s.sndhwm = n + 10
    payloads = [p.encode_request("submit", str(i), kind="prune", params=params) for i in range(n)]
    for body in payloads:
        s.send(body)
    codes: dict[str, int] = {}
    got = 0
    while got < n and s.poll(20_000, zmq.POLLIN):
        reply = json.loads(s.recv())
        code = "ok" if reply["ok"] else reply["error"]["code"]
        codes[code] = codes.get(code, 0) + 1
        got += 1
    s.close(linger=0)
    return {"bytes": len(payloads[0]), "codes": codes, "unanswered": n - got}


def abuse(args: argparse.Namespace, tmp: Path) -> dict:
    keys = make_keys(tmp / "keys")
    (tmp / "models").mkdir()
    ckpt = tmp / "models" / "ckpt.pt"
    ckpt.write_bytes(b"placeholder: the flood's jobs are mallory's own to fail")
    proc, info = start_daemon(
        tmp / "abuse-state",
        "--server-secret-key",
        str(keys.root / "server.key_secret"),
        "--authorized-keys-dir",
        str(keys.root / "operators"),
        "--path-root",
        str(tmp / "models"),
    )
    try:
        with keys.client(info, "alice") as alice:
            for _ in range(200):
                alice.ping()
            quiet = watched("quiet (no flood)", proc, keys, info, lambda: time.sleep(5))
            first = alice.submit("selftest", seconds=3.0, steps=30)
            flood = watched(
                f"ingest flood ({args.flood_mb} MB)",
                proc,
                keys,
                info,
                lambda: ingest_flood(info, keys, args.flood_mb),
            )
            second = alice.submit("selftest", seconds=1.0, steps=10)
            jobs = watched(
                f"job flood ({args.flood_jobs} submits)",
                proc,
                keys,
                info,
                lambda: job_flood(info, keys, args.flood_jobs, ckpt),
            )
            alice_jobs = [alice.wait(j["id"], 900)["status"] for j in (first, second)]
    finally:
        stop(proc)
    return {"runs": [quiet, flood, jobs], "alice_jobs": alice_jobs}


# --------------------------------------------------------------------------- report


def us(x: float) -> str:
    return f"{x:.0f} us"


def round_trip_section(rt: dict) -> str:
    ratio = rt["ping"]["p50_us"] / rt["echo"]["p50_us"]
    rows = "\n".join(
        f"| {r['round']} | {r['load']:.2f} | {us(r['echo'])} | {us(r['ping'])} | {us(r['status'])} |"
        for r in rt["rows"]
    )
    goal = "met" if ratio <= 1.5 else "NOT met"
    return f"""## Request round trip (one client, sequential, DEALER -> ROUTER -> reply)

The echo server is a plain ROUTER in its own process that decodes each request and answers
it in JSON; the same client code times it and the daemon, round by round in turn.

| request | n | p50 | p99 |
| --- | ---: | ---: | ---: |
| echo (plain ROUTER, JSON) | {rt["echo"]["n"]} | {us(rt["echo"]["p50_us"])} | {us(rt["echo"]["p99_us"])} |
| daemon ping | {rt["ping"]["n"]} | {us(rt["ping"]["p50_us"])} | {us(rt["ping"]["p99_us"])} |
| daemon status (SQLite read) | {rt["status"]["n"]} | {us(rt["status"]["p50_us"])} | {us(rt["status"]["p99_us"])} |

Ping p50 / echo p50 = **{ratio:.2f}** (goal <= 1.5: **{goal}**).

| round | load (1 min) | echo p50 | ping p50 | status p50 |
| ---: | ---: | ---: | ---: | ---: |
{rows}
"""


def abuse_section(ab: dict) -> str:
    lines = []
    for r in ab["runs"]:
        growth = (r.rss_peak - r.rss_before) / 1e6
        p50 = 1e3 * percentile(r.pings, 0.5) if r.pings else float("nan")
        p99 = 1e3 * percentile(r.pings, 0.99) if r.pings else float("nan")
        lines.append(
            f"| {r.what} | {r.seconds:.1f} s | {r.rss_before / 1e6:.0f} MB | {growth:+.0f} MB | "
            f"{len(r.pings)} | {r.unanswered} | {p50:.2f} ms | {p99:.2f} ms |"
        )
    floods = ab["runs"][1:]
    worst_growth = max((r.rss_peak - r.rss_before) / 1e6 for r in floods)
    worst_p99 = max(1e3 * percentile(r.pings, 0.99) for r in floods if r.pings)
    unanswered = sum(r.unanswered for r in floods)
    jobs_ok = all(s == "done" for s in ab["alice_jobs"])
    goal = (
        "met"
        if worst_growth <= 200 and worst_p99 <= 50 and jobs_ok and unanswered == 0
        else "NOT met"
    )
    ing, jf = ab["runs"][1].detail, ab["runs"][2].detail
    table = "\n".join(lines)
    return f"""## Abuse: ingest flood and job flood (CurveZMQ on, default limits)

"mallory" (an operator key) floods; "alice" (another operator key) pings every 10 ms
and has two jobs in the queue; the daemon's RSS is sampled every 20 ms. A ping every 10 ms
(CURVE, both processes waking from idle each time) is slower than the back-to-back round
trip above; the quiet row is its baseline.

| phase | wall | RSS before | RSS peak growth | alice's pings | unanswered | ping p50 | ping p99 |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{table}

- Ingest flood: {ing["mb"]:.0f} MB of sample messages (4 processes, 4,000 samples = 60 KB each),
  {ing["counted"]:,.0f} of {ing["samples"]:,} samples counted.
- Job flood: {sum(jf["codes"].values()) + jf["unanswered"]} prune submits of {jf["bytes"] / 1e3:.0f} KB
  sent without reading; replies by code {jf["codes"]}, {jf["unanswered"]} unanswered (replies past
  the request socket's per-peer queue are dropped: mallory's loss, not alice's).
- alice's jobs: {", ".join(ab["alice_jobs"])}.

Goal (RSS growth <= 200 MB, ping p99 <= 50 ms, no job of alice failed): **{goal}**.
"""


def report(
    args: argparse.Namespace, rt: dict, ing: dict, sc: dict, ab: dict | None, loads: list[float]
) -> str:
    cmd = "python bench/service_load.py " + " ".join(sys.argv[1:])
    goal = (
        "met"
        if ing["rate_per_s"] >= 100_000 and ing["dropped"] == 0 and ing["counted"] == ing["sent"]
        else "NOT met"
    )
    text = f"""# Daemon load figures (bench/service_load.py)

- Command: `{cmd.strip()}`
- Date: {datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
- Machine: {cpu_model()}, {os.cpu_count()} logical cores, Python {platform.python_version()}
- Load average (1 min) at start {loads[0]:.2f}, at the end {loads[-1]:.2f}: the machine is
  shared, other work was running; the per-round table shows the load each round ran under.
- Daemon and client on the same host over 127.0.0.1 TCP.

{round_trip_section(rt)}
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
    if ab is not None:
        text += "\n" + abuse_section(ab)
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1000, help="requests per kind and round")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--samples", type=int, default=2_000_000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--flood-mb", type=int, default=700)
    ap.add_argument("--flood-jobs", type=int, default=1000)
    ap.add_argument("--no-abuse", action="store_true", help="skip the flood section")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "service_load.md")
    args = ap.parse_args()
    loads = [load1()]
    queue = SPAWN.Queue()
    echo = SPAWN.Process(target=echo_server, args=(queue,), daemon=True)
    echo.start()
    echo_endpoint = queue.get(timeout=60)
    with tempfile.TemporaryDirectory(prefix="prunerd-bench-") as tmp:
        state = Path(tmp) / "state"
        proc, info = start_daemon(state)
        try:
            rt = round_trips(info, echo_endpoint, args.rounds, args.requests)
            ing = ingest(info, args.samples, args.batch)
            sc = scrape(info, state, args.series, args.scrapes)
        finally:
            stop(proc)
            echo.terminate()
        ab = None if args.no_abuse else abuse(args, Path(tmp))
    loads.append(load1())
    text = report(args, rt, ing, sc, ab, loads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

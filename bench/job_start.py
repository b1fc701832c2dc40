"""How long a daemon job takes from submit to done, by how its worker starts.

    python bench/job_start.py [--rounds 10] [--out bench/results/job_start.md]

Starts two `prunerd serve` daemons on free 127.0.0.1 ports, one with
``--worker-start forkserver`` (the default) and one with ``--worker-start spawn``, and
submits the same jobs to each in turn, the order alternating round by round so load from
elsewhere hits both alike:

- ``selftest`` with one step of 0 s: the worker's start and exit, nothing else;
- ``profile`` of resnet20 at 1x8x8, batch 1: a small real job (its pieces come from the
  latency table after the first round, which is left out of the figures).

Each figure is the client's wall time from ``submit`` until the job's stored record says
it finished, and the job's own ``started_at``..``finished_at`` as the daemon recorded it.
The resident memory of each daemon and of its forkserver is read at the end, and each
daemon's start (launch until its endpoints file is written) is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from service.client import Client

STARTS = ("forkserver", "spawn")
JOBS = {
    "selftest": {"steps": 1, "seconds": 0.0},
    "profile": {"model": "resnet20", "in_channels": 1, "input_size": [8, 8], "batch_size": 1},
}


def start_daemon(state: Path, start: str) -> tuple[subprocess.Popen[bytes], dict, float]:
    """The daemon, its endpoints, and seconds from launch until it wrote them."""
    t = time.perf_counter()
    ports = ("--rpc-port", "0", "--events-port", "0", "--ingest-port", "0", "--metrics-port", "0")
    cmd = ["prunerd", "serve", "--state-dir", str(state), "--worker-start", start, *ports]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            info = json.loads((state / "daemon.json").read_text())
            if info.get("pid") == proc.pid:
                return proc, info, time.perf_counter() - t
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    proc.kill()
    raise RuntimeError(f"daemon ({start}) did not start")


def run_job(client: Client, kind: str) -> tuple[float, float]:
    """(client wall seconds, the job's own started..finished seconds)."""
    t = time.perf_counter()
    job = client.submit(kind, **JOBS[kind])
    while (record := client.status(job["id"])["job"])["status"] in ("queued", "running"):
        time.sleep(0.01)
    wall = time.perf_counter() - t
    if record["status"] != "done":
        raise RuntimeError(f"{kind} job {job['id']}: {record['status']}: {record.get('error')}")
    return wall, record["finished_at"] - record["started_at"]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1]) / 1024


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def forkserver_of(pid: int) -> int | None:
    for child in children(pid):
        if b"forkserver" in Path(f"/proc/{child}/cmdline").read_bytes():
            return child
    return None


def measure(rounds: int) -> tuple[dict, dict, list[float]]:
    times: dict = {(s, k): ([], []) for s in STARTS for k in JOBS}
    memory: dict = {}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        daemons = {s: start_daemon(Path(tmp) / s, s) for s in STARTS}
        try:
            clients = {s: Client(d[1]["rpc"], timeout_s=120) for s, d in daemons.items()}
            time.sleep(3)  # the forkserver imports in the background: let it finish first
            for r in range(rounds + 1):
                order = STARTS if r % 2 == 0 else STARTS[::-1]
                for kind in JOBS:
                    for s in order:
                        wall, own = run_job(clients[s], kind)
                        if r > 0:  # round 0 fills the latency table and warms the caches
                            times[s, kind][0].append(wall)
                            times[s, kind][1].append(own)
                loads.append(os.getloadavg()[0])
                print(f"round {r}/{rounds}", file=sys.stderr)
            for s, (proc, _, started_s) in daemons.items():
                fs = forkserver_of(proc.pid)
                memory[s] = (rss_mib(proc.pid), None if fs is None else rss_mib(fs), started_s)
            for c in clients.values():
                c.close()
        finally:
            for proc, _, _ in daemons.values():
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    return times, memory, loads


def render(times: dict, memory: dict, loads: list[float], rounds: int) -> str:
    info = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")),
        platform.processor(),
    )
    lines = [
        "# Daemon job start: forkserver vs spawn workers",
        "",
        f"- Command: `python bench/job_start.py --rounds {rounds}`",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}",
        f"- Load average (1 min) per round: min {min(loads):.2f}, max {max(loads):.2f}",
        f"- {rounds} rounds after a warm-up round, the two daemons alternating first",
        "",
        "| job | worker start | submit to done, median (min..max) s | job's own run, median s |",
        "|---|---|---|---|",
    ]
    for kind in JOBS:
        for s in STARTS:
            wall, own = times[s, kind]
            lines.append(
                f"| {kind} | {s} | {statistics.median(wall):.3f} ({min(wall):.3f}..{max(wall):.3f})"
                f" | {statistics.median(own):.3f} |"
            )
    lines += [
        "",
        "| worker start | daemon start s | daemon RSS MiB | forkserver RSS MiB |",
        "|---|---|---|---|",
    ]
    for s, (daemon, fs, started_s) in memory.items():
        fs_mib = "-" if fs is None else f"{fs:.0f}"
        lines.append(f"| {s} | {started_s:.2f} | {daemon:.0f} | {fs_mib} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results/job_start.md")
    args = ap.parse_args()
    times, memory, loads = measure(args.rounds)
    text = render(times, memory, loads, args.rounds)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

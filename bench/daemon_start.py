"""A daemon's start time and memory, this tree against another checkout of prunerd.

    git worktree add /tmp/old <commit>
    python bench/daemon_start.py --old /tmp/old [--rounds 5] [--out bench/results/daemon_start.md]

Starts ``python -m service.commands.serve`` from each tree (its own code on PYTHONPATH,
free 127.0.0.1 ports, a new state dir), alternating which goes first round by round, and
times the launch until the daemon has written its endpoints file (it is serving then);
reads its resident memory at that moment. Between starts it waits for the daemon's
forkserver to finish importing, so one start's imports do not slow the next.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
PORTS = ("--rpc-port", "0", "--events-port", "0", "--ingest-port", "0", "--metrics-port", "0")


def start_once(root: Path) -> tuple[float, float]:
    """(seconds to serving, resident MiB then) of a daemon run from the tree ``root``."""
    with tempfile.TemporaryDirectory() as tmp:
        info = Path(tmp, "state", "daemon.json")
        env = {**os.environ, "PYTHONPATH": str(root)}
        cmd = [sys.executable, "-m", "service.commands.serve", "--state-dir", str(info.parent)]
        t = time.perf_counter()
        proc = subprocess.Popen(
            [*cmd, *PORTS], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            while True:
                try:
                    if json.loads(info.read_text()).get("pid") == proc.pid:
                        break
                except (OSError, ValueError):
                    pass
                if proc.poll() is not None:
                    raise RuntimeError(f"the daemon from {root} exited with {proc.returncode}")
                time.sleep(0.005)
            started = time.perf_counter() - t
            status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            rss = int(next(ln for ln in status if ln.startswith("VmRSS:")).split()[1]) / 1024
            time.sleep(2.5)  # its forkserver imports torch meanwhile
        finally:
            proc.terminate()
            proc.wait(60)
    return started, rss


def render(results: dict[str, list[tuple[float, float]]], old: Path, rounds: int) -> str:
    commit = subprocess.run(
        ["git", "-C", str(old), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    lines = [
        "# Daemon start: this tree against another checkout",
        "",
        f"- Command: `python bench/daemon_start.py --old {old} --rounds {rounds}` (the other "
        f"checkout at {commit or 'unknown'})",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average {os.getloadavg()[0]:.2f}",
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical "
        f"cores, Python {platform.python_version()}",
        "",
        "| tree | launch to serving, median (each) s | resident MiB when serving |",
        "|---|---|---|",
    ]
    for name, runs in results.items():
        each = ", ".join(f"{s:.2f}" for s, _ in runs)
        rss = statistics.median(r for _, r in runs)
        lines.append(
            f"| {name} | {statistics.median(s for s, _ in runs):.3f} ({each}) | {rss:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="another checkout of prunerd")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "bench/results/daemon_start.md")
    args = ap.parse_args()
    trees = {"this tree": HERE, "other": args.old.resolve()}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    for r in range(args.rounds):
        for name in list(trees) if r % 2 == 0 else list(trees)[::-1]:
            results[name].append(start_once(trees[name]))
    text = render(results, args.old, args.rounds)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

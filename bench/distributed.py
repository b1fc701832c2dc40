"""Training throughput with torch.distributed: `prunerd train` in one process and in two (gloo).

Each run is the installed `prunerd train` on Fashion-MNIST (one pass over
``--images`` training images, the command's defaults otherwise) in a fresh
subprocess, in three set-ups that use the same two cores:

- ``1x2``: one process, two intra-op threads (``--threads 2``);
- ``2x1``: two processes of one thread each (``--nproc-per-node 2 --threads 1``),
  DDP under torchrun's elastic agent, gloo; the batch of 128 is shared, 64 each;
- ``1x1``: one process, one thread (what each of the two ranks would do alone).

Images/s is training images over the training time `prunerd train --json`
reports (``fit.seconds``: the pass itself, without start-up, data loading, test
evaluation or the checkpoint); the command's wall time, start-up included, is
kept beside it. The set-ups alternate (ABC ABC ...) so load from other processes
on a shared machine hits them alike, and ``uptime`` is recorded around every run.
No speed-up is expected on two cores: the figure is what the processes, DDP's
gradient all-reduce and gloo cost.

    python bench/distributed.py --images 6000 --rounds 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from profiler import cpu_model

SETUPS = {
    "1x2": ["--threads", "2"],
    "2x1": ["--threads", "1", "--nproc-per-node", "2"],
    "1x1": ["--threads", "1"],
}
PRUNERD = shutil.which("prunerd") or str(Path(sys.executable).parent / "prunerd")

# Not yet run on a GPU machine: the command a multi-node run would use (see the results file).
MULTI_NODE = (
    "torchrun --nnodes 2 --nproc-per-node gpu --rdzv-backend c10d "
    "--rdzv-endpoint NODE0:29400 --rdzv-id prunerd-resnet20 \\\n"
    "    $(which prunerd) train resnet20 --data fashion-mnist --device cuda "
    "--batch-size 1024 --lr 0.4 --epochs 40 --out resnet20_fmnist.pt"
)


def load_average() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def one_run(setup: str, args: argparse.Namespace, out: Path) -> dict:
    """One `prunerd train` of one pass in ``setup``; its images/s and wall time."""
    out.unlink(missing_ok=True)
    cmd = [PRUNERD, "train", args.model, "--data", "fashion-mnist", "--epochs", "1",
           "--limit", str(args.images), "--out", str(out), "--json", *SETUPS[setup]]  # fmt: skip
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    before = load_average()
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout)
    images = result["dataset"]["train_size"]
    seconds = result["fit"]["seconds"]
    return {
        "setup": setup,
        "train_images": images,
        "fit_seconds": seconds,
        "images_per_s": images / seconds,
        "wall_s": wall,
        "test_accuracy": result["test"]["accuracy"],
        "uptime_before": before,
        "uptime_after": load_average(),
    }


def run(args: argparse.Namespace) -> dict:
    runs = []
    before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        # One untimed run first: the dataset files and the Python modules into the page cache.
        one_run("1x1", argparse.Namespace(**{**vars(args), "images": 256}), Path(tmp) / "w.pt")
        for r in range(args.rounds):
            for setup in SETUPS:
                row = {"round": r, **one_run(setup, args, Path(tmp) / "speed.pt")}
                runs.append(row)
                print(
                    f"round {r} {setup}: {row['images_per_s']:7.1f} images/s "
                    f"(fit {row['fit_seconds']:.1f} s, wall {row['wall_s']:.1f} s) "
                    f"| {row['uptime_after']}",
                    flush=True,
                )
    return {
        "command": "python " + " ".join(sys.argv),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "model": args.model,
        "images": args.images,
        "uptime_before": before,
        "uptime_after": load_average(),
        "runs": runs,
        **summary(runs),
    }


def summary(runs: list[dict]) -> dict:
    """Median images/s per set-up, and the median over rounds of each set-up's ratio to the
    1x2 and the 1x1 run of the same round (they ran back to back, under the same load)."""
    rate = {s: [x["images_per_s"] for x in runs if x["setup"] == s] for s in SETUPS}
    ratio = {
        base: {s: statistics.median(b / a for a, b in zip(rate[base], rate[s])) for s in SETUPS}
        for base in ("1x2", "1x1")
    }
    return {
        "median_images_per_s": {s: statistics.median(v) for s, v in rate.items()},
        "median_ratio_to": ratio,
        "median_wall_s": {
            s: statistics.median(x["wall_s"] for x in runs if x["setup"] == s) for s in SETUPS
        },
    }


def markdown(res: dict) -> str:
    res = {**res, **summary(res["runs"])}
    med, ratio, wall = res["median_images_per_s"], res["median_ratio_to"], res["median_wall_s"]
    lines = [
        "# Training with torch.distributed: one process against two (gloo, CPU)",
        "",
        f"- command: `{res['command']}`",
        f"- date: {res['date']}",
        f"- machine: {res['cpu']}, {res['logical_cpus']} logical CPUs, {res['platform']}",
        f"- torch {res['torch']}; `prunerd train {res['model']} --data fashion-mnist --epochs 1 "
        f"--limit {res['images']}` (batch 128, augmentation, warm-up + cosine)",
        f"- load before: `{res['uptime_before']}`",
        f"- load after: `{res['uptime_after']}`",
        "- shared machine: a background training job and other engineers' tests ran beside it. "
        "The set-ups alternate (1x2, 2x1, 1x1 in every round), so load hits them alike; "
        "`uptime` after each run is in the table.",
        "- 1x2: one process, `--threads 2`; 2x1: `--nproc-per-node 2 --threads 1` (DDP, gloo, "
        "64 images of each batch of 128 per rank); 1x1: one process, `--threads 1`.",
        "- images/s: training images / `fit.seconds` of `--json` (the pass only); wall: the "
        "whole command, start-up, data loading, test evaluation and checkpoint included.",
        "",
        "| round | set-up | images/s | / 1x2 of the round | fit s | wall s | load after (1, 5, 15 min) |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    first = {x["round"]: x["images_per_s"] for x in res["runs"] if x["setup"] == "1x2"}
    for x in res["runs"]:
        load = x["uptime_after"].split("load average:")[-1].strip()
        lines.append(
            f"| {x['round']} | {x['setup']} | {x['images_per_s']:.1f} | "
            f"{x['images_per_s'] / first[x['round']]:.3f} | {x['fit_seconds']:.1f} | "
            f"{x['wall_s']:.1f} | {load} |"
        )
    lines += [
        "",
        "| set-up | median images/s | / 1x2 (median over rounds) | / 1x1 (median over rounds) "
        "| median wall s |",
        "|---|---:|---:|---:|---:|",
    ]
    for s, v in med.items():
        lines.append(
            f"| {s} | {v:.1f} | {ratio['1x2'][s]:.3f} | {ratio['1x1'][s]:.3f} | {wall[s]:.1f} |"
        )
    lines += [
        "",
        "No speed-up is expected on two cores: two processes of one thread use the cores one "
        "process of two threads would. The 2x1 / 1x1 ratio is what a second rank adds when it "
        "gets a core of its own, net of DDP on gloo (an all-reduce of resnet20's gradients, "
        "0.27 M parameters, every step, and the sums of each epoch's figures); the difference "
        "in wall time is the start of the elastic agent, the second interpreter and the "
        "rendezvous. The 1x2 runs show what two intra-op threads do beside a busy "
        "neighbour: every parallel region waits for the thread that shares its core with the "
        "background job, so one process of two threads is far slower than one of one thread "
        "there; on a quiet machine 1x2 is the figure 2x1 would be compared with.",
        "",
        *[f"Note: {n}" for n in res.get("notes", [])],
        "",
        "## Several GPUs and nodes (not yet checked on a GPU)",
        "",
        "On each of the nodes, one process per GPU, NCCL (`--device cuda` selects it and gives "
        "each rank the GPU of its LOCAL_RANK); `--batch-size` is the global batch, so scale "
        "it and `--lr` together:",
        "",
        "```",
        MULTI_NODE,
        "```",
        "",
        "On one node, `prunerd train ... --device cuda --nproc-per-node N` starts the same "
        "processes without torchrun. This command has not been run on a GPU machine yet.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--images", type=int, default=6000, help="training images per run")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the three set-ups")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", type=Path, default=Path("bench/results/distributed.md"))
    p.add_argument(
        "--render", action="store_true", help="write the markdown of the existing OUT .json again"
    )
    args = p.parse_args()
    if args.render:
        res = json.loads(args.out.with_suffix(".json").read_text())
        args.out.write_text(markdown(res))
        print(markdown(res))
        return
    res = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(res))
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    print(markdown(res))


if __name__ == "__main__":
    main()

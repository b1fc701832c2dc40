"""Training throughput: `prunerd train`'s training loop against a plain PyTorch loop.

Both train the same model (fresh, same seed) on the same Fashion-MNIST images
with the same batch size and intra-op threads, one pass each, alternating
A/B/A/B so load from other processes on a shared machine hits both alike.

- plain: the minimal loop. Normalised float32 images in memory, a shuffled
  index per batch, ``F.cross_entropy``, ``torch.optim.SGD`` (Nesterov, weight
  decay), no augmentation, no schedule, nothing printed.
- prunerd: :func:`pruner.baselines.fit_config`, what ``prunerd train`` calls to
  train (and nothing else: the test evaluation and checkpoint write that
  follow are not timed), with ``prunerd train``'s defaults: uint8 images
  batched and normalised on the fly, random crop and flip on whole batches,
  warm-up + cosine schedule, label smoothing, the progress bar and the resume
  file written after the epoch.

Images/s counts training images per second of wall time. The figure that
matters is the ratio within each adjacent pair (they share the load), and
their median.

    python bench/train_speed.py --images 10000 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from profiler import ModelSpec, build_model, cpu_model
from pruner import DataBundle, TrainConfig, fit_config, load_training_data


def plain_epoch(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig
) -> None:
    """One pass of the minimal loop over float32 ``x`` (N, C, H, W) and int64 ``y`` (N,)."""
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=True,
        weight_decay=config.weight_decay,
    )
    model.train()
    order = torch.randperm(len(y))
    for start in range(0, len(y), config.batch_size):
        idx = order[start : start + config.batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def in_memory(bundle: DataBundle) -> tuple[torch.Tensor, torch.Tensor]:
    """The train split as the plain loop holds it: normalised float32, all in memory."""
    train = bundle.train
    x = train.normalise(train.images)
    return x.contiguous(), train.labels


def fresh_model(bundle: DataBundle, config: TrainConfig) -> torch.nn.Module:
    info = bundle.info
    torch.manual_seed(config.seed)
    return build_model(ModelSpec(config.model, info.in_channels, info.num_classes, info.input_size))


def time_plain(bundle: DataBundle, config: TrainConfig, data: tuple) -> float:
    model = fresh_model(bundle, config)
    t0 = time.perf_counter()
    plain_epoch(model, *data, config)
    return time.perf_counter() - t0


def time_prunerd(bundle: DataBundle, config: TrainConfig, state_dir: Path) -> float:
    model = fresh_model(bundle, config)
    state = state_dir / "speed.pt.state"
    state.unlink(missing_ok=True)
    t0 = time.perf_counter()
    fit_config(model, bundle, config, state_path=state, progress=True)
    return time.perf_counter() - t0


def load_average() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    config = TrainConfig(
        model=args.model,
        data="fashion-mnist",
        out="",
        epochs=1,
        batch_size=args.batch_size,
        limit=args.images,
        data_root=args.data_root,
        threads=args.threads,
    )
    bundle = load_training_data(config)
    n = bundle.train.num_samples
    plain_data = in_memory(bundle)
    before = load_average()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        # One untimed pass each first: oneDNN primitive caches, allocator, page faults.
        time_plain(bundle, config, (plain_data[0][:512], plain_data[1][:512]))
        for r in range(args.rounds):
            for kind in ("plain", "prunerd"):
                s = (
                    time_plain(bundle, config, plain_data)
                    if kind == "plain"
                    else time_prunerd(bundle, config, Path(tmp))
                )
                runs.append({"round": r, "kind": kind, "seconds": s, "images_per_s": n / s})
                print(f"round {r} {kind:8s} {s:7.2f} s  {n / s:7.1f} images/s", flush=True)
        profile = profile_prunerd(bundle, config, Path(tmp), args.profile) if args.profile else []
    after = load_average()
    res = summarise(args, config, n, runs, before, after)
    res["profile"] = profile
    return res


def profile_prunerd(bundle: DataBundle, config: TrainConfig, state_dir: Path, top: int) -> list:
    """cProfile of one more prunerd pass: the ``top`` functions by own time (seconds)."""
    profiler = cProfile.Profile()
    profiler.enable()
    time_prunerd(bundle, config, state_dir)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    return [
        {"function": pstats.func_std_string(func), "calls": nc, "own_s": tt, "share": tt / total}
        for func, (_, nc, tt, _, _) in rows
    ]


def summarise(
    args: argparse.Namespace, config: TrainConfig, n: int, runs: list[dict], before: str, after: str
) -> dict:
    rate = {k: [r["images_per_s"] for r in runs if r["kind"] == k] for k in ("plain", "prunerd")}
    pairs = [b / a for a, b in zip(rate["plain"], rate["prunerd"])]
    return {
        "command": "python " + " ".join(sys.argv),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": args.threads,
        "model": config.model,
        "batch_size": config.batch_size,
        "train_images": n,
        "uptime_before": before,
        "uptime_after": after,
        "runs": runs,
        "median_images_per_s": {k: statistics.median(v) for k, v in rate.items()},
        "pair_ratios": pairs,
        "median_pair_ratio": statistics.median(pairs),
        "ratio_of_medians": statistics.median(rate["prunerd"]) / statistics.median(rate["plain"]),
        "config": config.to_dict(),
    }


def markdown(res: dict) -> str:
    med = res["median_images_per_s"]
    lines = [
        "# `prunerd train` against a plain PyTorch loop",
        "",
        f"- command: `{res['command']}`",
        f"- date: {res['date']}",
        f"- machine: {res['cpu']}, {res['logical_cpus']} logical CPUs, {res['platform']}",
        f"- torch {res['torch']}, intra-op threads fixed at {res['threads']} for both",
        f"- {res['model']}, batch {res['batch_size']}, one pass over {res['train_images']} "
        "Fashion-MNIST training images per run, fresh model (same seed) each run",
        f"- load before: `{res['uptime_before']}`",
        f"- load after: `{res['uptime_after']}`",
        "- shared machine: other engineers run tests on it. Runs alternate plain / prunerd, so "
        "load hits both alike; the per-pair ratios and their median are the figures.",
        "- plain: float32 images in memory, shuffled index batches, cross-entropy, SGD "
        "(Nesterov, weight decay); no augmentation, no schedule, no output.",
        "- prunerd: `pruner.baselines.fit_config` with `prunerd train`'s defaults (uint8 batches "
        "normalised on the fly, random crop + flip on whole batches, warm-up + cosine, label "
        "smoothing 0.1, progress bar, resume file written after the pass).",
        "",
        "| round | plain (images/s) | prunerd (images/s) | prunerd / plain |",
        "|---:|---:|---:|---:|",
    ]
    plain = [r for r in res["runs"] if r["kind"] == "plain"]
    ours = [r for r in res["runs"] if r["kind"] == "prunerd"]
    for a, b, ratio in zip(plain, ours, res["pair_ratios"]):
        lines.append(
            f"| {a['round']} | {a['images_per_s']:.1f} | {b['images_per_s']:.1f} | {ratio:.3f} |"
        )
    ok = res["median_pair_ratio"] >= 0.9
    lines += [
        f"| median | {med['plain']:.1f} | {med['prunerd']:.1f} | {res['median_pair_ratio']:.3f} |",
        "",
        f"Ratio of the medians: {res['ratio_of_medians']:.3f}. The median of the per-pair "
        "ratios is the figure judged: each pair ran back to back, so it shares the load; the "
        "medians of each kind mix runs from different moments of a shared machine.",
        "",
        f"Goal, prunerd at >= 0.9x the plain loop's images/s (median pair ratio): "
        f"**{'PASS' if ok else 'FAIL'}**",
        "",
    ]
    if res.get("profile"):
        lines += [
            "## Where one prunerd pass spends its time (cProfile, own time)",
            "",
            "| function | calls | own (s) | share |",
            "|---|---:|---:|---:|",
        ]
        for row in res["profile"]:
            name = row["function"].replace("|", "\\|")
            lines.append(f"| `{name}` | {row['calls']} | {row['own_s']:.3f} | {row['share']:.1%} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--images", type=int, default=10000, help="training images per run")
    p.add_argument("--rounds", type=int, default=3, help="A/B pairs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--data-root", default=None)
    p.add_argument(
        "--profile", type=int, default=0, metavar="N", help="also profile one pass: top N functions"
    )
    p.add_argument("--out", type=Path, default=Path("bench/results/train_speed.md"))
    args = p.parse_args()
    res = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(res))
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    print(markdown(res))


if __name__ == "__main__":
    main()

"""How much of a DBP probe gain is signal: the gains' spread against the sample counts.

    python bench/probe_noise.py                       # resnet56 on fashion-mnist, shipped weights
    python bench/probe_noise.py --configs 2000/1000 8000/5000 --repeats 4

The shipped model's blocks are pooled once over ``--pool`` training images and the
whole validation split; each configuration NFIT/NEVAL then draws ``--repeats``
random subsets (NFIT to fit the probes on, NEVAL to score them on) and scores
every block as the pruner does (``score_features``). Three figures per
configuration, in nats of held-out cross-entropy:

- spread: the sample sd of each block's loss gain over the repeats (the fit's noise,
  plus the held-out draw's while NEVAL is below the split's size), median over blocks;
- paired se: the standard error of a gain over its held-out samples, which the
  pruner now records with every score (``BlockScore.loss_gain_se``), median;
- the mean stage-1 gains, where the blocks differ least and the choice is made.

Seconds per scoring are the probes' fit and scoring alone (pooling is reported once,
per 1000 images); they are timings, so run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from compare_methods import utc_now  # bench/ is on sys.path when run as a script
from profiler_figures import machine

from profiler import discover, load_model, read_checkpoint
from profiler.pretrained import pretrained_checkpoint
from pruner import Batches, load_data
from pruner.depth import pooled_features, score_features

OUT = Path(__file__).parent / "results" / "probe_noise"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--configs", nargs="+", default=["2000/1000", "2000/5000", "4000/5000",
                                                    "8000/5000", "16000/5000"])  # fmt: skip
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--pool", type=int, default=20000, help="training images pooled once")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT, help="path prefix of .json/.md")
    return p.parse_args(argv)


def pooled(args: argparse.Namespace) -> tuple[dict, torch.Tensor, dict, torch.Tensor, list, float]:
    """Pooled features of the fit pool and the whole val split, the block order, s per 1000."""
    path = pretrained_checkpoint(args.model, args.data)
    ckpt = read_checkpoint(path)
    model = load_model(ckpt.spec, checkpoint=path).eval()
    data = load_data(args.data, batch_size=128, seed=0)
    norm = (ckpt.meta or {}).get("normalisation")
    train, val = data.train, data.val
    if norm:  # the statistics the model was trained with
        train = Batches(
            train.images, train.labels, norm["mean"], norm["std"], 128, shuffle=True, seed=0
        )
        val = Batches(val.images, val.labels, norm["mean"], norm["std"], 128)
    x0, _ = next(iter(val))
    bg = discover(model, x0[:1])
    order_of = {n.name: i for i, n in enumerate(bg.gm.graph.nodes)}
    blocks = sorted(bg.blocks, key=lambda b: order_of[b.output_node])
    t = time.perf_counter()
    fx_, fy = pooled_features(bg.gm, blocks, train, args.pool)
    ex, ey = pooled_features(bg.gm, blocks, val, None)
    per_1000 = (time.perf_counter() - t) / (len(fy) + len(ey)) * 1000
    return fx_, fy, ex, ey, [b.name for b in blocks], per_1000


def measure(config: str, feats, args: argparse.Namespace) -> dict:
    fx_, fy, ex, ey, order, _ = feats
    nfit, neval = (int(v) for v in config.split("/"))
    if nfit > len(fy) or neval > len(ey):
        raise SystemExit(f"{config}: the pool has {len(fy)} fit and {len(ey)} held-out images")
    gains: dict[str, list[float]] = {b: [] for b in order}
    ses: dict[str, list[float]] = {b: [] for b in order}
    seconds = []
    for r in range(args.repeats):
        g = torch.Generator().manual_seed(100 + r)
        fi = torch.randperm(len(fy), generator=g)[:nfit]
        ei = torch.randperm(len(ey), generator=g)[:neval]
        t = time.perf_counter()
        scores = score_features({k: v[fi] for k, v in fx_.items()}, fy[fi],
                                {k: v[ei] for k, v in ex.items()}, ey[ei], order, 10)  # fmt: skip
        seconds.append(time.perf_counter() - t)
        for s in scores:
            gains[s.name].append(s.loss_gain)
            ses[s.name].append(s.loss_gain_se)
    return {
        "config": config,
        "fit": nfit,
        "heldout": neval,
        "seconds_per_scoring": statistics.median(seconds),
        "gain_mean": {b: statistics.mean(v) for b, v in gains.items()},
        "gain_sd": {b: statistics.stdev(v) for b, v in gains.items()},
        "paired_se": {b: statistics.mean(v) for b, v in ses.items()},
    }


def write_md(args: argparse.Namespace, head: dict, rows: list[dict]) -> None:
    med = statistics.median
    stage1 = [b for b in rows[0]["gain_mean"] if b.startswith("layer1.")]
    lines = [
        f"# DBP probe gains: signal against noise, {args.model} on {args.data}",
        "",
        f"- command: `{head['command']}`",
        f"- date: {head['date']}; machine: {head['machine']}; load before: {head['load']}",
        f"- pooled once: {head['pool_fit']} training and {head['pool_val']} validation images, "
        f"{head['pool_s_per_1000']:.2f} s per 1000 images; {args.repeats} repeats per row",
        "",
        "Gains and their noise in nats of held-out cross-entropy. spread: sd of a block's gain "
        "over the repeats (median over the blocks); paired se: the gain's standard error over "
        "its held-out samples (median). Where NEVAL is the whole split, the spread is the "
        "fit's noise alone and the paired se the held-out split's.",
        "",
        "| fit / held-out | s per scoring | spread, all | spread, stage 1 (max) | paired se | "
        + " | ".join(stage1)
        + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(stage1),
    ]
    for r in rows:
        s1 = [r["gain_sd"][b] for b in stage1]
        lines.append(
            f"| {r['config']} | {r['seconds_per_scoring']:.1f} | {med(r['gain_sd'].values()):.4f} "
            f"| {med(s1):.4f} ({max(s1):.4f}) | {med(r['paired_se'].values()):.4f} | "
            + " | ".join(f"{r['gain_mean'][b]:+.3f}" for b in stage1)
            + " |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    feats = pooled(args)
    head = {
        "command": "python " + " ".join(sys.argv),
        "date": utc_now(),
        "machine": machine("cpu"),
        "load": load,
        "pool_fit": len(feats[1]),
        "pool_val": len(feats[3]),
        "pool_s_per_1000": feats[5],
    }
    rows = []
    for config in args.configs:
        rows.append(measure(config, feats, args))
        r = rows[-1]
        print(f"{config}: {r['seconds_per_scoring']:.1f} s per scoring, spread median "
              f"{statistics.median(r['gain_sd'].values()):.4f}", flush=True)  # fmt: skip
        args.out.with_suffix(".json").write_text(json.dumps({"head": head, "rows": rows}, indent=1))
        write_md(args, head, rows)
    print(f"wrote {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

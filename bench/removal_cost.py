"""What the removal criterion costs: scoring every block of the shipped model alone.

    python bench/removal_cost.py                      # resnet56 on fashion-mnist, shipped weights
    python bench/removal_cost.py --images 1000 --repeats 3 --noise 1000 2000 5000

Two ways to evaluate the model without each block, timed interleaved on the
same held-out images (seconds per 1000 images, all blocks):

- shared: ``pruner.depth.removal_scores``, each variant run from where it first
  differs from the whole model (the prefix's values are kept from one run);
- full: each variant (``profiler.without_blocks``) run from the input, as
  scoring would cost without the shared prefix; in chunks of ``--chunk`` images,
  as ``removal_scores`` runs them on a CPU.

Then ``--noise``: the criterion's paired standard errors (median and max over
blocks, nats) at each held-out count, to choose how many images it needs.
Timings: run on a quiet machine.
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

from profiler import discover, load_model, read_checkpoint, without_blocks
from profiler.pretrained import pretrained_checkpoint
from pruner import load_data
from pruner.depth import fit_adapters, removal_scores

OUT = Path(__file__).parent / "results" / "removal_cost"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--images", type=int, default=1000, help="held-out images per timing")
    p.add_argument("--repeats", type=int, default=3, help="interleaved pairs")
    p.add_argument("--noise", type=int, nargs="*", default=[1000, 2000, 5000])
    p.add_argument("--chunk", type=int, default=64, help="images per forward of the full runs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT, help="path prefix of .json/.md")
    return p.parse_args(argv)


@torch.no_grad()
def full_runs(model, blocks, val, train, images: int, chunk: int) -> None:
    """Every variant from the input, on ``images`` held-out images."""
    bg = discover(model, next(iter(val))[0][:1])
    chosen = [b for b in bg.blocks if b.name in {x.name for x in blocks}]
    adapters = fit_adapters(bg.gm, chosen, train)
    variants = [without_blocks(bg.gm, [b], adapters).eval() for b in chosen]
    bg.gm.eval()
    seen = 0
    for x, _ in val:
        x = x[: images - seen]
        for xc in x.split(chunk):
            bg.gm(xc)
            for v in variants:
                v(xc)
        seen += len(x)
        if seen >= images:
            break


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    path = pretrained_checkpoint(args.model, args.data)
    model = load_model(read_checkpoint(path).spec, checkpoint=path)
    data = load_data(args.data, batch_size=256)
    blocks = [b for b in discover(model, next(iter(data.val))[0][:1]).blocks if b.removable]
    per_k = 1000 / args.images
    shared, full = [], []
    for r in range(args.repeats):
        shared.append(per_k * timed(
            lambda: removal_scores(model, blocks, data.val, data.train, max_eval=args.images)))  # fmt: skip
        full.append(
            per_k
            * timed(lambda: full_runs(model, blocks, data.val, data.train, args.images, args.chunk))
        )
        print(f"repeat {r}: shared {shared[-1]:.1f} s, full {full[-1]:.1f} s per 1000 images",
              file=sys.stderr)  # fmt: skip
    noise = []
    for n in args.noise:
        start = time.perf_counter()
        scores = removal_scores(model, blocks, data.val, data.train, max_eval=n)
        ses = [s.loss_rise_se for s in scores]
        noise.append({"images": scores[0].samples, "seconds": time.perf_counter() - start,
                      "median_se": statistics.median(ses), "max_se": max(ses),
                      "rises": {s.name: s.loss_rise for s in scores}})  # fmt: skip
        print(f"{n} images: median se {noise[-1]['median_se']:.4f}", file=sys.stderr)
    write(args, shared, full, noise, len(blocks))


def write(args, shared: list[float], full: list[float], noise: list[dict], n_blocks: int) -> None:
    result = {
        "command": "python " + " ".join(["bench/removal_cost.py", *sys.argv[1:]]),
        "date": utc_now(),
        "machine": machine("cpu"),
        "load_before": os.getloadavg()[0],
        "threads": args.threads,
        "model": args.model,
        "data": args.data,
        "blocks": n_blocks,
        "shared_s_per_1000": shared,
        "full_s_per_1000": full,
        "noise": noise,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [
        f"# Removal criterion cost: {args.model} on {args.data}, {n_blocks} blocks",
        "",
        f"`{result['command']}`, {result['date']}, {result['machine']}, "
        f"{args.threads} threads, load {result['load_before']:.2f} at the end",
        "",
        "| evaluation | s per 1000 held-out images (each repeat) | median |",
        "|---|---|---|",
        f"| shared prefix | {', '.join(f'{t:.1f}' for t in shared)} | {statistics.median(shared):.1f} |",
        f"| each variant in full | {', '.join(f'{t:.1f}' for t in full)} | {statistics.median(full):.1f} |",
        "",
        "| held-out images | s (scoring, adapters included) | median se (nats) | max se |",
        "|---|---|---|---|",
        *(f"| {n['images']} | {n['seconds']:.0f} | {n['median_se']:.4f} | {n['max_se']:.4f} |"
          for n in noise),
    ]  # fmt: skip
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

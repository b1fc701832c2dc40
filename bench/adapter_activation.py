"""What an adapter's activation is worth: accuracy right after surgery, with and without it.

    python bench/adapter_activation.py --checkpoint vgg16-fm.pt --seeds 0 1 2

A block that changes channels is replaced by a 1x1 conv fit on ``--calibration``
training images (``pruner.depth.fit_adapters``). When the block's output ends in
a ReLU, the adapter ends in it too, fit by clipped least squares (what prunerd
does); the baselines are the same ReLU after a plain least-squares fit, and a
plain least-squares conv alone (what prunerd did before). For each adapter block
alone and for all of them together, each variant is built (``pruner.apply_plan``)
and evaluated, without fine-tuning, on the full test split. Seeds change which
training images the fit sees; the table gives the mean and the range over seeds.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
from pathlib import Path

import torch
from compare_methods import utc_now  # bench/ is on sys.path when run as a script
from profiler_figures import load, machine

from profiler import discover, example_input, load_model, read_checkpoint
from pruner import evaluate, load_data
from pruner.depth import fit_adapters, remove_blocks

OUT = Path(__file__).parent / "results" / "adapter_activation"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a trained baseline")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--calibration", type=int, default=512, help="images the fit sees")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT, help="path prefix of .json/.md")
    return p.parse_args(argv)


def removal_sets(model: torch.nn.Module, spec) -> list[list]:
    """Each adapter block that ends in an activation alone, then all of them."""
    bg = discover(model, example_input(spec))
    ends = [b for b in bg.blocks if b.removable and b.replacement == "adapter"]
    ends = [b for b in ends if b.adapter_activation]
    return [[b] for b in ends] + ([ends] if len(ends) > 1 else [])


# variant: (adapters end in their block's activation, clipped steps of the fit)
VARIANTS = {"relu, clipped fit": (True, 10), "relu, least squares": (True, 0),
            "least squares": (False, 0)}  # fmt: skip


def accuracy(model, spec, names: list[str], variant: str, data, calibration: int) -> dict:
    """The model without blocks ``names``, their adapters fit as ``variant`` says."""
    activation, steps = VARIANTS[variant]
    bg = discover(copy.deepcopy(model), example_input(spec))
    chosen = [b for b in bg.blocks if b.name in names]
    if not activation:
        chosen = [dataclasses.replace(b, adapter_activation="") for b in chosen]
    adapters = fit_adapters(bg.gm, chosen, data.train, calibration, clipped_steps=steps)
    result = evaluate(remove_blocks(bg.gm, chosen, adapters), data.test)
    return {"accuracy": result.accuracy, "loss": result.loss, "n": result.n}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = read_checkpoint(args.checkpoint).spec
    model = load_model(spec, checkpoint=args.checkpoint).eval()
    sets = removal_sets(model, spec)
    rows = []
    for seed in args.seeds:
        data = load_data(args.data, batch_size=256, seed=seed)
        base = evaluate(model, data.test)
        for blocks in sets:
            for variant in VARIANTS:
                names = [b.name for b in blocks]
                got = accuracy(model, spec, names, variant, data, args.calibration)
                row = {"seed": seed, "removed": [b.name for b in blocks],
                       "variant": variant, "baseline": base.accuracy, **got}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    result = {"command": "python " + " ".join(sys.argv), "date": utc_now(),
              "machine": machine("cpu"), "load": load(), "rows": rows}  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(table(result))


def table(result: dict) -> str:
    rows = result["rows"]
    lines = [
        "# Adapters with and without their block's activation, no fine-tuning",
        "",
        f"`{result['command']}`",
        "",
        f"{result['date']}; {result['machine']}; load: {result['load']}",
        "",
        "Test accuracy on the full test split, mean over seeds [min, max].",
        "",
        "| removed | baseline | " + " | ".join(VARIANTS) + " | clipped fit - least squares |",
        "|---|---|" + "---|" * (len(VARIANTS) + 1),
    ]
    for removed in dict.fromkeys(tuple(r["removed"]) for r in rows):
        mine = [r for r in rows if tuple(r["removed"]) == removed]
        cell = {v: [r["accuracy"] for r in mine if r["variant"] == v] for v in VARIANTS}
        first, last = list(VARIANTS)[0], list(VARIANTS)[-1]
        diffs = [a - b for a, b in zip(cell[first], cell[last])]
        base = statistics.mean(r["baseline"] for r in mine)
        lines.append(
            f"| {', '.join(removed)} | {base:.4f} | "
            + " | ".join(_spread(cell[v]) for v in VARIANTS)
            + f" | {_spread(diffs, signed=True)} |"
        )
    n = rows[0]["n"] if rows else 0
    lines += ["", f"{len({r['seed'] for r in rows})} seeds; {n} test images each."]
    return "\n".join(lines) + "\n"


def _spread(values: list[float], signed: bool = False) -> str:
    f = "{:+.4f}" if signed else "{:.4f}"
    return f"{f.format(statistics.mean(values))} [{f.format(min(values))}, {f.format(max(values))}]"


if __name__ == "__main__":
    main()

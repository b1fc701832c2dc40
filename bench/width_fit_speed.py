"""How long the width fit takes to meet size targets: ``fit_widths`` on the zoo's models.

    python bench/width_fit_speed.py                      # prints a table, writes nothing
    python bench/width_fit_speed.py --out bench/results/width_fit_speed --label after

The fit evaluates each target's cost at every trial step (hundreds of thousands of
evaluations for joint MACs + params targets); the figure is the whole ``fit_widths`` call,
from gate strengths of a fresh model (seeded, so every run fits the same problem), best
and median of ``--repeats`` calls, one model and target pair at a time. Run it from two
checkouts, alternating, to compare two versions of the fit (``--label`` names the row);
rows append to ``--out``.json and the markdown is rewritten from all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from compare_methods import utc_now  # bench/ is on sys.path

from profiler import build_model, cpu_model, resolve_spec
from pruner.width import ChannelSpace, channel_ranking, fit_widths, size_targets

CASES = [
    ("resnet56", 0.5, None),
    ("resnet56", 0.3, 0.35),
    ("mobilenetv2", 0.5, None),
    ("mobilenetv2", 0.3, 0.35),
    ("mobilenetv2", 0.7, 0.3),
    ("vgg16", 0.5, 0.4),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--label", default="", help="what this checkout is (e.g. before, after)")
    p.add_argument("--out", type=Path, default=None, help="append rows to OUT.json, write OUT.md")
    return p.parse_args(argv)


def time_case(name: str, macs: float | None, params: float | None, repeats: int) -> dict:
    torch.manual_seed(0)
    spec = resolve_spec(name, in_channels=1, num_classes=10, input_size=(16, 16))
    model = build_model(spec).eval()
    space = ChannelSpace(model, torch.randn(2, *spec.input_shape(1)[1:]))
    strength = channel_ranking(space)
    targets = size_targets(space, macs, params)
    seconds, ratios = [], {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        ratios = fit_widths(space, strength, targets, 8).ratios
        seconds.append(time.perf_counter() - t0)
    return {
        "model": name,
        "macs": macs,
        "params": params,
        "best_s": min(seconds),
        "median_s": statistics.median(seconds),
        "ratios": ratios,
    }


def write_markdown(rows: list[dict], path: Path) -> None:
    lines = [
        "# Width fit to size targets: seconds per `fit_widths` call",
        "",
        "`python bench/width_fit_speed.py --out bench/results/width_fit_speed --label L`, one",
        "process per label, labels alternating (before: the fit summing each layer's cost in",
        "Python; after: the layers' costs as numpy arrays); 1x16x16 input, 10 classes, seeded.",
        "",
        "| label | when (UTC) | load | model | MACs | params | best s | median s | MACs got | params got |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['when']} | {r['load']:.2f} | {r['model']} | {r['macs']} | "
            f"{r['params']} | {r['best_s']:.3f} | {r['median_s']:.3f} | "
            f"{r['ratios']['macs']:.4f} | {r['ratios']['params']:.4f} |"
        )
    lines += ["", f"Machine: {cpu_model()}, {os.cpu_count()} cores, one torch thread."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name, macs, params in CASES:
        row = time_case(name, macs, params, args.repeats)
        row.update(label=args.label, when=utc_now(), load=os.getloadavg()[0])
        print(
            f"{args.label:8s} {name:12s} macs={macs} params={params}: best {row['best_s']:.3f} s, "
            f"median {row['median_s']:.3f} s -> {row['ratios']['macs']:.4f} / "
            f"{row['ratios']['params']:.4f}",
            flush=True,
        )
        rows.append(row)
    if args.out is not None:
        store = args.out.with_suffix(".json")
        old = json.loads(store.read_text()) if store.exists() else []
        store.write_text(json.dumps(old + rows, indent=1))
        write_markdown(old + rows, args.out.with_suffix(".md"))


if __name__ == "__main__":
    main()

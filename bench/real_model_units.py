"""Units that discovery finds in real torchvision and timm models, and that surgery removes.

    python bench/real_model_units.py [--models torchvision:resnet50 timm:densenet121 ...]
        [--json units.json] [--before old_units.json --before-label "commit abc123"]

Needs torchvision and timm (models built with weights=None: nothing downloads).
For every model: the units discover() finds at 224x224, by kind and by
replacement; then one unit of each kind and replacement (the first in network order) is
removed by surgery and the pruned model is run on a 224x224 input, which must
give 1000 logits. ``--json`` writes the counts; ``--before`` reads counts
written the same way by an earlier checkout, shown next to these. Writes
bench/results/real_model_units.md.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

from profiler import discover

OUT = Path(__file__).resolve().parent / "results"
MODELS = (
    "torchvision:resnet50",
    "torchvision:resnext50_32x4d",
    "torchvision:wide_resnet50_2",
    "torchvision:mobilenet_v2",
    "torchvision:mobilenet_v3_small",
    "torchvision:mobilenet_v3_large",
    "torchvision:efficientnet_b0",
    "torchvision:efficientnet_v2_s",
    "torchvision:regnet_y_400mf",
    "torchvision:convnext_tiny",
    "torchvision:densenet121",
    "torchvision:vgg16_bn",
    "torchvision:googlenet",
    "torchvision:inception_v3",
    "torchvision:squeezenet1_0",
    "torchvision:shufflenet_v2_x1_0",
    "torchvision:mnasnet1_0",
    "timm:resnet50",
    "timm:mobilenetv3_small_100",
    "timm:mobilenetv3_large_100",
    "timm:efficientnet_b0",
    "timm:efficientnetv2_rw_s",
    "timm:regnety_004",
    "timm:convnext_tiny",
    "timm:densenet121",
    "timm:vgg16_bn",
    "timm:inception_v3",
    "timm:inception_resnet_v2",
    "timm:dpn68",
    "timm:res2net50_26w_4s",
    "timm:dla34",
    "timm:cspresnet50",
    "timm:ghostnet_100",
    "timm:xception41",
    "timm:selecsls42b",
    "timm:hrnet_w18_small",
)


def build(spec: str) -> torch.nn.Module:
    lib, name = spec.split(":")
    if lib == "timm":
        import timm

        return timm.create_model(name, pretrained=False).eval()
    import torchvision.models as tvm

    return getattr(tvm, name)(weights=None).eval()


def removal_checks(spec: str, x: torch.Tensor) -> dict[str, str]:
    """Remove the first unit of each kind and replacement; say whether the pruned model runs."""
    from pruner.depth import remove_blocks

    torch.manual_seed(0)
    bg = discover(build(spec), x)
    firsts = {}
    for b in bg.blocks:
        if b.removable:
            firsts.setdefault(f"{b.kind} by {b.replacement}", b.name)
    out = {}
    for replacement, name in firsts.items():
        torch.manual_seed(0)
        bg = discover(build(spec), x)
        block = next(b for b in bg.blocks if b.name == name)
        try:
            with torch.no_grad():
                logits = remove_blocks(bg.gm, [block])(x)
            ok = tuple(logits.shape) == (1, 1000) and bool(torch.isfinite(logits).all())
            out[replacement] = f"{name}: {'runs' if ok else f'wrong output {tuple(logits.shape)}'}"
        except Exception as e:  # a failure is a finding of this benchmark, written down
            out[replacement] = f"{name}: {type(e).__name__}: {str(e)[:120]}"
    return out


def survey(spec: str, x: torch.Tensor, removal: bool) -> dict:
    torch.manual_seed(0)
    start = time.perf_counter()
    try:
        bg = discover(build(spec), x)
    except Exception as e:  # e.g. a model fx cannot trace: written down, not fatal
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    row = {
        "blocks": len(bg.blocks),
        "removable": sum(b.removable for b in bg.blocks),
        "kinds": dict(collections.Counter(b.kind for b in bg.blocks)),
        "replacements": dict(collections.Counter(b.replacement for b in bg.blocks)),
        "names": [b.name for b in bg.blocks],
        "seconds": round(time.perf_counter() - start, 1),
    }
    if removal:
        row["removal"] = removal_checks(spec, x)
    return row


def _counts(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items()))


def render(rows: dict, before: dict, command: str, before_label: str = "") -> str:
    lines = [
        "# Units of real torchvision and timm models",
        "",
        f"`{command}`, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"torch {torch.__version__}, Python {platform.python_version()}, input 1x3x224x224, "
        "weights=None.",
        *(["", f"Units before: {before_label}."] if before_label else []),
        "",
        "| model | units before | units | removable | kinds | replacements |",
        "|---|---:|---:|---:|---|---|",
    ]
    for spec, row in rows.items():
        old = before.get(spec, {})
        was = old.get("blocks", old.get("error", "") and "fails")
        if "error" in row:
            lines.append(f"| {spec} | {was} | fails: {row['error']} | | | |")
            continue
        lines.append(
            f"| {spec} | {was} | {row['blocks']} | {row['removable']} | "
            f"{_counts(row['kinds'])} | {_counts(row['replacements'])} |"
        )
    checks = [(s, r) for s, r in rows.items() if r.get("removal")]
    if checks:
        lines += ["", "## One unit of each kind and replacement removed by surgery", ""]
        lines += ["| model | kind by replacement | unit: result |", "|---|---|---|"]
        for spec, row in checks:
            for replacement, result in row["removal"].items():
                lines.append(f"| {spec} | {replacement} | {result} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--before", type=Path)
    parser.add_argument("--before-label", default="", help="what --before was measured on")
    parser.add_argument("--no-removal", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT / "real_model_units.md")
    args = parser.parse_args()
    x = torch.randn(1, 3, 224, 224)
    rows = {}
    for spec in args.models:
        rows[spec] = survey(spec, x, not args.no_removal)
        print(spec, {k: v for k, v in rows[spec].items() if k != "names"}, flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if not args.no_removal or not args.json:
        before = json.loads(args.before.read_text()) if args.before else {}
        command = "python bench/real_model_units.py " + " ".join(sys.argv[1:])
        args.out.write_text(render(rows, before, command.strip(), args.before_label))


if __name__ == "__main__":
    main()

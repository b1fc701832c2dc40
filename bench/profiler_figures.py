"""The profiler's figures: additivity, repeatability, cost, and a hook-based profiler side by side.

    python bench/profiler_figures.py [--device cpu|cuda] [--threads N] [--sections additivity repeatability cost]

writes bench/results/profiler_<device>_<section>.md, one file per section.

1. Additivity error for the four zoo models at batch 1 and 16 (goal: within 5%).
2. Repeatability: five profiles of resnet56 in a row; per block the coefficient
   of variation of the five medians; the median over blocks (goal: under 3%).
3. Cost: one full profile of resnet56 from an empty latency table (goal: under
   20 s) and a second one served from the table (goal: under 2 s), both timed
   in-process (the CLI adds about 3 s of Python and torch imports).
4. The way common profilers take per-module figures (forward pre/post hooks,
   synchronise, wall clock around each module during an ordinary forward pass,
   as DeepSpeed's FLOPs profiler does), on the same blocks, and its additivity.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from profiler import (
    LatencyTable,
    ModelSpec,
    TimingOptions,
    device_info,
    load_model,
    profile_model,
    retain_freed_memory,
)

MODELS = ("resnet20", "resnet56", "vgg16", "mobilenetv2")


def hook_profile(
    model: nn.Module, x: torch.Tensor, block_names: list[str], runs: int = 50
) -> dict[str, float]:
    """Median seconds per module timed with forward hooks during ordinary forward passes.

    Times the given blocks and every leaf module outside them ("rest"), the way
    hook-based profilers do: record a wall-clock stamp in a pre-hook and another
    in the post-hook (after synchronising on CUDA). Also returns "end_to_end"
    timed without hooks and "rest" summed over the outside leaves.
    """
    cuda = x.device.type == "cuda"
    stamps: dict[str, list[float]] = {}
    start: dict[str, float] = {}

    def pre(name: str):
        def hook(_m: nn.Module, _inp: tuple) -> None:
            if cuda:
                torch.cuda.synchronize()
            start[name] = time.perf_counter()

        return hook

    def post(name: str):
        def hook(_m: nn.Module, _inp: tuple, _out: object) -> None:
            if cuda:
                torch.cuda.synchronize()
            stamps.setdefault(name, []).append(time.perf_counter() - start[name])

        return hook

    inside = tuple(f"{b}." for b in block_names)
    rest = [
        n
        for n, m in model.named_modules()
        if n and not list(m.children()) and n not in block_names and not n.startswith(inside)
    ]
    handles = []
    for name in [*block_names, *rest]:
        m = model.get_submodule(name)
        handles += [m.register_forward_pre_hook(pre(name)), m.register_forward_hook(post(name))]
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        stamps.clear()
        for _ in range(runs):
            model(x)
    for h in handles:
        h.remove()
    e2e = []
    with torch.inference_mode():
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize()
            e2e.append(time.perf_counter() - t0)
    # A module called twice per forward (a shared ReLU) has 2 * runs stamps: sum its calls per pass.
    out = {n: statistics.median(v) * len(v) / runs for n, v in stamps.items()}
    result = {n: out[n] for n in block_names}
    result["rest"] = sum(out.get(n, 0.0) for n in rest)
    result["end_to_end"] = statistics.median(e2e)
    return result


def machine(device: str) -> str:
    info = device_info(device)
    host = (
        f"{torch.get_num_threads()} threads, {platform.machine()}, torch {torch.__version__}, "
        f"heap policy {device_info('cpu').details['allocator']}"
    )
    if info.kind != "cuda":
        return f"{info.name}, {host}"
    gpu = f"{info.name}, driver {info.details.get('driver', '?')}, CUDA {info.details.get('cuda')}"
    return f"{gpu}; CPU {device_info('cpu').name}, {host}"


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def header(title: str, dev: str) -> list[str]:
    return [
        f"# {title}",
        "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- machine: {machine(dev)}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- load before: `{load()}`",
        "",
    ]


def additivity(args: argparse.Namespace, opts: TimingOptions) -> list[str]:
    dev = args.device
    lines = header(
        f"Profiler on {dev.upper()}: additivity, and a hook-based profiler on the same blocks", dev
    )
    lines += [
        "Additivity error = (sum of blocks + rest - end to end) / end to end. prunerd times each block alone",
        "in place (a forward pass cut at block boundaries), interleaved with the whole model; the hook method",
        "times modules inside ordinary forward passes with pre/post forward hooks and a wall clock.",
        "",
        "| model | batch | end to end ms | prunerd blocks+rest ms | prunerd error | hooks blocks+rest ms | hooks error | profile time s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    details = {}
    for name in args.models:
        for batch in args.batches:
            spec = ModelSpec(name)
            model = load_model(spec)
            t0 = time.perf_counter()
            p = profile_model(
                model, spec, batch_size=batch, device=dev, options=opts, threads=args.threads
            )
            took = time.perf_counter() - t0
            model = model.to(dev)
            x = torch.randn(spec.input_shape(batch), device=dev)
            names = [b.block.name for b in p.blocks]
            modules = dict(model.named_modules())
            hooked = hook_profile(model, x, [n for n in names if n in modules])
            hook_sum = sum(v for k, v in hooked.items() if k != "end_to_end")
            hook_err = (hook_sum - hooked["end_to_end"]) / hooked["end_to_end"]
            lines.append(
                f"| {name} | {batch} | {p.end_to_end_s * 1e3:.3f} | {(p.blocks_s + p.rest_s) * 1e3:.3f} | "
                f"{p.additivity_error:+.1%} | {hook_sum * 1e3:.3f} | {hook_err:+.1%} | {took:.1f} |"
            )
            details[(name, batch)] = (p, hooked)
            print(lines[-1], flush=True)
    if ("resnet56", 1) in details:
        p, hooked = details[("resnet56", 1)]
        lines += [
            "",
            "Per block, resnet56 at batch 1 (ms): prunerd's median [p10, p90] and the hook figure.",
            "",
            "| block | prunerd | p10-p90 | hooks |",
            "|---|---|---|---|",
        ]
        for b in p.blocks:
            h = hooked.get(b.block.name)
            lines.append(
                f"| {b.block.name} | {b.latency_s * 1e3:.3f} | {b.latency.p10_s * 1e3:.3f}-{b.latency.p90_s * 1e3:.3f} | "
                f"{'-' if h is None else f'{h * 1e3:.3f}'} |"
            )
    return [*lines, "", f"- load after: `{load()}`", ""]


def repeatability(args: argparse.Namespace, opts: TimingOptions) -> list[str]:
    dev = args.device
    spec = ModelSpec("resnet56")
    model = load_model(spec)
    lines = header(
        f"Profiler on {dev.upper()}: repeatability, five profiles of resnet56 in a row (batch 1)",
        dev,
    )
    runs = [
        profile_model(model, spec, device=dev, options=opts, threads=args.threads) for _ in range(5)
    ]

    def cv(xs: list[float]) -> float:
        return statistics.stdev(xs) / statistics.mean(xs)

    cvs = [cv([r.blocks[i].latency_s for r in runs]) for i in range(len(runs[0].blocks))]
    # A block's share of its own profile's end to end: what selection and prediction use, and
    # free of the machine's speed drifting between profiles (common to every block).
    shares = [
        cv([r.blocks[i].latency_s / r.end_to_end_s for r in runs])
        for i in range(len(runs[0].blocks))
    ]
    e2e = [r.end_to_end_s for r in runs]
    lines += [
        f"- median over blocks of the coefficient of variation of the block medians: **{statistics.median(cvs):.2%}** (goal: under 3%)",
        f"- worst block: {max(cvs):.2%}; end-to-end CV: {cv(e2e):.2%} "
        f"(end to end of the five: {', '.join(f'{t * 1e3:.2f}' for t in e2e)} ms)",
        f"- the same over each block's share of its profile's end to end: median "
        f"**{statistics.median(shares):.2%}**, worst {max(shares):.2%}",
        f"- additivity errors of the five: {', '.join(f'{r.additivity_error:+.1%}' for r in runs)}",
        f"- load after: `{load()}`",
        "",
    ]
    print("\n".join(lines[-6:]), flush=True)
    return lines


def cost(args: argparse.Namespace, opts: TimingOptions) -> list[str]:
    dev = args.device
    spec = ModelSpec("resnet56")
    model = load_model(spec)
    lines = header(
        f"Profiler on {dev.upper()}: cost of a resnet56 profile (batch 1, in-process)", dev
    )
    with tempfile.TemporaryDirectory() as tmp:
        table = LatencyTable(Path(tmp) / "lut.sqlite")
        t0 = time.perf_counter()
        first = profile_model(
            model, spec, device=dev, options=opts, threads=args.threads, table=table
        )
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        second = profile_model(
            model, spec, device=dev, options=opts, threads=args.threads, table=table
        )
        t_second = time.perf_counter() - t0
        table.close()
    lines += [
        f"- full profile, empty table: **{t_first:.1f} s** ({first.end_to_end.runs} rounds; goal: under 20 s)",
        f"- second profile, served from the table ({second.from_table} pieces): **{t_second:.2f} s** (goal: under 2 s)",
        "- the `prunerd profile` command adds about 3 s of Python and torch imports to either",
        f"- load after: `{load()}`",
        "",
    ]
    print("\n".join(lines[-5:]), flush=True)
    return lines


SECTIONS = {"additivity": additivity, "repeatability": repeatability, "cost": cost}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--budget-s", type=float, default=10.0)
    ap.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    ap.add_argument(
        "--out-dir", type=Path, default=Path("bench/results"), help="one file per section"
    )
    ap.add_argument(
        "--system-malloc",
        action="store_true",
        help="keep the C library's default heap policy (results get a _system-malloc suffix)",
    )
    args = ap.parse_args()
    if not args.system_malloc:
        retain_freed_memory()  # as the prunerd command does
    torch.set_num_threads(args.threads)
    opts = TimingOptions(budget_s=args.budget_s)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.sections:
        suffix = "_system-malloc" if args.system_malloc else ""
        out = args.out_dir / f"profiler_{args.device}_{name}{suffix}.md"
        out.write_text("\n".join(SECTIONS[name](args, opts)))
        print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

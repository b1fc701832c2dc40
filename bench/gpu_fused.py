"""GPU figures: whole models fused (Conv-BN-ReLU kernels, backend auto) against unfused.

    python bench/gpu_fused.py [--models resnet20 resnet56] [--batches 1 16 128]

For each model, batch and precision (fp32 NCHW, fp16 channels_last): the
unfused model and ``kernels.fuse(model)`` (backend ``auto``: per conv shape,
Triton or cuDNN, whichever was measured faster in that mode), checked equal
first, then timed eager (back-to-back forward passes from Python) and replayed
from a CUDA graph, with CUDA events (medians of seconds per forward pass).
The first fused forward pass is timed too: it tunes every new conv shape
(``$PRUNERD_CACHE`` keeps the choices between processes).

Writes bench/results/fused_gpu.md. Exit status: 0 when the fused model is
never slower than the unfused one by more than --slack, 3 when it is, 1 on an
error or a wrong result.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from kernels import FusedConv2d, eager_seconds, fuse, graph_seconds, tuning_stats
from profiler import load_model

PRECISIONS = {
    "fp32-nchw": (torch.float32, torch.contiguous_format),
    "fp16-cl": (torch.float16, torch.channels_last),
}
TOL = {torch.float32: 1e-3, torch.float16: 3e-2}  # max |fused - unfused| / max |unfused|


def choices(model: torch.nn.Module) -> str:
    """How many fused convs run on each backend, eager and under a graph (from the cache)."""
    stats = tuning_stats()
    counts: Counter[str] = Counter()
    for mode, chosen in (("eager", stats.eager), ("graph", stats.graph)):
        for backend, shapes in chosen.items():
            counts[f"{mode} {backend}"] += shapes
    n = sum(isinstance(m, FusedConv2d) for m in model.modules())
    return f"{n} convs; shapes tuned so far: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))  # fmt: skip


def one(name: str, batch: int, precision: str) -> dict:
    dtype, fmt = PRECISIONS[precision]
    torch.manual_seed(0)
    model = load_model(name).eval().to("cuda", dtype).to(memory_format=fmt)
    fused = fuse(model)
    x = torch.randn(batch, 3, 32, 32, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
    with torch.inference_mode():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        y_fused = fused(x)
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        y = model(x)
        err = ((y_fused.float() - y.float()).abs().max() / y.float().abs().max()).item()
        if not err <= TOL[dtype]:
            raise AssertionError(f"fused {name} differs from unfused: relative error {err:.2e}")
        row = {"model": name, "batch": batch, "precision": precision, "first_s": first, "err": err}
        for label, m in (("unfused", model), ("fused", fused)):
            row[f"{label}_eager_s"] = eager_seconds(lambda m=m: m(x), calls=20, rounds=7)
            row[f"{label}_graph_s"] = graph_seconds(lambda m=m: m(x), calls=10, rounds=7)
    row["choices"] = choices(fused)
    return row


def render(rows: list[dict], slack: float, argv: list[str]) -> str:
    props = torch.cuda.get_device_properties(0)
    import triton

    lines = [
        "# Fused Conv-BN-ReLU models (backend auto) against unfused, on GPU",
        "",
        f"- command: `python {' '.join(argv)}` (through bench/gpu.sh)",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- GPU: {props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}"
        f" (CUDA {torch.version.cuda}), triton {triton.__version__}",
        "- medians of CUDA-event timings, microseconds per forward pass: eager = 20 passes"
        " back to back from Python, graph = 10 passes captured in one CUDA graph, replayed",
        "- first = the first fused pass, tuning included (empty or warm $PRUNERD_CACHE, as the"
        " run found it); outputs checked equal before timing",
        f"- goal: fused <= unfused x {1 + slack:.2f} in every row",
        "",
        "| model | batch | precision | unfused eager | fused eager | unfused graph | fused graph |"
        " fused / unfused (eager, graph) | first fused pass (s) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        re_ = r["fused_eager_s"] / r["unfused_eager_s"]
        rg = r["fused_graph_s"] / r["unfused_graph_s"]
        flag = " **(slower)**" if max(re_, rg) > 1 + slack else ""
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['precision']} | {r['unfused_eager_s'] * 1e6:.1f}"
            f" | {r['fused_eager_s'] * 1e6:.1f} | {r['unfused_graph_s'] * 1e6:.1f}"
            f" | {r['fused_graph_s'] * 1e6:.1f} | {re_:.2f}, {rg:.2f}{flag} | {r['first_s']:.2f} |"
        )
    if rows:
        lines += ["", f"Backend choices at the end of the run: {rows[-1]['choices']}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16, 128])
    ap.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))  # fmt: skip
    ap.add_argument("--slack", type=float, default=0.03)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fused_gpu.md")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_fused.py: no CUDA device; nothing measured", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    rows, errors = [], 0
    for name in args.models:
        for precision in args.precisions:
            for batch in args.batches:
                try:
                    r = one(name, batch, precision)
                except Exception as e:
                    errors += 1
                    print(f"FAIL {name} b{batch} {precision}: {type(e).__name__}: {e}", flush=True)
                    continue
                rows.append(r)
                print(
                    f"{name} b{batch} {precision}: eager {r['unfused_eager_s'] * 1e6:.0f} -> "
                    f"{r['fused_eager_s'] * 1e6:.0f} us, graph {r['unfused_graph_s'] * 1e6:.0f} -> "
                    f"{r['fused_graph_s'] * 1e6:.0f} us, first pass {r['first_s']:.1f} s",
                    flush=True,
                )
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(render(rows, args.slack, sys.argv))
    if errors:
        return 1
    slower = any(
        r[f"fused_{m}_s"] > (1 + args.slack) * r[f"unfused_{m}_s"]
        for r in rows
        for m in ("eager", "graph")
    )
    return 3 if slower else 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU figures: the Triton Conv-BN-ReLU kernel vs cuDNN eager vs torch.compile.

For every distinct groups=1 conv shape of resnet56 and mobilenetv2 (3x32x32
input), each batch size, fp16 and fp32, and the chosen layouts:

1. correctness first: the Triton kernel must match ``relu(conv2d)`` on every
   case before anything is timed (the script exits non-zero otherwise);
2. timing: median latency in seconds per call (reported in microseconds) from
   CUDA events, twice: replayed from a CUDA graph (``kernels.gpu_timing.graph_seconds``:
   GPU time only) and launched back to back from Python (``eager_seconds``:
   what an eager model pays, host launch cost included where it dominates), for
   - triton: ``kernels.conv_bn_relu.conv2d_triton`` on folded weights laid out
     once, with its tuned tile (one launch),
   - cudnn: eager ``Conv2d -> BatchNorm2d -> ReLU`` in eval mode, same layout,
     ``torch.backends.cudnn.benchmark = True``,
   - compile (``--compile``): ``torch.compile`` of that same eager chain, with
     ``torch._dynamo.reset()`` before each case so no case falls back to eager
     after dynamo's recompile limit.

fp32 runs with TF32 allowed on both sides by default (``--fp32-precision tf32``,
the usual deploy setting); ``ieee`` compares exact fp32 on both sides.
Writes bench/results/kernels_gpu.md. Run through bench/gpu.sh.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit(
        "gpu_kernels.py: TRITON_INTERPRET is set; unset it to time the compiled kernel on the GPU"
    )

import torch
import torch.nn.functional as F
from kernels_cpu import (
    conv_shapes as model_conv_shapes,  # bench/ is on sys.path when run as a script
)
from torch import nn

from kernels import FusedConv2d, conv2d_triton, eager_seconds, graph_seconds, lay_out_weight

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
LAYOUTS = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}
# (rtol, atol) of the Triton kernel against an fp64 reference from the same rounded inputs.
TOL = {
    ("fp16", "ieee"): (1e-2, 2e-2),
    ("fp16", "tf32"): (1e-2, 2e-2),
    ("fp32", "ieee"): (1e-4, 1e-4),
    ("fp32", "tf32"): (1e-2, 2e-2),
}


def conv_shapes(models: list[str]) -> list[dict]:
    """Distinct groups=1 (Cin, Cout, k, stride, pad, activation, H, W) cases of the models at 3x32x32."""
    seen: dict[tuple, dict] = {}
    for name in models:
        for case in model_conv_shapes(name):
            if case["groups"] != 1:  # depthwise: PyTorch path on every device, nothing to compare
                continue
            key = tuple(case[k] for k in ("cin", "cout", "k", "stride", "pad", "act", "h", "w"))
            seen.setdefault(
                key, {**{k: v for k, v in case.items() if k != "groups"}, "model": name}
            )
    return list(seen.values())


def build(case: dict, batch: int, dtype: torch.dtype, layout: torch.memory_format) -> tuple:
    """Input, eager chain and folded (weight, bias) for one case, on the GPU."""
    conv = nn.Conv2d(case["cin"], case["cout"], case["k"], case["stride"], case["pad"], bias=False)
    bn = nn.BatchNorm2d(case["cout"])
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    act = {"relu": nn.ReLU(inplace=True), "relu6": nn.ReLU6(inplace=True), None: nn.Identity()}[
        case["act"]
    ]
    eager = nn.Sequential(conv, bn, act).eval().to("cuda", dtype).to(memory_format=layout)
    fused = FusedConv2d.from_conv_bn(conv, bn, case["act"])
    w = lay_out_weight(fused.weight.detach().to("cuda", dtype))
    b = fused.bias.detach().to("cuda", dtype)
    x = torch.randn(
        batch, case["cin"], case["h"], case["w"], device="cuda", dtype=dtype
    ).contiguous(memory_format=layout)
    return x, eager, w, b


def triton_fn(case: dict, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, precision: str):
    return lambda: conv2d_triton(
        x, w, b, case["stride"], case["pad"], 1, case["act"], input_precision=precision
    )


def check_all(cases: list[dict], args: argparse.Namespace) -> None:
    """Assert the Triton kernel is correct on every case that will be timed."""
    for case in cases:
        for batch in args.batches:
            for dname in args.dtypes:
                for lname in args.layouts:
                    x, _, w, b = build(case, batch, DTYPES[dname], LAYOUTS[lname])
                    y = triton_fn(case, x, w, b, args.fp32_precision)()
                    ref = F.conv2d(
                        x.double(), w.double(), b.double(), case["stride"], case["pad"]
                    ).float()
                    ref = {"relu": F.relu, "relu6": lambda t: t.clamp(0, 6), None: lambda t: t}[
                        case["act"]
                    ](ref)
                    rtol, atol = TOL[(dname, args.fp32_precision)]
                    try:
                        torch.testing.assert_close(y.float(), ref, rtol=rtol, atol=atol)
                    except AssertionError as e:
                        sys.exit(
                            f"gpu_kernels.py: Triton kernel WRONG for {case} batch={batch} {dname} {lname}:\n{e}"
                        )
    torch.cuda.synchronize()
    print(
        f"correctness: {len(cases) * len(args.batches) * len(args.dtypes) * len(args.layouts)} cases OK",
        flush=True,
    )


def time_all(cases: list[dict], args: argparse.Namespace) -> list[dict]:
    rows = []
    for case in cases:
        for batch in args.batches:
            for dname in args.dtypes:
                for lname in args.layouts:
                    x, eager, w, b = build(case, batch, DTYPES[dname], LAYOUTS[lname])
                    row = dict(case, batch=batch, dtype=dname, layout=lname)
                    fns = {
                        "triton": triton_fn(case, x, w, b, args.fp32_precision),
                        "cudnn": lambda e=eager, x=x: e(x),
                    }
                    if args.compile:
                        torch._dynamo.reset()  # a fresh cache per case: no recompile limit
                        compiled = torch.compile(eager, dynamic=False)
                        fns["compile"] = lambda c=compiled, x=x: c(x)
                    with torch.inference_mode():
                        for name, fn in fns.items():
                            row[f"{name}_graph"] = graph_seconds(fn, calls=20, rounds=7)
                            row[f"{name}_eager"] = eager_seconds(fn, calls=50, rounds=7)
                    rows.append(row)
                    print(
                        {
                            k: (f"{v * 1e6:.1f}us" if isinstance(v, float) else v)
                            for k, v in row.items()
                        },
                        flush=True,
                    )
    return rows


def render(rows: list[dict], args: argparse.Namespace) -> str:
    props = torch.cuda.get_device_properties(0)
    import triton

    lines = [
        "# Triton Conv-BN-ReLU vs cuDNN vs torch.compile on GPU",
        "",
        f"- command: `python {' '.join(sys.argv)}` (through bench/gpu.sh)",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- GPU: {props.name}, compute capability {props.major}.{props.minor}, {props.total_memory / 2**30:.1f} GiB",
        f"- torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), triton {triton.__version__}",
        f"- cudnn.benchmark on; fp32 input precision: {args.fp32_precision} on both sides",
        "- medians of CUDA-event timings, microseconds per call: graph = 20 calls captured in"
        " one CUDA graph and replayed (GPU time), eager = 50 calls back to back from Python"
        " (host launch cost included where it dominates); correctness asserted first",
        "- triton = one launch on folded weights laid out once, tuned tile; cudnn = eager"
        " Conv2d -> BatchNorm2d -> ReLU (eval, same layout); compile = torch.compile of that"
        " chain, dynamo reset per case",
        "",
        "| model | Cin -> Cout | k | s | act | H x W | batch | dtype | layout |"
        " triton graph | cudnn graph | compile graph | triton eager | cudnn eager |"
        " compile eager | cudnn / triton (graph) |",
        "|---|---|---:|---:|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def us(r: dict, k: str) -> str:
        return f"{r[k] * 1e6:.1f}" if k in r else "-"

    for r in rows:
        lines.append(
            f"| {r['model']} | {r['cin']} -> {r['cout']} | {r['k']} | {r['stride']} |"
            f" {r['act'] or '-'} | {r['h']}x{r['w']} | {r['batch']} | {r['dtype']} |"
            f" {r['layout']} | {us(r, 'triton_graph')} | {us(r, 'cudnn_graph')} |"
            f" {us(r, 'compile_graph')} | {us(r, 'triton_eager')} | {us(r, 'cudnn_eager')} |"
            f" {us(r, 'compile_eager')} | {r['cudnn_graph'] / r['triton_graph']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(
        description="Triton Conv-BN-ReLU vs cuDNN vs torch.compile (GPU only)"
    )
    p.add_argument("--models", nargs="+", default=["resnet56", "mobilenetv2"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16, 128])
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp16", "fp32"])
    p.add_argument(
        "--layouts", nargs="+", choices=sorted(LAYOUTS), default=["channels_last", "nchw"]
    )
    p.add_argument("--fp32-precision", choices=["tf32", "ieee"], default="tf32")
    p.add_argument("--compile", action="store_true", help="add the torch.compile columns")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "kernels_gpu.md")
    args = p.parse_args()

    if not torch.cuda.is_available():
        print(
            "gpu_kernels.py: no CUDA GPU available (torch.cuda.is_available() is False); nothing measured.",
            file=sys.stderr,
        )
        return 2
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    tf32 = args.fp32_precision == "tf32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32

    cases = conv_shapes(args.models)
    check_all(cases, args)
    rows = time_all(cases, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(rows, args))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

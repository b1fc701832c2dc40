"""GPU figures for issue 3: the Triton Conv-BN-ReLU kernel vs cuDNN eager vs torch.compile.

For every distinct groups=1 conv shape of resnet56 and mobilenetv2 (3x32x32
input), each batch size, fp16 and fp32, and the chosen layouts:

1. correctness first: the Triton kernel must match ``relu(conv2d)`` on every
   case before anything is timed (the script exits non-zero otherwise);
2. timing: median latency in seconds per call (reported in microseconds) from
   CUDA events via ``triton.testing.do_bench``, for
   - triton: ``kernels.conv2d_bias_relu`` on folded weights (one launch),
   - cudnn: eager ``Conv2d -> BatchNorm2d -> ReLU`` in eval mode, same layout,
     ``torch.backends.cudnn.benchmark = True``,
   - compile: ``torch.compile`` of that same eager chain.

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

from kernels import FusedConv2d, conv2d_triton

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
LAYOUTS = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}
# (rtol, atol) of the Triton kernel against an fp32 reference from the same rounded inputs.
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
    w, b = fused.weight.detach().to("cuda", dtype), fused.bias.detach().to("cuda", dtype)
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
                    ref = F.conv2d(x.float(), w.float(), b.float(), case["stride"], case["pad"])
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
    from triton.testing import do_bench

    def med(fn) -> float:
        return (
            do_bench(fn, warmup=args.warmup_ms, rep=args.rep_ms, return_mode="median") * 1e-3
        )  # ms -> s

    rows = []
    for case in cases:
        for batch in args.batches:
            for dname in args.dtypes:
                for lname in args.layouts:
                    x, eager, w, b = build(case, batch, DTYPES[dname], LAYOUTS[lname])
                    row = dict(case, batch=batch, dtype=dname, layout=lname)
                    with torch.inference_mode():
                        row["triton"] = med(triton_fn(case, x, w, b, args.fp32_precision))
                        row["cudnn"] = med(lambda e=eager, x=x: e(x))
                        if args.compile:
                            compiled = torch.compile(eager, dynamic=False)
                            row["compile"] = med(lambda c=compiled, x=x: c(x))
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
        "# Triton Conv-BN-ReLU vs cuDNN vs torch.compile on GPU (issue 3)",
        "",
        f"- command: `python {' '.join(sys.argv)}` (through bench/gpu.sh)",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- GPU: {props.name}, compute capability {props.major}.{props.minor}, {props.total_memory / 2**30:.1f} GiB",
        f"- torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), triton {triton.__version__}",
        f"- cudnn.benchmark on; fp32 input precision: {args.fp32_precision} on both sides",
        "- medians of CUDA-event timings (triton.testing.do_bench), microseconds per call; correctness asserted first",
        "- triton = one launch on folded weights; cudnn = eager Conv2d -> BatchNorm2d -> ReLU (eval, same layout);"
        " compile = torch.compile of that eager chain",
        "",
        "| model | Cin -> Cout | k | s | act | H x W | batch | dtype | layout | triton (us) | cudnn (us) | compile (us) | cudnn / triton |",
        "|---|---|---:|---:|---|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        comp = f"{r['compile'] * 1e6:.1f}" if "compile" in r else "-"
        lines.append(
            f"| {r['model']} | {r['cin']} -> {r['cout']} | {r['k']} | {r['stride']} | {r['act'] or '-'} | {r['h']}x{r['w']} |"
            f" {r['batch']} | {r['dtype']} | {r['layout']} | {r['triton'] * 1e6:.1f} | {r['cudnn'] * 1e6:.1f} | {comp} |"
            f" {r['cudnn'] / r['triton']:.2f}x |"
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
    p.add_argument(
        "--no-compile", dest="compile", action="store_false", help="skip the torch.compile column"
    )
    p.add_argument("--warmup-ms", type=int, default=25)
    p.add_argument("--rep-ms", type=int, default=100)
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

"""`prunerd profile`: per-block serial latency of a model, as a table and as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from .argtypes import BUDGET_S_REFUSED, input_size, positive_float, positive_int, refused
from .progress import progress_bar
from .render import print_profile
from .weights import add_weights_arguments


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        help="built-in name (resnet20, resnet56, vgg16, mobilenetv2), package.module:callable "
        "(e.g. torchvision.models:resnet50 --input-size 224) or timm:NAME (needs timm)",
    )
    add_weights_arguments(p)
    # None: the checkpoint's, or a .pt2 program's own input, else the defaults named.
    p.add_argument(
        "--in-channels",
        type=positive_int,
        default=None,
        help="input channels (default: the checkpoint's or .pt2 program's, else 3)",
    )
    p.add_argument(
        "--num-classes",
        type=positive_int,
        default=None,
        help="output classes (default: the checkpoint's, else 10)",
    )
    p.add_argument(
        "--input-size",
        type=input_size,
        default=None,
        help="H,W (default: the checkpoint's or .pt2 program's, else 32,32)",
    )


def add_timing_arguments(p: argparse.ArgumentParser, latency_budget: bool = False) -> None:
    """How a model is timed; with ``latency_budget`` (the command also takes one)
    ``--budget-s`` is refused as ambiguous, else it is another name for the timing budget."""
    p.add_argument("--batch-size", type=positive_int, default=1, help="batch size (default: 1)")
    p.add_argument(
        "--device", default=None, help="cpu or cuda (default: the GPU when there is one)"
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads (default: torch's choice, one per physical core, as a deployed model "
        "runs; recorded). On a shared machine use no more than the cores left free",
    )
    p.add_argument(
        "--fused", action="store_true", help="measure with Conv-BN-ReLU chains fused, as deployed"
    )
    p.add_argument(
        "--table",
        type=Path,
        default=None,
        help="latency table (default: ~/.cache/prunerd/latency.sqlite)",
    )
    p.add_argument(
        "--no-table", action="store_true", help="neither read nor write the latency table"
    )
    p.add_argument(
        "--remeasure", action="store_true", help="time everything again even if the table has it"
    )
    p.add_argument(
        "--store-failed",
        action="store_true",
        help="store the measurements in the table even when the profile fails its checks "
        "(additivity, spread, drift, other processes' CPU use)",
    )
    _add_timing_budget(p, latency_budget)
    p.add_argument(
        "--l2-flush", action="store_true", help="CUDA: flush L2 before each sample (cold cache)"
    )
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="CUDA: replay captured graphs (no launch overhead)",
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip the prediction check (the model without every second removable block, "
        "timed beside the whole model against the profile's prediction for it)",
    )
    p.add_argument(
        "--pieces",
        choices=["auto", "alone", "chained"],
        default="auto",
        help="how blocks are timed: alone (each in its own launches), chained (one forward pass, "
        "a timing mark between blocks; reports the launch overhead), auto: chained on CUDA",
    )


def _add_timing_budget(p: argparse.ArgumentParser, latency_budget: bool) -> None:
    p.add_argument(
        "--timing-budget-s",
        *(() if latency_budget else ("--budget-s",)),
        dest="timing_budget_s",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="timing budget per measurement, seconds (default: 10)",
    )
    if latency_budget:
        p.add_argument("--budget-s", type=refused(BUDGET_S_REFUSED), help=argparse.SUPPRESS)


def run_profile(args: argparse.Namespace, quiet: bool = False):  # noqa: ANN201 - returns BlockProfile
    """Resolve the model and profile it as the command-line arguments say."""
    from profiler import LatencyTable, TimingOptions, profile_model, resolve_spec

    spec = resolve_spec(
        args.model, args.in_channels, args.num_classes, args.input_size, args.checkpoint
    )
    from pruner import load_to_profile

    spec, model = load_to_profile(spec, args.checkpoint)
    table = None if args.no_table else LatencyTable(args.table)
    options = TimingOptions(
        budget_s=args.timing_budget_s,
        l2_flush=args.l2_flush,
        cuda_graph=args.cuda_graph,
        pieces=args.pieces,
        check=not args.no_check,
    )
    try:
        with progress_bar(f"profiling {spec.name}", disable=quiet) as progress:
            return profile_model(
                model,
                spec,
                batch_size=args.batch_size,
                device=args.device,
                dtype=args.dtype,
                fused=args.fused,
                table=table,
                remeasure=args.remeasure,
                options=options,
                threads=args.threads,
                progress=progress,
                store_failed=args.store_failed,
            )
    finally:
        if table is not None:
            table.close()


def handle(args: argparse.Namespace) -> int:
    from profiler.files import writable_file, write_text

    if args.json:
        writable_file(args.json, "--json file")  # refused now, not after the timing
    profile = run_profile(args, quiet=args.quiet)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.json, profile.to_json())
    if not args.quiet:
        print_profile(profile)
        if args.json:
            print(f"wrote {args.json}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="measure each block's serial latency on this device",
        description="Measure each block's serial latency in place, the end-to-end latency and the additivity error.",
    )
    add_model_arguments(p)
    add_timing_arguments(p)
    p.add_argument("--json", type=Path, help="also write the profile as JSON to this path")
    p.add_argument("--quiet", action="store_true", help="print nothing (use with --json)")
    p.set_defaults(func=handle)

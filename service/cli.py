"""The `prunerd` command line: one subcommand per module in service.commands."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

# Each module defines `register(subparsers)`, which adds its parser and sets `func`.
COMMAND_MODULES = (
    "quickstart",
    "train",
    "eval",
    "profile",
    "table",
    "prune",
    "serve",
    "submit",
    "jobs",
    "watch",
    "cancel",
    "keys",
)
# Commands that time models in this process; they keep freed activations for reuse.
TIMING_COMMANDS = {"quickstart", "profile", "prune"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunerd",
        description="Hardware-aware latency profiling and latency-budgeted pruning for CNNs.",
    )
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="measure under the C library's default heap policy instead of keeping freed "
        "activations for reuse (also PRUNERD_SYSTEM_MALLOC=1); see profiler/allocator.py",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"service.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what --nproc-per-node reruns
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # torch's own deprecation inside its pytree code, printed whenever a torch.export
    # program is copied (every profile of a .pt2): nothing a user of prunerd can act on.
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )
    if args.system_malloc:
        os.environ["PRUNERD_SYSTEM_MALLOC"] = (
            "1"  # profiler.allocator.OPT_OUT_ENV; workers inherit it
        )
    if args.command in TIMING_COMMANDS:
        from profiler import retain_freed_memory

        retain_freed_memory()
    try:
        from .commands.weights import resolve_weights

        resolve_weights(args)  # --pretrained DATASET -> args.checkpoint
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `prunerd jobs | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 0
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # Expected user errors carry a message that names the bad value and the fix.
        if not getattr(e, "from_main_rank", False):  # rank 0 printed it already
            print(f"prunerd {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

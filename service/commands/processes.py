"""``--nproc-per-node N``: a command run as N processes under torchrun's elastic agent.

``prunerd train ... --nproc-per-node 2`` starts the agent itself (what
``torchrun --standalone --nproc-per-node 2 $(which prunerd) train ...`` does), and
each process runs the same command line inside the process group. Under torchrun
already, the command joins the group torchrun set up.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from .argtypes import positive_int

MODULE = "service.cli"  # what each process runs: `python -m service.cli ARGV...`


def add_process_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nproc-per-node",
        type=positive_int,
        default=None,
        metavar="N",
        help="run as N processes on this machine with torch.distributed (DDP, started by "
        "torchrun's elastic agent; gloo on CPU, NCCL and one GPU each on CUDA). --batch-size "
        "stays the batch of one step, shared by the N processes; give --threads for their "
        "CPU threads. Several machines: run torchrun --nnodes M --nproc-per-node N "
        "--rdzv-backend c10d --rdzv-endpoint HOST:PORT $(which prunerd) ... on each",
    )


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_WORLD_SIZE" in os.environ


def relaunch(args: argparse.Namespace) -> int | None:
    """The exit code of this command run as ``--nproc-per-node`` processes, or None to run it here.

    None when no processes were asked for, or when this process is one of them.
    """
    n = args.nproc_per_node
    if under_torchrun():
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if n is not None and n != local:
            raise ValueError(
                f"--nproc-per-node {n} under torchrun, which started {local} processes on "
                "this machine: give torchrun's count or leave the option out"
            )
        return None
    if n is None or n == 1:
        return None
    from pruner.distributed import command_of, launch

    # The agent's per-run logs in a directory of our own, removed after (torchrun's default
    # leaves a torchelastic_* directory in the temporary directory after every run).
    with tempfile.TemporaryDirectory(prefix="prunerd-ranks-") as logs:
        result = launch(n, command_of(MODULE, args.argv), log_dir=logs)
    codes = {f.exitcode for f in result.failures}
    if any(f.signal for f in result.failures) or len(codes) > 1:
        for f in result.failures:
            print(f"prunerd {args.command}: {f.describe()}", file=sys.stderr)
    return result.exitcode

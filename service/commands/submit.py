"""`prunerd submit profile|prune|selftest ...`: queue a job on the daemon (optionally wait for it)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from typing import Any

import msgspec

from pruner.config import METHODS

from ..client import Client, ProgressFilter, add_client_args, format_event, run_command
from ..protocol import PARAMS_TYPES
from .argtypes import (
    BUDGET_S_REFUSED,
    fraction,
    input_size,
    non_negative_float,
    positive_float,
    positive_int,
    refused,
)
from .job_result import print_result


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"option must be KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)  # numbers, true/false, null
    except json.JSONDecodeError:
        return key, value
    if isinstance(parsed, float) and not math.isfinite(parsed):  # NaN, Infinity, 1e999
        raise argparse.ArgumentTypeError(f"option {key} must be a finite number, got {value!r}")
    return key, parsed


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", help="built-in name, allowed module:callable, or .pt2 file in a model dir"
    )
    p.add_argument("--in-channels", type=positive_int, default=None)
    p.add_argument("--num-classes", type=positive_int, default=None)
    p.add_argument(
        "--input-size", type=input_size, default=None, metavar="HxW", help="input size, e.g. 32x32"
    )
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (under a daemon path root)")


def _prune_args(p: argparse.ArgumentParser) -> None:
    """The budget, data and output flags, named as `prunerd prune` names them (the names
    before them still work: --budget-ratio, --dataset, --output)."""
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument(
        "--budget",
        "--budget-ratio",
        dest="budget_ratio",
        type=fraction,
        metavar="FRACTION",
        help="fraction of the baseline latency the job measures",
    )
    budget.add_argument(
        "--budget-ms", type=positive_float, metavar="MS", help="latency budget in milliseconds"
    )
    p.add_argument(
        "--timing-budget-s",
        type=positive_float,
        metavar="S",
        help="timing budget per measurement, seconds (10)",
    )
    # Once the latency budget in seconds here: refused rather than read one way or the other.
    p.add_argument("--budget-s", type=refused(BUDGET_S_REFUSED), help=argparse.SUPPRESS)
    p.add_argument("--method", default=None, choices=METHODS)
    p.add_argument("--data", "--dataset", dest="dataset", metavar="DATA", help="dataset name")
    p.add_argument(
        "--out",
        "--output",
        dest="output",
        metavar="DIR",
        help="where the pruned model goes (a new directory under a daemon path root)",
    )
    p.add_argument(
        "--option",
        type=_option,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other prune option by its name in a report's config (epochs, limit, "
        "iterative, ...; repeatable)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("submit", help="queue a job on the daemon")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)

    prof = kinds.add_parser("profile", help="per-block serial latency of a model")
    _model_args(prof)
    prof.add_argument(
        "--fused", action="store_true", default=None, help="time fused Conv-BN-ReLU blocks"
    )
    prof.add_argument(
        "--remeasure", action="store_true", default=None, help="ignore the latency table"
    )

    prune = kinds.add_parser(
        "prune",
        help="latency-budgeted pruning",
        description="Queue what `prunerd prune` does: the budget, data and output as its flags "
        "name them; any other option as --option NAME=VALUE (e.g. epochs=1).",
    )
    _model_args(prune)
    _prune_args(prune)
    ranks = prune.add_mutually_exclusive_group()
    ranks.add_argument(
        "--gpus",
        type=positive_int,
        default=None,
        metavar="N",
        help="run the job as N processes (ranks, torch.distributed under torchrun's elastic "
        "agent), one GPU each (NCCL); implies --device cuda. The daemon's --max-gpus caps N "
        "(default: the GPUs it sees). Rank 0 alone measures latency",
    )
    ranks.add_argument(
        "--procs",
        type=positive_int,
        default=None,
        metavar="N",
        help="run the job as N CPU processes (ranks, gloo), for machines without a GPU; "
        "implies --device cpu. The daemon's --max-procs caps N (default 1). Each rank runs "
        "one torch thread (torchrun's default) unless --option threads=T; rank 0 times with "
        "--option latency_threads=T when given",
    )

    self_test = kinds.add_parser(
        "selftest", help="a job that only reports progress (checks the daemon's workers)"
    )
    # The daemon's own ranges (0 seconds: a worker that starts, reports once and exits).
    self_test.add_argument(
        "--seconds", type=non_negative_float, default=None, help="how long it runs (1)"
    )
    self_test.add_argument(
        "--steps", type=positive_int, default=None, help="progress events it sends (10)"
    )
    self_test.add_argument("--fail", action="store_true", default=None, help="end by failing")

    for sub in (prof, prune, self_test):
        sub.add_argument(
            "--wait", action="store_true", help="stream the job's events until it finishes"
        )
        add_client_args(sub)
        sub.set_defaults(func=handler)


def params_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The job's fields among the flags given (the daemon owns the defaults).

    Taken by name from the protocol's parameter type, so that a global flag of the
    command line (``--system-malloc``) or a client flag never ends up in the request.
    """
    names = [f.name for f in msgspec.structs.fields(PARAMS_TYPES[args.kind]) if f.name != "options"]
    params = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    if getattr(args, "budget_ms", None) is not None:
        params["budget_s"] = args.budget_ms / 1e3
    options = dict(getattr(args, "option", None) or [])
    if getattr(args, "timing_budget_s", None) is not None:
        options["timing_budget_s"] = args.timing_budget_s
    if options:
        params["options"] = options
    params.update(_ranks(args))
    return params


def _ranks(args: argparse.Namespace) -> dict[str, Any]:
    """``ranks`` and ``device`` from --gpus N (on cuda) or --procs N (on the CPU)."""
    gpus, procs = getattr(args, "gpus", None), getattr(args, "procs", None)
    if gpus is None and procs is None:
        return {}
    flag, n, device = ("--gpus", gpus, "cuda") if gpus is not None else ("--procs", procs, "cpu")
    given = args.device
    if given is not None and (given.split(":")[0] != device or (":" in given and n > 1)):
        raise ValueError(
            f"{flag} {n} runs on {device}, one rank per {'GPU' if device == 'cuda' else 'process'}; "
            f"--device {given} contradicts it: leave --device out"
        )
    return {"ranks": n, "device": given or device}


def handler(args: argparse.Namespace) -> int:
    params = params_from_args(args)  # a contradiction among the flags: before any connection

    def go(c: Client) -> tuple[int, Any, str]:
        # Subscribe before submitting, so that no event of the new job is missed.
        sub = c.subscribe() if args.wait else None
        job = c.submit(args.kind, **params)
        if not args.wait:
            return 0, job, job["id"]
        try:
            return _wait(c, job["id"], sub, args)
        except KeyboardInterrupt:  # the job is the daemon's now: say how to find it again
            print(
                f"prunerd: stopped waiting; job {job['id']} goes on in the daemon (`prunerd "
                f"watch {job['id']}` follows it again, `prunerd cancel {job['id']}` stops it)",
                file=sys.stderr,
            )
            return 130, {"job": job, "events": []}, ""
        finally:
            sub.close()  # an open socket would hold the process in ZeroMQ's exit

    return run_command(args, go)


def _wait(c: Client, job_id: str, sub: Any, args: argparse.Namespace) -> tuple[int, Any, str]:
    """Follow the job to its end: its events (all of them with --json), then its result."""
    lines, shown = [], ProgressFilter()
    for event in c.watch(job_id, sub=sub):
        if args.json:
            lines.append(dataclasses.asdict(event))
        else:
            for line in shown.feed(event):
                print(format_event(line), flush=True)
    final = c.status(job_id)["job"]
    status = 0 if final["status"] == "done" else 1
    if status == 0 and not args.json:
        print_result(c, job_id, args.kind)
    return status, {"job": final, "events": lines}, ""

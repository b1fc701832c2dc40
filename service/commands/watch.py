"""`prunerd watch ID`: live progress of a job from the daemon's event stream."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from ..client import Client, ProgressFilter, add_client_args, format_event, run_command
from .argtypes import positive_float
from .job_result import print_result


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("watch", help="stream a job's events until it finishes")
    p.add_argument("job_id")
    p.add_argument(
        "--timeout-job",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="give up after this long (default: wait for the job)",
    )
    add_client_args(p)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    def go(c: Client) -> tuple[int, Any, str]:
        job = c.status(args.job_id)["job"]  # unknown ids fail here, with the daemon's message
        last, shown = job["status"], ProgressFilter()
        for event in c.watch(args.job_id, args.timeout_job):
            last = event.event
            if args.json:
                # One JSON object per line, as the events arrive.
                print(json.dumps(dataclasses.asdict(event)), flush=True)
            else:
                for line in shown.feed(event):
                    print(format_event(line), flush=True)
        if last == "done" and not args.json:
            print_result(c, args.job_id, job["kind"])
        args.json = False  # already printed, one line per event
        return (0 if last == "done" else 1), None, ""

    return run_command(args, go)

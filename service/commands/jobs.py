"""`prunerd jobs`: list the daemon's jobs (newest first)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..client import Client, add_client_args, run_command
from ..protocol import JOB_STATUSES, model_label
from .argtypes import positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("jobs", help="list jobs")
    p.add_argument("--status", choices=JOB_STATUSES, default=None)
    p.add_argument(
        "--limit", type=positive_int, default=50, help="list at most this many jobs (default 50)"
    )
    add_client_args(p)
    p.set_defaults(func=handler)


def format_jobs(jobs: list[dict[str, Any]]) -> str:
    lines = [f"{'ID':<12}  {'KIND':<8}  {'STATUS':<11}  {'CREATED':<19}  {'SECONDS':>8}  MODEL"]
    for j in jobs:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j["created_at"]))
        dur = "" if j["duration_s"] is None else f"{j['duration_s']:.1f}"
        model = model_label(j["params"]) if "model" in j["params"] else ""
        lines.append(
            f"{j['id']:<12}  {j['kind']:<8}  {j['status']:<11}  {created:<19}  {dur:>8}  {model}"
        )
    return "\n".join(lines)


def handler(args: argparse.Namespace) -> int:
    def go(c: Client) -> tuple[int, Any, str]:
        jobs = c.jobs(args.limit, args.status)
        return 0, {"jobs": jobs}, format_jobs(jobs)

    return run_command(args, go)

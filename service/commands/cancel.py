"""`prunerd cancel ID`: cancel a queued or running job."""

from __future__ import annotations

import argparse
from typing import Any

from ..client import Client, add_client_args, run_command


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("cancel", help="cancel a queued or running job")
    p.add_argument("job_id")
    add_client_args(p)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    def go(c: Client) -> tuple[int, Any, str]:
        data = c.cancel(args.job_id)
        text = f"{args.job_id}: " + (
            "stopping its worker" if data["cancelling"] else data["job"]["status"]
        )
        return 0, data, text

    return run_command(args, go)

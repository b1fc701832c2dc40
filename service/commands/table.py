"""`prunerd table`: look at and prune the latency lookup table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from profiler import LatencyTable

from .render import console


def handle(args: argparse.Namespace) -> int:
    with LatencyTable(args.table) as table:
        if args.action == "clear":
            if args.device is None and args.older_than_days is None and not args.all:
                raise ValueError(
                    "`prunerd table clear` needs --device FINGERPRINT, --older-than-days N or --all"
                )
            age = None if args.older_than_days is None else args.older_than_days * 86400.0
            removed = table.invalidate(fingerprint=args.device, older_than_s=age)
            print(f"removed {removed} measurements from {table.path}")
            return 0
        devices = table.devices()
        counts = table.counts()
    if args.json:
        print(
            json.dumps(
                {
                    "path": str(table.path),
                    "devices": [
                        {**d.to_dict(), "measurements": counts.get(d.fingerprint, 0)}
                        for d in devices
                    ],
                }
            )
        )
        return 0
    out = console()
    out.print(f"latency table {table.path}: {sum(counts.values())} measurements")
    for d in devices:
        out.print(
            f"  {d.fingerprint}  {d.kind}  {d.name}  threads={d.threads}  torch {d.torch_version}  measurements={counts.get(d.fingerprint, 0)}"
        )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table", help="list or clear the latency lookup table", description=__doc__)
    p.add_argument("action", choices=["list", "clear"], nargs="?", default="list")
    p.add_argument(
        "--table",
        type=Path,
        default=None,
        help="latency table (default: ~/.cache/prunerd/latency.sqlite)",
    )
    p.add_argument("--device", default=None, help="clear: only this device fingerprint")
    p.add_argument(
        "--older-than-days",
        type=float,
        default=None,
        help="clear: only measurements older than this",
    )
    p.add_argument("--all", action="store_true", help="clear: everything")
    p.add_argument("--json", action="store_true", help="list as JSON")
    p.set_defaults(func=handle)

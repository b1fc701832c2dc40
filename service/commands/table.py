"""`prunerd table`: look at and prune the latency lookup table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from profiler import LatencyTable, TableQuality, default_table_path

from .argtypes import non_negative_float, positive_float
from .render import console

CLEAR_ONLY = ("device", "older_than_days", "spread_above", "failed", "all")


def handle(args: argparse.Namespace) -> int:
    given = [
        f"--{n.replace('_', '-')}" for n in CLEAR_ONLY if getattr(args, n) not in (None, False)
    ]
    if args.action == "clear" and not given:
        raise ValueError(
            "`prunerd table clear` needs --device FINGERPRINT, --older-than-days N, "
            "--failed, --spread-above RATIO or --all"
        )
    if args.action == "list" and given:
        raise ValueError(
            f"{', '.join(given)} {'selects' if len(given) == 1 else 'select'} what `prunerd "
            "table clear` removes; `list` shows every device (add `clear` to remove)"
        )
    path = args.table if args.table is not None else default_table_path()
    if not path.exists():  # looking must not leave an empty table (and its folders) behind
        return _no_table(path, args)
    with LatencyTable(path) as table:
        if args.action == "clear":
            return _clear(table, args)
        devices = table.devices()
        quality = table.quality_summary()
    counts = {fp: q.measurements for fp, q in quality.items()}
    if args.json:
        print(
            json.dumps(
                {
                    "path": str(table.path),
                    "exists": True,
                    "devices": [
                        {
                            **d.to_dict(),
                            "measurements": counts.get(d.fingerprint, 0),
                            "quality": _quality_dict(quality.get(d.fingerprint)),
                        }
                        for d in devices
                    ],
                }
            )
        )
        return 0
    out = console()
    out.print(f"latency table {table.path}: {sum(counts.values())} measurements")
    for d in devices:
        q = quality.get(d.fingerprint)
        checks = (
            ""
            if q is None
            else f"  failed checks={q.failed}  spread median {q.median_spread:.1%}"
            f" worst {q.worst_spread:.1%}"
        )
        out.print(
            f"  {d.fingerprint}  {d.kind}  {d.name}  threads={d.threads}  torch {d.torch_version}"
            f"  measurements={counts.get(d.fingerprint, 0)}{checks}"
        )
    return 0


def _clear(table: LatencyTable, args: argparse.Namespace) -> int:
    known = [d.fingerprint for d in table.devices()]
    if args.device is not None and args.device not in known:
        raise ValueError(
            f"--device {args.device!r}: no measurements of that fingerprint in "
            f"{table.path}; fingerprints there: {', '.join(known) or 'none'}"
        )
    age = None if args.older_than_days is None else args.older_than_days * 86400.0
    removed = table.invalidate(
        fingerprint=args.device,
        older_than_s=age,
        failed_only=args.failed,
        spread_above=args.spread_above,
    )
    print(f"removed {removed} measurements from {table.path}")
    return 0


def _no_table(path: Path, args: argparse.Namespace) -> int:
    """``list`` or ``clear`` of a table no measurement has been stored in yet."""
    if args.action == "clear" and args.device is not None:
        raise ValueError(
            f"--device {args.device!r}: latency table {str(path)!r} does not exist, so it holds "
            "no measurements; name the table that does with --table"
        )
    if args.action == "clear":
        print(f"removed 0 measurements: latency table {path} does not exist")
    elif args.json:
        print(json.dumps({"path": str(path), "exists": False, "devices": []}))
    else:
        print(f"latency table {path}: does not exist yet (`prunerd profile` makes it)")
    return 0


def _quality_dict(q: TableQuality | None) -> dict[str, float | int] | None:
    return None if q is None else q.to_dict()


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
        type=non_negative_float,
        default=None,
        help="clear: only measurements older than this",
    )
    p.add_argument(
        "--failed",
        action="store_true",
        help="clear: only measurements stored despite failed checks (--store-failed)",
    )
    p.add_argument(
        "--spread-above",
        type=positive_float,
        default=None,
        metavar="RATIO",
        help="clear: only measurements whose IQR / median exceeds RATIO (e.g. 0.2)",
    )
    p.add_argument("--all", action="store_true", help="clear: everything")
    p.add_argument("--json", action="store_true", help="list as JSON")
    p.set_defaults(func=handle)

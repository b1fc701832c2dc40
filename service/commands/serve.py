"""`prunerd serve`: run the daemon in the foreground."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..config import LIMIT_FIELDS, WORKER_STARTS, Settings, load_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the daemon (ZeroMQ requests/events/ingest + Prometheus /metrics)",
        description="Run the prunerd daemon. Every flag can also be set in a TOML file (--config); "
        "flags win over the file. Port 0 picks a free port; the bound endpoints are written to "
        "STATE_DIR/daemon.json.",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        default=None,
        help="TOML settings file (see docs/service.md)",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="jobs, results and latency table (SQLite)",
    )
    p.add_argument(
        "--max-workers", metavar="N", type=int, default=None, help="jobs run at once (default 1)"
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument(
        "--worker-start",
        choices=WORKER_STARTS,
        default=None,
        help="how job workers start: forked from a process that has imported torch and "
        "prunerd (forkserver, the default: about 1.5 s less per job) or each in a new "
        "interpreter (spawn: nothing held between jobs)",
    )
    _add_endpoint_arguments(p.add_argument_group("where it listens"))
    _add_access_arguments(p.add_argument_group("what jobs may read, and who may ask"))
    _add_rank_arguments(
        p.add_argument_group(
            "jobs run as several processes (`prunerd submit prune --gpus N` / `--procs N`)"
        )
    )
    limits = p.add_argument_group("quotas and bounds ([limits] in the config file)")
    defaults = Settings()
    for name, what in LIMIT_FIELDS.items():
        default = getattr(defaults, name)
        limits.add_argument(
            "--" + name.replace("_", "-"),
            type=type(default),
            default=None,
            metavar="N",
            help=f"{what} (default {default})",
        )
    p.set_defaults(func=handler)


def _add_endpoint_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--host", metavar="ADDR", default=None, help="address to bind (default 127.0.0.1)"
    )
    g.add_argument(
        "--rpc-port",
        metavar="PORT",
        type=int,
        default=None,
        help="ROUTER request port (default 5750)",
    )
    g.add_argument(
        "--events-port",
        metavar="PORT",
        type=int,
        default=None,
        help="PUB event port (default 5751)",
    )
    g.add_argument(
        "--ingest-port",
        metavar="PORT",
        type=int,
        default=None,
        help="PULL deployment-sample port (default 5752)",
    )
    g.add_argument(
        "--metrics-port",
        metavar="PORT",
        type=int,
        default=None,
        help="Prometheus /metrics port (default 9750)",
    )
    g.add_argument(
        "--metrics-host",
        metavar="ADDR",
        default=None,
        help="address of /metrics (default 127.0.0.1)",
    )


def _add_access_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--allow-import",
        action="append",
        dest="allow_imports",
        default=None,
        metavar="PREFIX",
        help="allow models/datasets under this import path (repeatable)",
    )
    g.add_argument(
        "--model-dir",
        action="append",
        dest="model_dirs",
        default=None,
        metavar="DIR",
        help="allow torch.export files under DIR (repeatable)",
    )
    g.add_argument(
        "--path-root",
        action="append",
        dest="path_roots",
        default=None,
        metavar="DIR",
        help="allow checkpoints/outputs under DIR (repeatable)",
    )
    g.add_argument(
        "--server-secret-key",
        metavar="FILE",
        type=Path,
        default=None,
        help="CurveZMQ: the daemon's .key_secret",
    )
    g.add_argument(
        "--authorized-keys-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="CurveZMQ: directory of allowed client public keys (*.key)",
    )
    g.add_argument(
        "--monitor-keys-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="CurveZMQ: directory of monitor public keys (*.key): they may only send samples",
    )
    g.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow a non-loopback --host without CurveZMQ, or --metrics-host without auth",
    )
    g.add_argument(
        "--metrics-auth-file",
        metavar="FILE",
        type=Path,
        default=None,
        help="file with one line user:password; /metrics then needs HTTP basic auth",
    )


def _add_rank_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--max-gpus",
        type=int,
        default=None,
        metavar="K",
        help="GPUs one job may use: a prune job with --gpus N runs N processes (ranks), one "
        "GPU each (cuda:0..N-1 of those this daemon sees, NCCL); a job on cuda without --gpus "
        "uses one. Default: the CUDA devices this daemon sees (0 without CUDA)",
    )
    g.add_argument(
        "--max-procs",
        type=int,
        default=None,
        metavar="N",
        help="CPU processes one job may run as: a prune job with --procs N runs N ranks on "
        "the CPU (gloo), for machines without a GPU, sharing its cores (one torch thread "
        "each unless the job's threads option says more). Default 1 (every job one process)",
    )


def handler(args: argparse.Namespace) -> int:
    from ..daemon import run

    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = load_settings(
        args.config,
        host=args.host,
        rpc_port=args.rpc_port,
        events_port=args.events_port,
        ingest_port=args.ingest_port,
        metrics_port=args.metrics_port,
        state_dir=args.state_dir,
        max_workers=args.max_workers,
        worker_start=args.worker_start,
        allow_imports=args.allow_imports,
        model_dirs=args.model_dirs,
        path_roots=args.path_roots,
        server_secret_key=args.server_secret_key,
        authorized_keys_dir=args.authorized_keys_dir,
        monitor_keys_dir=args.monitor_keys_dir,
        insecure=args.insecure,
        metrics_host=args.metrics_host,
        metrics_auth_file=args.metrics_auth_file,
        max_gpus=args.max_gpus,
        max_procs=args.max_procs,
        **{name: getattr(args, name) for name in LIMIT_FIELDS},
    )
    return run(settings)


def main(argv: list[str] | None = None) -> int:
    """``python -m service.commands.serve``: the daemon without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="prunerd-serve")
    register(parser.add_subparsers())
    args = parser.parse_args(["serve", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

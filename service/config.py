"""Daemon settings: defaults, a TOML file, then command-line flags (each overriding the one before).

Example ``prunerd.toml``::

    host = "127.0.0.1"
    rpc_port = 5750
    state_dir = "/var/lib/prunerd"
    max_workers = 1

    [models]
    allow_imports = ["torchvision.models", "mycompany.nets"]  # import-path prefixes
    model_dirs = ["/models"]                                  # torch.export files
    path_roots = ["/models", "/data/checkpoints"]             # checkpoints a job may read

    [curve]
    server_secret_key = "/etc/prunerd/keys/server.key_secret"
    authorized_keys_dir = "/etc/prunerd/authorized_keys"

    [budgets]  # deployment name -> latency budget in seconds
    "resnet56-pruned" = 0.004
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ranks import MAX_RANKS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the stdlib module arrived in 3.11
    tomllib = None  # type: ignore[assignment]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_RPC_PORT = 5750
DEFAULT_EVENTS_PORT = 5751
DEFAULT_INGEST_PORT = 5752
DEFAULT_METRICS_PORT = 9750
WORKER_STARTS = ("forkserver", "spawn")  # multiprocessing start methods a worker may use


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or "localhost"; a name that needs DNS counts as not loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_state_dir() -> Path:
    """``$PRUNERD_STATE_DIR``, else ``$XDG_STATE_HOME/prunerd``, else ``~/.local/state/prunerd``."""
    if env := os.environ.get("PRUNERD_STATE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "prunerd"


@dataclass(frozen=True)
class Settings:
    """Everything ``prunerd serve`` needs. Ports of 0 mean "any free port" (tests use that)."""

    host: str = DEFAULT_HOST
    rpc_port: int = DEFAULT_RPC_PORT
    events_port: int = DEFAULT_EVENTS_PORT
    ingest_port: int = DEFAULT_INGEST_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    state_dir: Path = field(default_factory=default_state_dir)
    max_workers: int = 1  # concurrent jobs; 1 keeps latency measurements free of contention
    # A request bigger than max_request_bytes gets a "too_large" error reply; one bigger than
    # max_frame_bytes (ZMQ_MAXMSGSIZE) is dropped by libzmq with the connection, unanswered.
    max_request_bytes: int = 64 * 1024
    max_frame_bytes: int = 1024 * 1024
    ingest_hwm: int = 10_000  # messages queued per ingest peer before libzmq stops reading
    max_deployments: int = 256  # bounds the cardinality of the deployment label
    worker_grace_s: float = 5.0  # SIGTERM -> SIGKILL delay when stopping a worker
    # How job workers start: "forkserver" forks each from a process that has imported torch
    # and prunerd (about 1.5 s less per job; the server holds about 225 MB); "spawn" starts a new
    # interpreter for each job.
    worker_start: str = "forkserver"
    allow_imports: tuple[str, ...] = ()
    model_dirs: tuple[Path, ...] = ()
    path_roots: tuple[Path, ...] = ()
    server_secret_key: Path | None = None
    authorized_keys_dir: Path | None = None  # operator keys: submit, cancel, list, samples
    monitor_keys_dir: Path | None = None  # monitor keys: deployment samples only
    insecure: bool = False  # allow a non-loopback bind without CurveZMQ
    metrics_host: str = DEFAULT_HOST
    metrics_auth_file: Path | None = None  # "user:password"; /metrics then needs basic auth
    budgets: dict[str, float] = field(default_factory=dict)
    # Quotas and bounds ([limits]): what one request or one client may ask of the daemon.
    max_queued_per_client: int = 32
    max_queued_total: int = 256
    list_page_max: int = 100  # jobs in one `list` reply
    max_reply_bytes: int = 256 * 1024  # a `list` page stops before a reply grows past this
    max_batch_size: int = 1024
    max_channels: int = 64  # input channels of a model
    max_input_side: int = 1024  # pixels, height and width each
    max_activation_bytes: int = 4 * 1024**3  # estimated activation memory of one forward pass
    max_epochs: int = 100  # every *epochs and *rounds option of a prune job
    max_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_timing_budget_s: float = 600.0
    ingest_messages_per_turn: int = 200  # then the loop serves requests again
    ingest_slice_ms: float = 5.0  # or after this long, whichever comes first
    ingest_memory_bytes: int = 64 * 1024**2  # all senders together, queued in libzmq
    max_sample_bytes: int = 64 * 1024  # one sample message (ZMQ_MAXMSGSIZE of the ingest socket)
    max_connections: int = 256  # per request and event socket
    max_ingest_connections: int = 64
    fd_reserve: int = 256  # file descriptors no client connection may take (jobs, SQLite, HTTP)
    max_deployments_per_client: int = 16
    deployment_idle_s: float = 600.0  # a deployment silent this long may be evicted
    # Processes one prune job may run as (params.ranks, `prunerd submit prune --gpus/--procs`):
    # on CUDA one GPU each, capped by max_gpus (None: the CUDA devices the daemon sees, 0
    # without CUDA); on CPU, capped by max_procs (1: one process unless the operator allows more).
    max_gpus: int | None = None
    max_procs: int = 1

    @property
    def curve(self) -> bool:
        return self.server_secret_key is not None

    def endpoint(self, port: int) -> str:
        return f"tcp://{self.host}:{port}"

    def __post_init__(self) -> None:
        for name in ("rpc_port", "events_port", "ingest_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ValueError(f"{name} must be in 0..65535, got {port}")
        if self.max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {self.max_workers}")
        if self.max_request_bytes > self.max_frame_bytes:
            raise ValueError("max_request_bytes must not exceed max_frame_bytes")
        if (self.server_secret_key is None) != (self.authorized_keys_dir is None):
            raise ValueError(
                "CurveZMQ needs both server_secret_key and authorized_keys_dir (or neither)"
            )
        if self.monitor_keys_dir is not None and self.server_secret_key is None:
            raise ValueError(
                "monitor_keys_dir needs CurveZMQ (server_secret_key, authorized_keys_dir)"
            )
        if not is_loopback(self.host) and not self.curve and not self.insecure:
            raise ValueError(
                f"host {self.host!r} is not loopback: anyone who reaches it could run jobs. "
                "Turn on CurveZMQ (server_secret_key, authorized_keys_dir), or pass --insecure "
                "(insecure = true) if the network is trusted"
            )
        if (
            not is_loopback(self.metrics_host)
            and self.metrics_auth_file is None
            and not self.insecure
        ):
            raise ValueError(
                f"metrics_host {self.metrics_host!r} is not loopback: set metrics_auth_file "
                "(basic auth) or pass --insecure"
            )
        _check_ranges({name: getattr(self, name) for name in (*_RANGED, "budgets", "worker_start")})
        if self.max_gpus is not None and not 0 <= self.max_gpus <= MAX_RANKS:
            raise ValueError(f"max_gpus must be in 0..{MAX_RANKS}, got {self.max_gpus}")
        if not 1 <= self.max_procs <= MAX_RANKS:
            raise ValueError(f"max_procs must be in 1..{MAX_RANKS}, got {self.max_procs}")
        if self.max_sample_bytes > self.max_frame_bytes:
            raise ValueError("max_sample_bytes must not exceed max_frame_bytes")


# Each [limits] setting and what it bounds; `prunerd serve` makes a flag of each.
LIMIT_FIELDS = {
    "max_queued_per_client": "jobs one client may have queued",
    "max_queued_total": "jobs queued across all clients",
    "list_page_max": "jobs in one `list` reply",
    "max_reply_bytes": "bytes a `list` reply may grow to",
    "max_batch_size": "batch_size of a job",
    "max_channels": "in_channels of a job's model",
    "max_input_side": "input height and width, pixels",
    "max_activation_bytes": "estimated activation memory of one forward pass",
    "max_epochs": "epochs and rounds options of a prune job",
    "max_threads": "threads options of a prune job",
    "max_timing_budget_s": "timing_budget_s option of a prune job",
    "ingest_messages_per_turn": "sample messages read before serving requests again",
    "ingest_slice_ms": "milliseconds spent reading samples before serving requests again",
    "ingest_memory_bytes": "sample messages queued in libzmq, all senders together",
    "max_sample_bytes": "bytes of one sample message",
    "max_connections": "connections to the request socket, and to the event socket",
    "max_ingest_connections": "connections to the sample socket",
    "fd_reserve": "file descriptors kept free of client connections",
    "max_deployments_per_client": "deployment names one client may report",
    "deployment_idle_s": "seconds without samples before a deployment may be evicted",
}

# Every number but the ports, max_gpus and max_procs (their own ranges): > 0, finite;
# worker_grace_s may be 0 (no grace), and a NaN one would never escalate to SIGKILL.
_RANGED = (
    *LIMIT_FIELDS,
    "max_request_bytes",
    "max_frame_bytes",
    "ingest_hwm",
    "max_deployments",
    "worker_grace_s",
)


def _check_ranges(values: dict[str, Any]) -> None:
    """ValueError for the first setting in ``values`` out of its range."""
    for name, value in values.items():
        if name == "budgets":
            for deployment, seconds in value.items():
                if not 0 < seconds < math.inf:
                    raise ValueError(
                        f"budget for deployment {deployment!r} must be finite and > 0 seconds, "
                        f"got {seconds}"
                    )
        elif name == "worker_start":
            if value not in WORKER_STARTS:
                raise ValueError(
                    f"worker_start must be one of {', '.join(WORKER_STARTS)}, got {value!r}"
                )
        elif name in _RANGED:
            zero = name == "worker_grace_s"
            if not ((value >= 0) if zero else (value > 0)) or not value < math.inf:
                rule = ">= 0" if zero else "> 0"
                raise ValueError(f"{name} must be finite and {rule}, got {value}")


_PATH_FIELDS = {
    "state_dir",
    "server_secret_key",
    "authorized_keys_dir",
    "monitor_keys_dir",
    "metrics_auth_file",
}
_PATH_TUPLES = {"model_dirs", "path_roots"}


def _flatten(doc: dict[str, Any]) -> dict[str, Any]:
    """Map the TOML tables onto Settings fields ([models] and [curve] are just grouping)."""
    flat = {k: v for k, v in doc.items() if not isinstance(v, dict)}
    for table in ("models", "curve", "limits"):
        flat.update(doc.get(table, {}))
    if "budgets" in doc:
        flat["budgets"] = dict(doc["budgets"])
    return flat


def _admits(value: Any, annotation: str) -> bool:
    """Whether a setting's ``value`` (from TOML or a flag) fits its field's ``annotation``:
    ``"3"`` is not a count, ``true`` not a number, a string not a list of import prefixes."""
    kinds = [k.strip() for k in annotation.split("|")]
    if value is None:
        return "None" in kinds
    kind = kinds[0]
    if kind.startswith("tuple["):
        item = kind[len("tuple[") : -len(", ...]")]
        return isinstance(value, list | tuple) and all(_admits(v, item) for v in value)
    if kind.startswith("dict["):  # budgets: deployment name -> seconds
        return isinstance(value, dict) and all(_admits(v, "float") for v in value.values())
    if isinstance(value, bool):
        return kind == "bool"
    admitted = {"int": int, "float": int | float, "str": str, "bool": bool, "Path": str | Path}
    return isinstance(value, admitted[kind])


_KIND_NAMES = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "Path": "a path (a string)",
    "tuple[str, ...]": "a list of strings",
    "tuple[Path, ...]": "a list of paths",
    "dict[str, float]": "a table of deployment name = seconds",
}


def _check_types(values: dict[str, Any]) -> None:
    for f in dataclasses.fields(Settings):
        if f.name in values and not _admits(values[f.name], str(f.type)):
            want = _KIND_NAMES[str(f.type).split("|")[0].strip()]
            raise ValueError(f"setting {f.name} must be {want}, got {values[f.name]!r}")


def _check_known(values: dict[str, Any]) -> None:
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown settings {unknown}; known: {sorted(known)}")


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    _check_known(values)
    _check_types(values)
    out: dict[str, Any] = {}
    for k, v in values.items():
        if k in _PATH_FIELDS:
            v = None if v is None else Path(v).expanduser()
        elif k in _PATH_TUPLES:
            v = tuple(Path(p).expanduser().resolve() for p in v)
        elif k == "allow_imports":
            v = tuple(v)
        elif k == "budgets":
            v = {str(name): float(seconds) for name, seconds in v.items()}
        out[k] = v
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    """The flat settings of TOML file ``path``; errors name the file."""
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"config file {str(path)!r} {what}")
    try:
        with path.open("rb") as f:
            values = _flatten(tomllib.load(f))
        _check_known(values)
        _check_types(values)
        _check_ranges(values)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"config file {str(path)!r}: {e}") from None
    return values


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Defaults, then ``config_file`` (TOML), then ``overrides`` whose value is not None."""
    values: dict[str, Any] = {}
    if config_file is not None:
        if tomllib is None:
            raise RuntimeError("reading a TOML config file needs Python >= 3.11 (tomllib)")
        values.update(_read_toml(Path(config_file)))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**_coerce(values))

"""The wire protocol: versioned JSON messages, validated into typed requests. Never pickle.

Request (one ZeroMQ frame, UTF-8 JSON object)::

    {"v": 1, "op": "submit", "req_id": "optional, echoed back",
     "kind": "profile", "params": {"model": "resnet20", "input_size": [8, 8]}}

Ops: ``ping``; ``submit`` (kind, params); ``status``, ``result``, ``cancel`` (job_id);
``list`` (limit, status). Unknown fields are errors, so a typo never passes silently.

Reply: ``{"v": 1, "ok": true, "op": ..., "req_id": ..., "data": {...}}`` or
``{"v": 1, "ok": false, "op": ..., "req_id": ..., "error": {"code", "message", "field"}}``.

Events (PUB, two frames): topic ``job.<id>`` and ``{"v": 1, "job_id", "event", "time", "data"}``.

Deployment samples (PUSH -> PULL, one frame):
``{"v": 1, "d": deployment, "s": [seconds, ...], "b": budget seconds or null, "x": dropped so far}``.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pruner.config import DATASETS, METHODS

from .trust import untrusted_reason

PROTOCOL_VERSION = 1

OPS = ("ping", "submit", "status", "list", "cancel", "result")
EVENTS = ("queued", "started", "progress", "block", "done", "failed", "cancelled", "interrupted")
JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
FINISHED_STATUSES = ("done", "failed", "cancelled", "interrupted")

# Datasets the pruner ships (DESIGN.md); anything else must be an allowed import path.
# pruner.config holds the names and imports no torch.
BUILTIN_DATASETS = DATASETS
PRUNE_METHODS = METHODS

JOB_ID_RE = re.compile(r"^[0-9a-f]{12}$")
DEPLOYMENT_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_DEVICE_RE = re.compile(r"^(cpu|cuda(:[0-9]{1,2})?)$")
# ``package.module:name``: one name defined in the module, never a dotted attribute path
# (``allowed.module:torch.os.system`` would walk out of the allowed module), never private.
_IMPORT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z][A-Za-z0-9_]*")
MAX_STRING = 4096
MAX_SAMPLES_PER_MESSAGE = 65536
MAX_SAMPLE_S = 3600.0  # a latency sample above an hour is a broken sender, not a measurement


class ProtocolError(Exception):
    """A request the daemon refuses; becomes an error reply.

    ``code`` is machine-readable (``bad_json``, ``too_large``, ``bad_version``, ``bad_request``,
    ``unknown_op``, ``unknown_kind``, ``not_allowed``, ``not_found``, ``conflict``,
    ``unavailable``, ``internal``); ``field`` is the dotted path of the offending field, if any.
    """

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "field": self.field}


# --------------------------------------------------------------------------- field checks

_MISSING = object()


def _type_name(value: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), "null" if value is None else type(value).__name__)


def _take(d: dict[str, Any], key: str, where: str, default: Any = _MISSING) -> Any:
    if key in d:
        return d[key]
    if default is _MISSING:
        raise ProtocolError("bad_request", f"missing required field {where + key!r}", where + key)
    return default


def _show(value: Any) -> str:
    """A value for an error message: a 400-digit integer is named, not echoed."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def _int(d: dict[str, Any], key: str, where: str, lo: int, hi: int, default: Any = _MISSING) -> int:
    v = _take(d, key, where, default)
    # bool is a subclass of int in Python, but true is not a batch size.
    if type(v) is not int:
        raise ProtocolError(
            "bad_request", f"{where + key} must be an integer, got {_type_name(v)}", where + key
        )
    if not lo <= v <= hi:
        raise ProtocolError(
            "bad_request", f"{where + key} must be in {lo}..{hi}, got {_show(v)}", where + key
        )
    return v


def _float(
    d: dict[str, Any], key: str, where: str, lo: float, hi: float, default: Any = _MISSING
) -> float:
    v = _take(d, key, where, default)
    if v is None and default is None:
        return None  # type: ignore[return-value]
    # isfinite() on a 400-digit integer raises OverflowError; compare ints exactly instead.
    if type(v) not in (int, float) or (type(v) is float and not math.isfinite(v)):
        raise ProtocolError(
            "bad_request",
            f"{where + key} must be a finite number, got {_type_name(v)}",
            where + key,
        )
    if not lo <= v <= hi:
        raise ProtocolError(
            "bad_request", f"{where + key} must be in [{lo}, {hi}], got {_show(v)}", where + key
        )
    return float(v)


def _bool(d: dict[str, Any], key: str, where: str, default: Any = _MISSING) -> bool:
    v = _take(d, key, where, default)
    if type(v) is not bool:
        raise ProtocolError(
            "bad_request", f"{where + key} must be true or false, got {_type_name(v)}", where + key
        )
    return v


def _str(
    d: dict[str, Any],
    key: str,
    where: str,
    default: Any = _MISSING,
    choices: tuple[str, ...] | None = None,
    pattern: re.Pattern[str] | None = None,
    max_len: int = MAX_STRING,
) -> str:
    v = _take(d, key, where, default)
    if v is None and default is None:
        return None  # type: ignore[return-value]
    if type(v) is not str:
        raise ProtocolError(
            "bad_request", f"{where + key} must be a string, got {_type_name(v)}", where + key
        )
    if not v or len(v) > max_len or "\x00" in v:
        raise ProtocolError(
            "bad_request", f"{where + key} must be 1..{max_len} characters without NUL", where + key
        )
    if choices is not None and v not in choices:
        raise ProtocolError(
            "bad_request", f"{where + key} must be one of {list(choices)}, got {v!r}", where + key
        )
    # fullmatch: "$" in a pattern would also accept a trailing newline.
    if pattern is not None and not pattern.fullmatch(v):
        raise ProtocolError(
            "bad_request", f"{where + key}={v!r} does not match {pattern.pattern}", where + key
        )
    return v


def _size(d: dict[str, Any], key: str, where: str, default: tuple[int, int]) -> tuple[int, int]:
    v = _take(d, key, where, list(default))
    if (
        type(v) is not list
        or len(v) != 2
        or any(type(x) is not int or not 1 <= x <= 4096 for x in v)
    ):
        raise ProtocolError(
            "bad_request", f"{where + key} must be [height, width], ints in 1..4096", where + key
        )
    return (v[0], v[1])


def _no_extra(d: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(d) - allowed)
    if extra:
        raise ProtocolError(
            "bad_request",
            f"unknown field {where + extra[0]!r}; allowed: {sorted(allowed)}",
            where + extra[0],
        )


# --------------------------------------------------------------------------- model policy


@dataclass(frozen=True)
class ModelPolicy:
    """Which models, datasets and files a request may name.

    A request can never make the daemon (or its workers) import code outside
    ``allow_imports`` (dotted module prefixes), load an export file outside
    ``model_dirs``, or read a file outside ``path_roots``.
    """

    builtins: frozenset[str]
    allow_imports: tuple[str, ...] = ()
    model_dirs: tuple[Path, ...] = ()
    path_roots: tuple[Path, ...] = ()

    def import_allowed(self, target: str) -> bool:
        """``target`` is an exact ``module:name`` entry, or its module is under a module entry."""
        module = target.partition(":")[0]
        return any(
            target == p if ":" in p else module == p or module.startswith(p + ".")
            for p in self.allow_imports
        )

    def check_model(self, name: str, where: str) -> str:
        """The canonical model name (export files become absolute paths), or ProtocolError."""
        if name in self.builtins:
            return name
        if name.endswith((".pt2", ".pt2e")):
            path = self._confine(name, self.model_dirs, where, "model_dirs")
            if not _is_file(path):
                raise ProtocolError("not_found", f"model file {name!r} does not exist", where)
            root = next(r for r in self.model_dirs if path.is_relative_to(r))
            if reason := untrusted_reason(path, root):
                raise ProtocolError(
                    "not_allowed",
                    f"model file {name!r} is refused: {reason}; only files that no other user "
                    "can write are loaded",
                    where,
                )
            return str(path)
        if _IMPORT_RE.fullmatch(name) and self.import_allowed(name):
            return name
        raise ProtocolError(
            "not_allowed",
            f"model {name!r} is not a built-in ({', '.join(sorted(self.builtins))}), an allowed "
            f"import path (allow_imports={list(self.allow_imports)}) nor a .pt2 file in model_dirs",
            where,
        )

    def check_dataset(self, name: str, where: str) -> str:
        if name in BUILTIN_DATASETS or (_IMPORT_RE.fullmatch(name) and self.import_allowed(name)):
            return name
        raise ProtocolError(
            "not_allowed",
            f"dataset {name!r} is not a built-in ({', '.join(BUILTIN_DATASETS)}) nor an allowed import path",
            where,
        )

    def check_path(self, name: str, where: str, must_exist: bool = True) -> str:
        path = self._confine(name, self.path_roots, where, "path_roots")
        if must_exist and not _is_file(path):
            raise ProtocolError("not_found", f"file {name!r} does not exist", where)
        return str(path)

    def check_new_dir(self, name: str, where: str) -> str:
        """A path inside ``path_roots`` that does not exist yet (the daemon creates it)."""
        path = self._confine(name, self.path_roots, where, "path_roots")
        if os.path.lexists(path):
            raise ProtocolError(
                "conflict",
                f"{name!r} exists; a job writes into a new directory the daemon creates, so "
                "name one that does not exist yet",
                where,
            )
        return str(path)

    def check_dir(self, name: str, where: str) -> str:
        """An existing directory inside ``path_roots``."""
        path = self._confine(name, self.path_roots, where, "path_roots")
        try:
            is_dir = path.is_dir()
        except OSError:
            is_dir = False
        if not is_dir:
            raise ProtocolError("not_found", f"directory {name!r} does not exist", where)
        return str(path)

    @staticmethod
    def _confine(name: str, roots: tuple[Path, ...], where: str, setting: str) -> Path:
        candidates = [Path(name)] if Path(name).is_absolute() else [r / name for r in roots]
        for c in candidates:
            # resolve() follows symlinks and "..", so a link out of the root is caught too.
            try:
                resolved = c.resolve()
            except (OSError, RuntimeError):  # a symlink loop, a name too long
                continue
            if any(resolved.is_relative_to(r) for r in roots):
                return resolved
        raise ProtocolError(
            "not_allowed", f"path {name!r} is outside the configured {setting}", where
        )


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a directory on the way that we may not search
        return False


# --------------------------------------------------------------------------- job parameters


@dataclass(frozen=True)
class ModelParams:
    """Fields every job that loads a model shares."""

    model: str
    in_channels: int = 3
    num_classes: int = 10
    input_size: tuple[int, int] = (32, 32)
    batch_size: int = 1
    device: str = "cpu"
    checkpoint: str | None = None

    FIELDS: ClassVar[set[str]] = {
        "model",
        "in_channels",
        "num_classes",
        "input_size",
        "batch_size",
        "device",
        "checkpoint",
    }

    @staticmethod
    def parse_common(d: dict[str, Any], policy: ModelPolicy, w: str) -> dict[str, Any]:
        ckpt = _str(d, "checkpoint", w, default=None)
        return {
            "model": policy.check_model(_str(d, "model", w, max_len=1024), w + "model"),
            "in_channels": _int(d, "in_channels", w, 1, 4096, 3),
            "num_classes": _int(d, "num_classes", w, 1, 100_000, 10),
            "input_size": _size(d, "input_size", w, (32, 32)),
            "batch_size": _int(d, "batch_size", w, 1, 4096, 1),
            "device": _str(d, "device", w, "cpu", pattern=_DEVICE_RE),
            "checkpoint": None if ckpt is None else policy.check_path(ckpt, w + "checkpoint"),
        }

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["input_size"] = list(self.input_size)
        return d


@dataclass(frozen=True)
class ProfileParams(ModelParams):
    """A profile job: per-block serial latency of one model (see profiler.profile_model)."""

    fused: bool = False
    remeasure: bool = False

    @classmethod
    def parse(cls, d: dict[str, Any], policy: ModelPolicy) -> ProfileParams:
        w = "params."
        _no_extra(d, cls.FIELDS | {"fused", "remeasure"}, w)
        common = cls.parse_common(d, policy, w)
        return cls(
            **common, fused=_bool(d, "fused", w, False), remeasure=_bool(d, "remeasure", w, False)
        )


@dataclass(frozen=True)
class PruneParams(ModelParams):
    """A prune job: exactly one of ``budget_s`` (seconds) or ``budget_ratio`` (of the measured latency)."""

    budget_s: float | None = None
    budget_ratio: float | None = None
    method: str = "dbp"
    dataset: str = "digits"
    output: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, d: dict[str, Any], policy: ModelPolicy) -> PruneParams:
        w = "params."
        extra = {"budget_s", "budget_ratio", "method", "dataset", "output", "options"}
        _no_extra(d, cls.FIELDS | extra, w)
        common = cls.parse_common(d, policy, w)
        budget_s = _float(d, "budget_s", w, 1e-9, 3600.0, None)
        budget_ratio = _float(d, "budget_ratio", w, 1e-6, 1.0, None)
        if (budget_s is None) == (budget_ratio is None):
            raise ProtocolError(
                "bad_request",
                "give exactly one of params.budget_s and params.budget_ratio",
                w + "budget_s",
            )
        output = _str(d, "output", w, default=None)
        options = _take(d, "options", w, {})
        if type(options) is not dict or len(options) > 64:
            raise ProtocolError(
                "bad_request",
                "params.options must be an object of at most 64 entries",
                w + "options",
            )
        for k, v in options.items():
            # Plain scalars only: options are knobs, never code or nested documents.
            if len(k) > 64 or not (
                v is None or type(v) in (bool, int, str) or (type(v) is float and math.isfinite(v))
            ):
                raise ProtocolError(
                    "bad_request",
                    f"params.options.{k[:64]} must be a scalar",
                    w + "options." + k[:64],
                )
        parsed = cls(
            **common,
            budget_s=budget_s,
            budget_ratio=budget_ratio,
            method=_str(d, "method", w, "dbp", choices=PRUNE_METHODS),
            dataset=policy.check_dataset(
                _str(d, "dataset", w, "digits", max_len=1024), w + "dataset"
            ),
            output=None if output is None else policy.check_new_dir(output, w + "output"),
            options=_confined_options(options, policy, w + "options."),
        )
        if parsed.checkpoint is None:
            raise ProtocolError(
                "bad_request",
                "a prune job needs params.checkpoint: the trained model to prune",
                w + "checkpoint",
            )
        return parsed


def _confined_options(options: dict[str, Any], policy: ModelPolicy, w: str) -> dict[str, Any]:
    """Options that name a directory are confined like every other path a request names."""
    out = dict(options)
    if out.get("data_root") is not None:
        if type(out["data_root"]) is not str:
            raise ProtocolError("bad_request", f"{w}data_root must be a string", w + "data_root")
        out["data_root"] = policy.check_dir(out["data_root"], w + "data_root")
    return out


@dataclass(frozen=True)
class SelftestParams:
    """A selftest job: exercises the worker machinery without touching a model
    (reports ``steps`` progress events over ``seconds``; ``fail`` makes it raise)."""

    seconds: float = 1.0
    steps: int = 10
    fail: bool = False

    @classmethod
    def parse(cls, d: dict[str, Any], policy: ModelPolicy) -> SelftestParams:
        w = "params."
        _no_extra(d, {"seconds", "steps", "fail"}, w)
        return cls(
            seconds=_float(d, "seconds", w, 0.0, 600.0, 1.0),
            steps=_int(d, "steps", w, 1, 10_000, 10),
            fail=_bool(d, "fail", w, False),
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


PARAMS_TYPES: dict[str, Any] = {
    "profile": ProfileParams,
    "prune": PruneParams,
    "selftest": SelftestParams,
}
JobParams = ProfileParams | PruneParams | SelftestParams


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    op: str
    req_id: str | None = None


@dataclass(frozen=True)
class Ping(Request):
    pass


@dataclass(frozen=True)
class Submit(Request):
    kind: str = ""
    params: Any = None


@dataclass(frozen=True)
class JobRequest(Request):
    """status, result and cancel: they name one job."""

    job_id: str = ""


@dataclass(frozen=True)
class ListJobs(Request):
    """Newest first; ``before``: the ``next`` of the previous page (the daemon caps a page)."""

    limit: int = 50
    status: str | None = None
    before: str | None = None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def loads_strict(data: bytes, max_bytes: int) -> Any:
    """Parse a JSON frame: size-limited, UTF-8, no NaN/Infinity; ProtocolError otherwise."""
    if len(data) > max_bytes:
        raise ProtocolError("too_large", f"message is {len(data)} bytes; the limit is {max_bytes}")
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError("bad_json", f"message is not UTF-8 JSON: {str(e)[:200]}") from None


def peek_req_id(doc: Any) -> str | None:
    """The req_id of a request, if it has a usable one, so that even an error reply can be matched."""
    if isinstance(doc, dict):
        rid = doc.get("req_id")
        if type(rid) is str and 0 < len(rid) <= 64:
            return rid
    return None


def parse_request(doc: Any, policy: ModelPolicy) -> Request:
    """Validate a decoded JSON document into a typed request, or raise ProtocolError."""
    if type(doc) is not dict:
        raise ProtocolError(
            "bad_request", f"a request must be a JSON object, got {_type_name(doc)}"
        )
    if "v" not in doc:
        raise ProtocolError(
            "bad_version", f'missing protocol version; send "v": {PROTOCOL_VERSION}', "v"
        )
    if type(doc["v"]) is not int or doc["v"] != PROTOCOL_VERSION:
        raise ProtocolError(
            "bad_version",
            f"protocol version {doc['v']!r} is not supported; this daemon speaks {PROTOCOL_VERSION}",
            "v",
        )
    op = _str(doc, "op", "")
    if op not in OPS:
        raise ProtocolError("unknown_op", f"unknown op {op!r}; ops are {list(OPS)}", "op")
    req_id = _str(doc, "req_id", "", default=None, max_len=64)
    base = {"v", "op", "req_id"}
    if op == "ping":
        _no_extra(doc, base, "")
        return Ping(op, req_id)
    if op == "submit":
        _no_extra(doc, base | {"kind", "params"}, "")
        kind = _str(doc, "kind", "")
        if kind not in PARAMS_TYPES:
            raise ProtocolError(
                "unknown_kind",
                f"unknown job kind {kind!r}; kinds are {sorted(PARAMS_TYPES)}",
                "kind",
            )
        params = _take(doc, "params", "", {})
        if type(params) is not dict:
            raise ProtocolError(
                "bad_request", f"params must be an object, got {_type_name(params)}", "params"
            )
        return Submit(op, req_id, kind, PARAMS_TYPES[kind].parse(params, policy))
    if op == "list":
        _no_extra(doc, base | {"limit", "status", "before"}, "")
        return ListJobs(
            op,
            req_id,
            _int(doc, "limit", "", 1, 10_000, 50),
            _str(doc, "status", "", None, choices=JOB_STATUSES),
            _str(doc, "before", "", None, pattern=JOB_ID_RE, max_len=12),
        )
    _no_extra(doc, base | {"job_id"}, "")
    return JobRequest(op, req_id, _str(doc, "job_id", "", pattern=JOB_ID_RE, max_len=12))


def decode_request(data: bytes, policy: ModelPolicy, max_bytes: int) -> Request:
    return parse_request(loads_strict(data, max_bytes), policy)


def encode_request(op: str, req_id: str | None = None, **fields: Any) -> bytes:
    doc: dict[str, Any] = {"v": PROTOCOL_VERSION, "op": op}
    if req_id is not None:
        doc["req_id"] = req_id
    doc.update(fields)
    return json.dumps(doc).encode()


# --------------------------------------------------------------------------- replies


def encode_reply(op: str | None, req_id: str | None, data: dict[str, Any]) -> bytes:
    return json.dumps(
        {"v": PROTOCOL_VERSION, "ok": True, "op": op, "req_id": req_id, "data": data}
    ).encode()


def encode_error(err: ProtocolError, op: str | None = None, req_id: str | None = None) -> bytes:
    doc = {"v": PROTOCOL_VERSION, "ok": False, "op": op, "req_id": req_id, "error": err.to_dict()}
    return json.dumps(doc).encode()


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    """One job event as published on ``job.<id>``; ``time`` is Unix seconds."""

    job_id: str
    event: str
    time: float
    data: dict[str, Any]

    @property
    def finished(self) -> bool:
        return self.event in ("done", "failed", "cancelled", "interrupted")


def event_topic(job_id: str) -> bytes:
    # Job ids have a fixed length, so SUB prefix matching on "job.<id>" never matches another job.
    return f"job.{job_id}".encode()


def encode_event(job_id: str, event: str, data: dict[str, Any] | None = None) -> list[bytes]:
    body = {
        "v": PROTOCOL_VERSION,
        "job_id": job_id,
        "event": event,
        "time": time.time(),
        "data": data or {},
    }
    return [event_topic(job_id), json.dumps(body).encode()]


def decode_event(frames: list[bytes]) -> Event:
    doc = json.loads(frames[-1])
    return Event(doc["job_id"], doc["event"], float(doc["time"]), doc.get("data") or {})


# --------------------------------------------------------------------------- deployment samples


@dataclass(frozen=True)
class SampleBatch:
    """Latency samples (seconds) of one deployment, as sent by service.monitor."""

    deployment: str
    samples: list[float]
    budget_s: float | None = None
    dropped: int = 0  # samples the sender dropped so far (cumulative)


def encode_samples(
    deployment: str, samples: list[float], budget_s: float | None = None, dropped: int = 0
) -> bytes:
    doc = {"v": PROTOCOL_VERSION, "d": deployment, "s": samples, "b": budget_s, "x": dropped}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_samples(data: bytes, max_bytes: int) -> SampleBatch:
    doc = loads_strict(data, max_bytes)
    if type(doc) is not dict or type(doc.get("v")) is not int or doc["v"] != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", "not a version-1 sample batch", "v")
    _no_extra(doc, {"v", "d", "s", "b", "x"}, "")
    name = _str(doc, "d", "", pattern=DEPLOYMENT_RE, max_len=64)
    samples = doc.get("s")
    if type(samples) is not list or len(samples) > MAX_SAMPLES_PER_MESSAGE:
        raise ProtocolError("bad_request", "s must be an array of seconds", "s")
    for s in samples:
        # Bounded, so that the sums the metrics keep can never overflow (math.fsum of 1e308s).
        if type(s) not in (float, int) or not 0 <= s <= MAX_SAMPLE_S:
            raise ProtocolError(
                "bad_request",
                f"every sample must be a number of seconds in 0..{MAX_SAMPLE_S:g}",
                "s",
            )
    budget = _float(doc, "b", "", 1e-9, 3600.0, None)
    dropped = _int(doc, "x", "", 0, 2**62, 0)
    return SampleBatch(name, samples, budget, dropped)

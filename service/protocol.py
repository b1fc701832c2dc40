"""The wire protocol: versioned JSON messages, validated into typed requests. Never pickle.

Request (one ZeroMQ frame, UTF-8 JSON object)::

    {"v": 1, "op": "submit", "req_id": "optional, echoed back",
     "kind": "profile", "params": {"model": "resnet20", "input_size": [8, 8]}}

Ops: ``ping``; ``submit`` (kind, params); ``status``, ``result``, ``cancel`` (job_id);
``list`` (limit, status). Unknown fields are errors, so a typo never passes silently.
The schema is declared below as msgspec types; what no schema can say (which models,
datasets and files the operator allows) is :class:`ModelPolicy`'s.

Reply: ``{"v": 1, "ok": true, "op": ..., "req_id": ..., "data": {...}}`` or
``{"v": 1, "ok": false, "op": ..., "req_id": ..., "error": {"code", "message", "field"}}``.

Events (PUB, two frames): topic ``job.<id>`` and ``{"v": 1, "job_id", "event", "time", "data"}``.

Deployment samples (PUSH -> PULL, one frame):
``{"v": 1, "d": deployment, "s": [seconds, ...], "b": budget seconds or null, "x": dropped so far}``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from profiler import DEFAULT_NUM_CLASSES, is_program
from pruner.config import DATASETS, DEFAULT_METHOD, METHODS

from .ranks import MAX_RANKS
from .trust import untrusted_reason

PROTOCOL_VERSION = 1

OPS = ("ping", "submit", "status", "list", "cancel", "result")
EVENTS = (
    "queued",
    "started",
    "progress",
    "block",
    "milestone",
    "ranks",
    "done",
    "failed",
    "cancelled",
    "interrupted",
)
JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
FINISHED_STATUSES = ("done", "failed", "cancelled", "interrupted")

# Datasets the pruner ships (DESIGN.md); anything else must be an allowed import path.
# pruner.config holds the names and imports no torch.
BUILTIN_DATASETS = DATASETS
PRUNE_METHODS = METHODS

# "\Z", not "$": "$" would also accept a trailing newline.
DEPLOYMENT_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}\Z")
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


# --------------------------------------------------------------------------- the schema

# Strings are never empty and never carry NUL (no path or module name has one).
Text = Annotated[str, Meta(min_length=1, max_length=MAX_STRING, pattern=r"^[^\x00]+\Z")]
Name = Annotated[str, Meta(min_length=1, max_length=1024, pattern=r"^[^\x00]+\Z")]
ReqId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[^\x00]+\Z")]
JobId = Annotated[str, Meta(pattern=r"^[0-9a-f]{12}\Z")]
Device = Annotated[str, Meta(pattern=r"^(cpu|cuda(:[0-9]{1,2})?)\Z")]
Side = Annotated[int, Meta(ge=1, le=4096)]
# Options are knobs, never code or nested documents: plain scalars, finite numbers.
Finite = Annotated[float, Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
Options = Annotated[
    dict[Annotated[str, Meta(max_length=64)], None | bool | int | Finite | str],
    Meta(max_length=64),
]


class _Wire(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class _Params(_Wire):
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data: what the job store keeps and the worker gets."""
        return msgspec.to_builtins(self)

    def checked(self, policy: ModelPolicy) -> _Params:
        """These parameters after the policy's checks (some make a name canonical)."""
        return self


class ModelParams(_Params, kw_only=True):
    """Fields every job that loads a model shares."""

    model: Name
    # None: what the model says (a checkpoint's stored spec, the input a .pt2 program was
    # exported with), else 3 channels and 32x32 (profiler.model_names).
    in_channels: Annotated[int, Meta(ge=1, le=4096)] | None = None
    num_classes: Annotated[int, Meta(ge=1, le=100_000)] = DEFAULT_NUM_CLASSES
    input_size: tuple[Side, Side] | None = None
    batch_size: Side = 1
    device: Device = "cpu"
    checkpoint: Text | None = None

    def _confined(self, policy: ModelPolicy) -> dict[str, Any]:
        ckpt = self.checkpoint
        return {
            "model": policy.check_model(self.model, "params.model"),
            "checkpoint": None if ckpt is None else policy.check_path(ckpt, "params.checkpoint"),
        }

    def checked(self, policy: ModelPolicy) -> ModelParams:
        return msgspec.structs.replace(self, **self._confined(policy))


class ProfileParams(ModelParams, kw_only=True):
    """A profile job: per-block serial latency of one model (see profiler.profile_model)."""

    fused: bool = False
    remeasure: bool = False


class PruneParams(ModelParams, kw_only=True):
    """A prune job: exactly one of ``budget_s`` (seconds) or ``budget_ratio`` (of the measured latency).

    ``ranks``: the processes the job runs as (torch.distributed, started by torchrun's
    elastic agent in the job's worker): on ``device`` cuda one GPU each (GPU LOCAL_RANK,
    NCCL), on cpu CPU processes (gloo). The daemon caps it (``max_gpus``, ``max_procs``).
    """

    budget_s: Annotated[float, Meta(ge=1e-9, le=3600.0)] | None = None
    budget_ratio: Annotated[float, Meta(ge=1e-6, le=1.0)] | None = None
    method: Literal[PRUNE_METHODS] = DEFAULT_METHOD  # type: ignore[valid-type]
    dataset: Name = "digits"
    output: Text | None = None
    options: Options = {}
    ranks: Annotated[int, Meta(ge=1, le=MAX_RANKS)] = 1

    def checked(self, policy: ModelPolicy) -> PruneParams:
        w = "params."
        confined = self._confined(policy)
        if (self.budget_s is None) == (self.budget_ratio is None):
            raise ProtocolError(
                "bad_request",
                f"give exactly one of {w}budget_s and {w}budget_ratio",
                w + "budget_s",
            )
        if self.ranks > 1 and self.device.startswith("cuda:"):
            raise ProtocolError(
                "bad_request",
                f"{w}device {self.device!r} names one GPU, but {w}ranks={self.ranks} runs one "
                f"rank per GPU (rank r on cuda:r); give device 'cuda'",
                w + "device",
            )
        confined["dataset"] = policy.check_dataset(self.dataset, w + "dataset")
        if self.output is not None:
            confined["output"] = policy.check_new_dir(self.output, w + "output")
        confined["options"] = _confined_options(self.options, policy, w + "options.")
        if self.checkpoint is None:
            raise ProtocolError(
                "bad_request",
                f"a prune job needs {w}checkpoint: the trained model to prune",
                w + "checkpoint",
            )
        return msgspec.structs.replace(self, **confined)


def _confined_options(options: dict[str, Any], policy: ModelPolicy, w: str) -> dict[str, Any]:
    """Options that name a directory are confined like every other path a request names."""
    out = dict(options)
    if out.get("data_root") is not None:
        if type(out["data_root"]) is not str:
            raise ProtocolError("bad_request", f"{w}data_root must be a string", w + "data_root")
        out["data_root"] = policy.check_dir(out["data_root"], w + "data_root")
    return out


class SelftestParams(_Params):
    """A selftest job: exercises the worker machinery without touching a model
    (reports ``steps`` progress events over ``seconds``; ``fail`` makes it raise)."""

    seconds: Annotated[float, Meta(ge=0.0, le=600.0)] = 1.0
    steps: Annotated[int, Meta(ge=1, le=10_000)] = 10
    fail: bool = False


PARAMS_TYPES: dict[str, Any] = {
    "profile": ProfileParams,
    "prune": PruneParams,
    "selftest": SelftestParams,
}


class Request(_Wire, kw_only=True):
    op: str
    req_id: ReqId | None = None
    v: int = PROTOCOL_VERSION  # checked before the rest, for its own error code


class Ping(Request):
    pass


class Submit(Request, tag_field="kind"):
    """A job to queue; one subclass per kind, told apart by ``kind``."""

    params: _Params

    @property
    def kind(self) -> str:
        return self.__struct_config__.tag  # type: ignore[return-value]


class SubmitProfile(Submit, tag="profile"):
    params: ProfileParams


class SubmitPrune(Submit, tag="prune"):
    params: PruneParams


class SubmitSelftest(Submit, tag="selftest"):
    params: SelftestParams = msgspec.field(default_factory=SelftestParams)


class JobRequest(Request, kw_only=True):
    """status, result and cancel: they name one job."""

    job_id: JobId


class ListJobs(Request):
    """Newest first; ``before``: the ``next`` of the previous page (the daemon caps a page)."""

    limit: Annotated[int, Meta(ge=1, le=10_000)] = 50
    status: Literal[JOB_STATUSES] | None = None  # type: ignore[valid-type]
    before: JobId | None = None


REQUESTS: dict[str, Any] = {
    "ping": Ping,
    "submit": SubmitProfile | SubmitPrune | SubmitSelftest,
    "status": JobRequest,
    "list": ListJobs,
    "cancel": JobRequest,
    "result": JobRequest,
}
assert tuple(REQUESTS) == OPS

# What a reply adds to msgspec's message, for fields whose limit the message does not say.
_LIMITS = {
    "kind": f"kinds are {sorted(PARAMS_TYPES)}",
    "params.method": f"one of {list(PRUNE_METHODS)}",
    "status": f"one of {list(JOB_STATUSES)}",
    "params.options": "at most 64 entries, names of at most 64 characters, scalar values",
}
_AT = re.compile(r" - at (?:`key` in )?`\$\.?([^`]*)`$")
_FIELD_NAMED = re.compile(r"field `([^`]*)`")


def _refusal(e: msgspec.ValidationError) -> ProtocolError:
    """msgspec's "Expected `int` <= 4096 - at `$.params.batch_size`" as a ProtocolError
    naming the field ("params.batch_size"; an array's or object's own, not its item's)."""
    text = str(e)
    at = _AT.search(text)
    path, message = (at[1], text[: at.start()]) if at else ("", text)
    if named := _FIELD_NAMED.search(message):  # a missing or unknown field: at its object
        path = f"{path}.{named[1]}" if path else named[1]
    field = re.sub(r"\[[^\]]*\]", "", path)
    limit = f"; {_LIMITS[field]}" if field in _LIMITS else ""
    code = "unknown_kind" if field == "kind" else "bad_request"
    return ProtocolError(code, f"{field or 'message'}: {message[:200]}{limit}", field or None)


def _convert(doc: dict[str, Any], schema: Any) -> Any:
    try:
        return msgspec.convert(doc, schema)
    except msgspec.ValidationError as e:
        raise _refusal(e) from None


# --------------------------------------------------------------------------- requests


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


def _check_version(doc: Any) -> None:
    if type(doc) is not dict:
        raise ProtocolError("bad_request", f"a message must be a JSON object, got {_show(doc)}")
    if "v" not in doc:
        raise ProtocolError(
            "bad_version", f'missing protocol version; send "v": {PROTOCOL_VERSION}', "v"
        )
    if type(doc["v"]) is not int or doc["v"] != PROTOCOL_VERSION:
        raise ProtocolError(
            "bad_version",
            f"protocol version {_show(doc['v'])} is not supported; this daemon speaks {PROTOCOL_VERSION}",
            "v",
        )


def _show(value: Any) -> str:
    """A value for an error message: a 400-digit integer is named, not echoed."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def peek_req_id(doc: Any) -> str | None:
    """The req_id of a request, if it has a usable one, so that even an error reply can be matched."""
    if isinstance(doc, dict):
        rid = doc.get("req_id")
        if type(rid) is str and 0 < len(rid) <= 64:
            return rid
    return None


def parse_request(doc: Any, policy: ModelPolicy) -> Request:
    """Validate a decoded JSON document into a typed request, or raise ProtocolError."""
    _check_version(doc)
    op = doc.get("op")
    if type(op) is not str or op not in REQUESTS:
        raise ProtocolError("unknown_op", f"unknown op {_show(op)}; ops are {list(OPS)}", "op")
    req = _convert(doc, REQUESTS[op])
    if isinstance(req, Submit):
        req = msgspec.structs.replace(req, params=req.params.checked(policy))
    return req


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
        if is_program(name):
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


class SampleBatch(
    _Wire,
    tag_field="v",
    tag=PROTOCOL_VERSION,
    rename={"deployment": "d", "samples": "s", "budget_s": "b", "dropped": "x"},
):
    """Latency samples (seconds) of one deployment, as sent by service.monitor.

    Bounded, so that the sums the metrics keep can never overflow (math.fsum of 1e308s).
    """

    deployment: Annotated[str, Meta(pattern=DEPLOYMENT_RE.pattern)]
    samples: Annotated[
        list[Annotated[float, Meta(ge=0.0, le=MAX_SAMPLE_S)]],
        Meta(max_length=MAX_SAMPLES_PER_MESSAGE),
    ]
    budget_s: Annotated[float, Meta(ge=1e-9, le=3600.0)] | None = None
    dropped: Annotated[int, Meta(ge=0, le=2**62)] = 0  # samples the sender dropped so far


def encode_samples(
    deployment: str, samples: list[float], budget_s: float | None = None, dropped: int = 0
) -> bytes:
    doc = {"v": PROTOCOL_VERSION, "d": deployment, "s": samples, "b": budget_s, "x": dropped}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_samples(data: bytes, max_bytes: int) -> SampleBatch:
    doc = loads_strict(data, max_bytes)
    _check_version(doc)
    return _convert(doc, SampleBatch)


def model_label(params: dict[str, Any]) -> str:
    """A job's model as the metrics and ``prunerd jobs`` name it: ``MODEL@CHECKPOINT`` when it timed a
    checkpoint (a pruned one is another network than its architecture, and a deployment is
    a checkpoint), else the model's name."""
    checkpoint = params.get("checkpoint")
    return params["model"] if not checkpoint else f"{params['model']}@{checkpoint}"

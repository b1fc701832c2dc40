"""What a typed-record library (msgspec, pydantic) would cost on the daemon's hot path.

    pip install --target /tmp/recdeps msgspec pydantic
    PYTHONPATH=/tmp/recdeps python bench/records_library.py

Times, per message, today's hand validation (service.protocol.decode_request:
strict JSON, then field checks and the policy's model, dataset and path
checks) against the same schema declared once as msgspec Structs and as
pydantic models (bounds, patterns and choices in the types; the policy's
filesystem checks still by hand, as they must be); and encoding a reply, and
a prune report to and from JSON (hand-written to_dict/from_dict against
msgspec on the same dataclasses). Prints one markdown table.
"""

from __future__ import annotations

import json
import sys
import tempfile
import timeit
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import pydantic

from pruner import DATASETS, METHODS
from service import protocol as p

ROOT = Path(tempfile.mkdtemp())
(ROOT / "resnet20.pt").write_bytes(b"")
POLICY = p.ModelPolicy(builtins=frozenset({"resnet20", "resnet56"}), path_roots=(ROOT,))
SUBMIT = json.dumps(
    {
        "v": 1,
        "op": "submit",
        "req_id": "r-1",
        "kind": "prune",
        "params": {
            "model": "resnet20",
            "checkpoint": str(ROOT / "resnet20.pt"),
            "dataset": "digits",
            "budget_ratio": 0.5,
            "method": "dbp",
            "batch_size": 1,
            "options": {"epochs": 1, "limit": 2000, "calibration_samples": 300},
        },
    }
).encode()

Scalar = None | bool | int | float | str
Size = Annotated[int, msgspec.Meta(ge=1, le=4096)]


class MsPrune(msgspec.Struct, forbid_unknown_fields=True):
    model: Annotated[str, msgspec.Meta(max_length=1024)]
    checkpoint: str
    in_channels: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 3
    num_classes: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 10
    input_size: tuple[Size, Size] = (32, 32)
    batch_size: Size = 1
    device: Annotated[str, msgspec.Meta(pattern=r"^(cpu|cuda(:[0-9]{1,2})?)$")] = "cpu"
    budget_s: Annotated[float, msgspec.Meta(ge=1e-9, le=3600.0)] | None = None
    budget_ratio: Annotated[float, msgspec.Meta(ge=1e-6, le=1.0)] | None = None
    method: Literal[METHODS] = "dbp"  # type: ignore[valid-type]
    dataset: Annotated[str, msgspec.Meta(max_length=1024)] = "digits"
    output: str | None = None
    options: Annotated[
        dict[Annotated[str, msgspec.Meta(max_length=64)], Scalar], msgspec.Meta(max_length=64)
    ] = {}


class MsSubmit(msgspec.Struct, forbid_unknown_fields=True):
    v: Literal[1]
    op: Literal["submit"]
    kind: Literal["prune"]
    params: MsPrune
    req_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None


MS_DECODER = msgspec.json.Decoder(MsSubmit)


class PdPrune(pydantic.BaseModel, extra="forbid", strict=True):
    model: Annotated[str, pydantic.Field(max_length=1024)]
    checkpoint: str
    in_channels: Annotated[int, pydantic.Field(ge=1, le=4096)] = 3
    num_classes: Annotated[int, pydantic.Field(ge=1, le=100_000)] = 10
    input_size: tuple[int, int] = (32, 32)
    batch_size: Annotated[int, pydantic.Field(ge=1, le=4096)] = 1
    device: Annotated[str, pydantic.Field(pattern=r"^(cpu|cuda(:[0-9]{1,2})?)$")] = "cpu"
    budget_s: Annotated[float, pydantic.Field(ge=1e-9, le=3600.0)] | None = None
    budget_ratio: Annotated[float, pydantic.Field(ge=1e-6, le=1.0)] | None = None
    method: Literal[METHODS] = "dbp"  # type: ignore[valid-type]
    dataset: Annotated[str, pydantic.Field(max_length=1024)] = "digits"
    output: str | None = None
    options: Annotated[dict[str, Scalar], pydantic.Field(max_length=64)] = {}


class PdSubmit(pydantic.BaseModel, extra="forbid", strict=True):
    v: Literal[1]
    op: Literal["submit"]
    kind: Literal["prune"]
    params: PdPrune
    req_id: Annotated[str, pydantic.Field(max_length=64)] | None = None


PD_ADAPTER = pydantic.TypeAdapter(PdSubmit)


def policy_checks(params: Any) -> None:
    """What no schema can say: names the operator allowed, files inside the roots."""
    POLICY.check_model(params.model, "params.model")
    POLICY.check_path(params.checkpoint, "params.checkpoint")
    POLICY.check_dataset(params.dataset, "params.dataset")
    if (params.budget_s is None) == (params.budget_ratio is None):
        raise ValueError("give exactly one of params.budget_s and params.budget_ratio")
    assert params.dataset in DATASETS


def decode_hand() -> Any:
    return p.decode_request(SUBMIT, POLICY, 1 << 20)


def decode_msgspec() -> Any:
    doc = MS_DECODER.decode(SUBMIT)
    policy_checks(doc.params)
    return doc


def decode_pydantic() -> Any:
    doc = PD_ADAPTER.validate_json(SUBMIT)
    policy_checks(doc.params)
    return doc


def per_call(fn: Any, n: int) -> float:
    """Best of 5 means, seconds per call."""
    return min(timeit.repeat(fn, number=n, repeat=5)) / n


def main() -> int:
    report_path = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    reply = {"job_id": "0123456789ab", "status": "queued", "position": 3}
    rows = [
        ("decode + validate a prune submit: hand (today)", per_call(decode_hand, 2000)),
        ("decode + validate a prune submit: msgspec Structs", per_call(decode_msgspec, 2000)),
        ("decode + validate a prune submit: pydantic models", per_call(decode_pydantic, 2000)),
        (
            "of which the policy's checks (files, names), by hand in all three",
            per_call(lambda: policy_checks(MS_DECODER.decode(SUBMIT).params), 2000)
            - per_call(lambda: MS_DECODER.decode(SUBMIT), 2000),
        ),
        (
            "encode a submit reply: json.dumps (today)",
            per_call(lambda: p.encode_reply("submit", "r-1", reply), 20000),
        ),
        (
            "encode a submit reply: msgspec",
            per_call(
                lambda: msgspec.json.encode(
                    {"v": 1, "ok": True, "op": "submit", "req_id": "r-1", "data": reply}
                ),
                20000,
            ),
        ),
    ]
    if report_path is not None:
        from pruner import PruneReport

        text = report_path.read_text()
        report = PruneReport.from_json(text)
        dec = msgspec.json.Decoder(PruneReport)
        assert dec.decode(text) == report
        rows += [
            (
                "prune report from JSON: hand from_dict (today)",
                per_call(lambda: PruneReport.from_json(text), 500),
            ),
            (
                "prune report from JSON: msgspec on the dataclasses",
                per_call(lambda: dec.decode(text), 500),
            ),
            (
                "prune report to JSON: hand to_dict + json.dumps",
                per_call(lambda: json.dumps(report.to_dict()), 500),
            ),
            ("prune report to JSON: msgspec", per_call(lambda: msgspec.json.encode(report), 500)),
        ]
    print(
        f"msgspec {msgspec.__version__}, pydantic {pydantic.__version__}, Python {sys.version.split()[0]}"
    )
    print("| what | per call |\n|---|---|")
    for what, s in rows:
        print(f"| {what} | {s * 1e6:.1f} us |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""torch.export (``.pt2``) files: inspected before loading, loaded only when they carry plain data.

``torch.export.load`` is not safe on a file someone else wrote. In torch 2.13 it
unpickles with ``torch.load(weights_only=False)`` every weight and tensor constant whose
entry in ``data/weights/<model>_weights_config.json`` (or the constants config) says
``"use_pickle": true``, loads ``custom_obj_*`` constants with the TorchScript pickler and
``opaque_obj_*`` ones with ``pickle.loads``, retries the sample inputs
(``data/sample_inputs/<model>.pt``) with ``weights_only=False`` when the safe loader
refuses them, runs the program's ``guards_code`` as Python, parses symbolic shape
expressions with sympy (which evaluates them) and resolves node targets by attribute
traversal from ``torch``. An archive is therefore loaded only when it holds exactly what
``torch.export.save`` writes for a plain static-shape model: raw tensor bytes for every
weight and constant, sample inputs the ``weights_only`` loader accepts, no guard code, no
symbolic expressions, and nodes that call torch operators (or a few arithmetic
builtins) only. The bytes checked are the bytes loaded: the file is read once, and torch
reads a new archive made of the entries checked, as Python's zipfile read them (zip
readers disagree on a damaged or crafted archive: given one name twice, zipfile reads
the last copy and torch's reader the first).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

MAX_ARCHIVE_BYTES = 2 << 30

# Entries of a plain archive, relative to its one top-level folder.
_PLAIN_ENTRIES = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/\w+\.json|data/sample_inputs/\w+\.pt"
    r"|data/weights/weight_\d+|data/weights/\w+_weights_config\.json"
    r"|data/constants/tensor_\d+|data/constants/\w+_constants_config\.json"
)
_CONFIGS = {"_weights_config.json": "weight_", "_constants_config.json": "tensor_"}
# What a node of a plain model may call besides torch operators (torch.export's verifier
# allows these builtins; operator.call or attrgetter would reach anything).
_BUILTINS = {
    "_operator": {
        "getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos",
        "abs", "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "not_",
    },
    "math": {"ceil", "floor", "trunc", "sqrt"},
}  # fmt: skip
_OPERATOR_TYPES = (
    torch._ops.OpOverload,
    torch._ops.OpOverloadPacket,
    torch._ops.HigherOrderOperator,
)


class UnsafeExportError(ValueError):
    """A ``.pt2`` file that would run code (or unpickle objects) when loaded."""


def read_export(path: str | Path) -> bytes:
    """A ``.pt2`` archive holding exactly the entries of the file at ``path`` that
    :func:`check_export` accepted, rewritten: what torch loads is what was checked."""
    path = Path(path)
    with path.open("rb") as f:
        data = f.read(MAX_ARCHIVE_BYTES + 1)
    if len(data) > MAX_ARCHIVE_BYTES:
        raise UnsafeExportError(f"{str(path)!r} is larger than {MAX_ARCHIVE_BYTES} bytes")
    check_export(data, str(path))
    checked = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as rewritten:
        for info in checked.infolist():  # no name twice: check_export refused that
            rewritten.writestr(info.filename, checked.read(info))
    return out.getvalue()


def _load_program(path: str | Path) -> torch.export.ExportedProgram:
    return torch.export.load(io.BytesIO(read_export(path)))


def load_export(path: str | Path) -> nn.Module:
    """The module of a checked ``.pt2`` file (see the module docstring for what is refused)."""
    return _load_program(path).module()


def export_input_shape(path: str | Path) -> tuple[int, ...] | None:
    """The shape of the one tensor a checked ``.pt2`` program takes, as it was exported
    (static: ``prunerd prune`` exports at (1, C, H, W)); None when it takes anything else."""
    ep = _load_program(path)
    user = set(ep.graph_signature.user_inputs)
    vals = [n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder" and n.name in user]
    if len(vals) != 1 or not isinstance(vals[0], torch.Tensor):
        return None
    return tuple(int(d) for d in vals[0].shape)


def check_export(data: bytes, name: str) -> None:
    """Raise UnsafeExportError unless ``data`` is a plain torch.export archive."""
    try:
        _check_archive(zipfile.ZipFile(io.BytesIO(data)), name)
    except UnsafeExportError:
        raise
    except (zipfile.BadZipFile, ValueError, KeyError, AttributeError, TypeError) as e:
        raise UnsafeExportError(
            f"{name!r} is not a well-formed torch.export archive ({type(e).__name__}: {e})"
        ) from None


def _check_archive(archive: zipfile.ZipFile, name: str) -> None:
    entries = _entries(archive, name)
    for rel, full in entries.items():
        if rel.startswith("models/"):
            _check_program(archive.read(full), f"{name!r} {rel}")
        elif rel.startswith("data/sample_inputs/"):
            _check_sample_inputs(archive.read(full), f"{name!r} {rel}")
        for suffix, prefix in _CONFIGS.items():
            if rel.endswith(suffix):
                _check_payload_config(archive.read(full), prefix, set(entries), f"{name!r} {rel}")


def _entries(archive: zipfile.ZipFile, name: str) -> dict[str, str]:
    """Entry path relative to the archive's top folder -> full path; refuses anything unplain."""
    out: dict[str, str] = {}
    tops, seen = set(), set()
    for info in archive.infolist():
        full = info.filename
        top, _, rel = full.partition("/")
        tops.add(top)
        # torch's reader finds an entry by name ignoring ASCII case, and of two with one
        # name takes the first; zipfile, the last.
        if rel.lower() in seen:
            raise UnsafeExportError(
                f"{name!r} carries {full!r} twice (names compared ignoring case): zip "
                "readers disagree on which copy is read; torch.export.save writes each once"
            )
        seen.add(rel.lower())
        if not _PLAIN_ENTRIES.fullmatch(rel):
            raise UnsafeExportError(f"{name!r} carries {full!r}: {_why(rel)}")
        if info.compress_type != zipfile.ZIP_STORED:
            # torch.export.save stores every entry; a compressed one could be a zip bomb.
            raise UnsafeExportError(f"{name!r}: {full!r} is compressed; torch writes none")
        out[rel] = full
    if len(tops) != 1 or not any(r.startswith("models/") for r in out):
        raise UnsafeExportError(f"{name!r} is not a torch.export archive of one program")
    return out


def _why(rel: str) -> str:
    base = rel.rpartition("/")[2]
    if base.startswith(("custom_obj_", "opaque_obj_")):
        return "a pickled custom object, which loading would unpickle"
    if rel.endswith((".pt", ".pkl")):
        return "a pickle (legacy weights or constants), which loading would unpickle"
    if rel.startswith("data/aotinductor/"):
        return "compiled native code (AOTInductor), which loading would run"
    return "an entry torch.export.save does not write for a plain model"


def _check_payload_config(raw: bytes, prefix: str, present: set[str], where: str) -> None:
    config = json.loads(raw).get("config", {})
    folder = "data/weights/" if prefix == "weight_" else "data/constants/"
    for fqn, meta in config.items():
        if meta.get("use_pickle") is not False:
            raise UnsafeExportError(
                f"{where}: {fqn!r} is stored as a pickle (use_pickle), which torch.export.load "
                "would unpickle with weights_only=False; export it with plain tensors"
            )
        path_name = str(meta.get("path_name", ""))
        if not re.fullmatch(re.escape(prefix) + r"\d+", path_name):
            raise UnsafeExportError(f"{where}: {fqn!r} is stored as {path_name!r}, not raw bytes")
        if folder + path_name not in present:
            raise UnsafeExportError(f"{where}: {fqn!r} names {path_name!r}, which is missing")


def _check_sample_inputs(raw: bytes, where: str) -> None:
    # torch.export.load tries weights_only=True first and falls back to a full unpickle.
    try:
        torch.load(io.BytesIO(raw), weights_only=True)
    except Exception as e:  # noqa: BLE001 - any refusal of the safe loader is a refusal here
        raise UnsafeExportError(
            f"{where}: the sample inputs are not plain tensors ({type(e).__name__}); loading "
            "would unpickle them with weights_only=False"
        ) from None


def _check_program(raw: bytes, where: str) -> None:
    program = json.loads(raw)
    if program.get("guards_code"):
        raise UnsafeExportError(f"{where}: carries guard code, which loading runs as Python")
    if program.get("range_constraints"):
        raise UnsafeExportError(
            f"{where}: has symbolic shapes; only static-shape programs are loaded "
            "(sympy evaluates their expressions)"
        )
    for key, value in _walk(program):
        if key == "expr_str":
            raise UnsafeExportError(f"{where}: carries a symbolic expression {value!r}")
        if key == "custom_obj_values" and value:
            raise UnsafeExportError(f"{where}: carries custom objects")
        if key in ("target", "as_operator") and isinstance(value, str):
            _check_target(value, where)  # an operator argument resolves the same way


def _walk(doc: Any) -> Any:
    """Every (key, value) pair of a JSON document, depth first, without recursion."""
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                yield k, v
                stack.append(v)
        elif isinstance(item, list):
            stack.extend(item)


def _check_target(target: str, where: str) -> None:
    """What the deserializer would resolve ``target`` to must be an operator, nothing else."""
    head, _, rest = target.partition(".")
    parts = rest.split(".") if rest else []
    if any(not p or p.startswith("__") for p in parts):
        raise UnsafeExportError(f"{where}: node target {target!r} is not an operator")
    if head in _BUILTINS:
        if len(parts) == 1 and parts[0] in _BUILTINS[head]:
            return
    elif head == "torch" and parts[:1] == ["ops"]:
        obj: Any = torch
        try:
            for p in parts:
                obj = getattr(obj, p)
        except Exception:  # noqa: BLE001 - torch.ops raises what it likes for unknown names
            obj = None
        if isinstance(obj, _OPERATOR_TYPES):
            return
    raise UnsafeExportError(f"{where}: node target {target!r} is not an operator")

"""Model specs -> nn.Module: the built-in zoo, ``package.module:callable``, ``timm:NAME``, torch.export files.

A checkpoint is a ``torch.save``d dict of plain data (loadable with
``weights_only=True``): the model spec as JSON text, the state_dict, and
optionally a pruning plan as JSON text. No pickled modules anywhere.
"""

from __future__ import annotations

import inspect
import json
import pickle
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .exported import UnsafeExportError, export_input_shape, load_export
from .files import write_with
from .imports import resolve_callable
from .model_names import (
    DEFAULT_IN_CHANNELS,
    DEFAULT_INPUT_SIZE,
    DEFAULT_NUM_CLASSES,
    builtin_models,
    is_program,
)
from .zoo import ZOO

CHECKPOINT_FORMAT = "prunerd-checkpoint"
CHECKPOINT_VERSION = 1


class ModelSpecError(ValueError):
    """A model spec that does not name a loadable model."""


@dataclass(frozen=True)
class ModelSpec:
    """What to build: a zoo name, ``package.module:callable`` or a ``.pt2`` export file,
    and the input it expects (channels, classes, spatial size)."""

    name: str
    in_channels: int = DEFAULT_IN_CHANNELS
    num_classes: int = DEFAULT_NUM_CLASSES
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        if self.in_channels < 1 or self.num_classes < 1:
            raise ModelSpecError(
                f"in_channels and num_classes must be >= 1, got {self.in_channels} and {self.num_classes}"
            )
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ModelSpecError(
                f"input_size must be two positive ints (H, W), got {self.input_size}"
            )

    def input_shape(self, batch_size: int) -> tuple[int, int, int, int]:
        return (batch_size, self.in_channels, *self.input_size)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        d = json.loads(text)
        return cls(
            name=d["name"],
            in_channels=int(d["in_channels"]),
            num_classes=int(d["num_classes"]),
            input_size=tuple(d["input_size"]),
        )


TIMM_PREFIX = "timm:"


def _build_timm(spec: ModelSpec) -> nn.Module:
    """``timm:NAME``: timm's own builder, untrained, for the spec's channels and classes."""
    name = spec.name[len(TIMM_PREFIX) :]
    try:
        import timm
    except ImportError:
        raise ModelSpecError(
            f"model {spec.name!r} needs timm: pip install 'prunerd[timm]'"
        ) from None
    if name not in timm.list_models():
        raise ModelSpecError(
            f"model {spec.name!r}: timm has no model {name!r} (see timm.list_models())"
        )
    return timm.create_model(
        name, pretrained=False, num_classes=spec.num_classes, in_chans=spec.in_channels
    )


def model_input_channels(model: nn.Module) -> int | None:
    """The channels the model's first convolution takes (None when it has none).

    Builders such as torchvision's take ``num_classes`` only and always expect
    three channels: this is how a command learns what the model really takes.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Conv3d):
            return int(m.in_channels)
    return None


def build_model_for(
    name: str, in_channels: int, num_classes: int, input_size: tuple[int, int]
) -> tuple[ModelSpec, nn.Module]:
    """Build ``name`` for images of ``in_channels`` x ``input_size``, and the spec of what it takes.

    A model that chooses its own input channels keeps them: the returned spec
    says so, and the data is then adapted to it (see ``pruner.adapt``).
    """
    spec = ModelSpec(name, in_channels, num_classes, tuple(input_size))
    model = build_model(spec)
    takes = model_input_channels(model)
    if takes is not None and takes != in_channels:
        spec = ModelSpec(name, takes, num_classes, tuple(input_size))
    return spec, model


def _import_callable(spec: str) -> Any:
    if ":" not in spec:
        raise ModelSpecError(
            f"model {spec!r} is not a built-in ({', '.join(builtin_models())}) "
            "nor of the form 'package.module:callable' or 'timm:NAME'"
        )
    try:
        return resolve_callable(spec, "model")
    except ValueError as e:
        raise ModelSpecError(str(e)) from e.__cause__


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the (untrained) model a spec names."""
    if spec.name in ZOO:
        return ZOO[spec.name](in_channels=spec.in_channels, num_classes=spec.num_classes)
    if spec.name.startswith(TIMM_PREFIX):
        return _build_timm(spec)
    if is_program(spec.name):
        path = Path(spec.name)
        if not path.is_file():
            raise ModelSpecError(f"model {spec.name!r}: no such torch.export file")
        try:
            return load_export(path)  # inspected first: refused if it carries pickles or code
        except UnsafeExportError as e:
            raise ModelSpecError(f"model {spec.name!r} refused: {e}") from None
    model = _call_builder(_import_callable(spec.name), spec)
    if not isinstance(model, nn.Module):
        raise ModelSpecError(
            f"model {spec.name!r}: the callable returned {type(model).__name__}, not nn.Module"
        )
    return model


def _call_builder(fn: Any, spec: ModelSpec) -> Any:
    """``fn`` called with what of ``in_channels=`` and ``num_classes=`` it names; one that
    takes ``**kwargs`` (torchvision's builders, which pass them on) is tried with both, then
    ``num_classes`` alone, then nothing."""
    given = {"in_channels": spec.in_channels, "num_classes": spec.num_classes}
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): try as for **kwargs
        params = None
    if params is None or any(p.kind is p.VAR_KEYWORD for p in params):
        for kwargs in (given, {"num_classes": spec.num_classes}, {}):
            try:
                return fn(**kwargs)
            except TypeError as e:
                last = e
        raise ModelSpecError(f"model {spec.name!r} cannot be built: {last}") from last
    names = {p.name for p in params}
    needed = [
        p.name
        for p in params
        if p.default is p.empty and p.kind is not p.VAR_POSITIONAL and p.name not in given
    ]
    if needed:
        raise ModelSpecError(
            f"model {spec.name!r} needs {', '.join(needed)}, which prunerd cannot give: it calls "
            "a model callable with in_channels= and num_classes= where it takes them and "
            "nothing else; wrap it in a function that sets the rest"
        )
    try:
        return fn(**{k: v for k, v in given.items() if k in names})
    except TypeError as e:  # raised inside it: the user's code, named with its message
        raise ModelSpecError(f"model {spec.name!r} failed to build: {e}") from e


def save_checkpoint(
    path: str | Path, spec: ModelSpec, model: nn.Module, plan_json: str = "", **meta: Any
) -> Path:
    """Write a checkpoint: spec + state_dict (+ plan), plain data only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "spec": spec.to_json(),
        "plan": plan_json,
        "meta": json.dumps(meta),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    # Atomic, and never through a symlink planted at the name: see profiler.files.
    return write_with(path, lambda f: torch.save(payload, f))


@dataclass(frozen=True)
class Checkpoint:
    spec: ModelSpec
    state_dict: dict[str, torch.Tensor]
    plan_json: str = ""
    meta: dict[str, Any] | None = None


def read_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if path.is_dir():
        inside = sorted(str(p) for p in path.glob("*.pt"))[:3]
        raise ValueError(
            f"checkpoint {str(path)!r} is a directory; name the checkpoint file"
            + (f", e.g. {' or '.join(repr(p) for p in inside)}" if inside else " in it")
        )
    if path.exists() and not path.is_file():  # a device or a pipe: never read (it may not end)
        raise ValueError(f"checkpoint {str(path)!r} is not a regular file; name a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} does not exist; train one with `prunerd train`"
        )
    if is_program(path):
        beside = path.with_suffix(".pt")
        raise ModelSpecError(
            f"{str(path)!r} is a torch.export program, not a checkpoint: give it as the model "
            f"(`prunerd profile {path}`)"
            + (f"; the checkpoint of the same model is {str(beside)!r}" if beside.is_file() else "")
        )
    try:
        with warnings.catch_warnings():  # a plain pickle's protocol: the error below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own text goes on to suggest weights_only=False, which runs the file's
        # code: prunerd never does that, so it does not pass the suggestion on.
        raise ModelSpecError(
            f"checkpoint {str(path)!r} is not a prunerd checkpoint: it is not a torch file of "
            "tensors and plain values, the only kind prunerd loads (it never runs a pickle's "
            "code); make one with `prunerd train`"
        ) from e
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelSpecError(
            f"checkpoint {str(path)!r} cannot be read as a prunerd checkpoint: {reason}"
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelSpecError(
            f"{str(path)!r} is not a prunerd checkpoint (expected a dict with format={CHECKPOINT_FORMAT!r}); "
            "make one with `prunerd train`"
        )
    return _checkpoint_of(payload, path)


def _checkpoint_of(payload: dict[str, Any], path: Path) -> Checkpoint:
    """The checkpoint a loaded payload holds; a ``ModelSpecError`` naming the field that is
    missing or malformed (a file edited or written by something else)."""
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelSpecError(f"checkpoint {str(path)!r}: 'state_dict' is not a dict of tensors")
    try:
        spec = ModelSpec.from_json(payload["spec"])
        meta = json.loads(payload.get("meta") or "{}")
        plan_json = payload.get("plan", "")
        if not isinstance(meta, dict) or not isinstance(plan_json, str):
            raise TypeError("'meta' is not a JSON object or 'plan' is not text")
    except (KeyError, TypeError, ValueError) as e:
        raise ModelSpecError(
            f"checkpoint {str(path)!r} has a missing or malformed field: {type(e).__name__}: {e}"
        ) from e
    return Checkpoint(spec=spec, state_dict=state, plan_json=plan_json, meta=meta)


def _pruned_here(path: str | Path, ckpt: Checkpoint) -> str:
    """Why a pruned checkpoint cannot be loaded as its plain architecture, and what to do."""
    source = ckpt.meta.get("pruned_from")
    baseline = f"the checkpoint it was pruned from, {str(source)!r}," if source else "its baseline"
    return (
        f"checkpoint {str(path)!r} holds a pruned {ckpt.spec.name} (blocks or channels removed "
        f"by a plan), not the whole architecture: to meet another budget, prune {baseline} "
        "again; `prunerd eval` and `prunerd profile` take it as it is (from Python: "
        "pruner.load_checkpoint_model)"
    )


def resolve_spec(
    spec: str | ModelSpec,
    in_channels: int | None = None,
    num_classes: int | None = None,
    input_size: tuple[int, int] | None = None,
    checkpoint: str | Path | None = None,
) -> ModelSpec:
    """The spec a command works with: the checkpoint's own when one is given.

    What is left None comes from the model where it says (a ``.pt2`` program's input was
    fixed when it was exported), else 3 channels, 10 classes, 32x32.
    """
    if checkpoint is not None:
        return _stored_spec(spec, read_checkpoint(checkpoint), checkpoint)
    if isinstance(spec, ModelSpec):
        return spec
    if is_program(spec) and (in_channels is None or input_size is None):
        shape = _export_shape(spec)
        if shape is not None:
            in_channels = shape[1] if in_channels is None else in_channels
            input_size = shape[2:] if input_size is None else input_size
    return ModelSpec(
        spec,
        DEFAULT_IN_CHANNELS if in_channels is None else in_channels,
        DEFAULT_NUM_CLASSES if num_classes is None else num_classes,
        DEFAULT_INPUT_SIZE if input_size is None else tuple(input_size),
    )


def _export_shape(path: str) -> tuple[int, ...] | None:
    """(N, C, H, W) of the image a ``.pt2`` program takes; None for another input, or a file
    :func:`build_model` will refuse with its own message (missing, unsafe)."""
    if not Path(path).is_file():
        return None
    try:
        shape = export_input_shape(path)
    except (UnsafeExportError, RuntimeError, ValueError):  # said again when it is loaded
        return None
    return shape if shape is not None and len(shape) == 4 else None


def _stored_spec(spec: str | ModelSpec, ckpt: Checkpoint, path: str | Path) -> ModelSpec:
    """The checkpoint's spec, after checking it holds the model asked for."""
    name = spec.name if isinstance(spec, ModelSpec) else spec
    if name not in ("", ckpt.spec.name):
        raise ModelSpecError(
            f"checkpoint {str(path)!r} holds model {ckpt.spec.name!r}, not {name!r}"
        )
    return ckpt.spec


def load_model(
    spec: str | ModelSpec,
    in_channels: int | None = None,
    num_classes: int | None = None,
    input_size: tuple[int, int] | None = None,
    checkpoint: str | Path | None = None,
    pretrained: str | None = None,
) -> nn.Module:
    """Resolve a model spec (or a checkpoint) to an eval-mode module.

    With ``checkpoint``, the spec stored in it wins over the keyword arguments
    (see :func:`resolve_spec`), and its weights are loaded strictly. Checkpoints
    of pruned models carry a plan; those are loaded with ``pruner.load_checkpoint_model``.
    ``pretrained`` names a dataset: the shipped weights of this model trained
    on it (see :mod:`profiler.pretrained`).
    """
    if pretrained is not None:
        if checkpoint is not None:
            raise ModelSpecError("give checkpoint or pretrained, not both")
        from .pretrained import pretrained_checkpoint

        checkpoint = pretrained_checkpoint(
            spec.name if isinstance(spec, ModelSpec) else spec, pretrained
        )
    if checkpoint is None:
        return eval_mode(build_model(resolve_spec(spec, in_channels, num_classes, input_size)))
    return model_of_checkpoint(spec, read_checkpoint(checkpoint), checkpoint)


def model_of_checkpoint(
    spec: str | ModelSpec, ckpt: Checkpoint, checkpoint: str | Path
) -> nn.Module:
    """The eval-mode model of a checkpoint already read from ``checkpoint`` (it holds both
    the spec and the weights), after checking it holds ``spec``'s model ("" for any)."""
    resolved = _stored_spec(spec, ckpt, checkpoint)
    if ckpt.plan_json:
        raise ModelSpecError(_pruned_here(checkpoint, ckpt))
    model = build_model(resolved)
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as e:
        raise ModelSpecError(
            f"checkpoint {str(checkpoint)!r} does not match model {resolved.name!r}: {e}"
        ) from e
    return eval_mode(model)


def eval_mode(model: nn.Module) -> nn.Module:
    """``model.eval()``; torch.export modules are inference graphs already and refuse it."""
    try:
        return model.eval()
    except NotImplementedError:
        return model


def module_device(model: nn.Module) -> torch.device:
    """Where ``model``'s first parameter (or buffer) lives; the CPU for a model with neither."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")

"""What to prune, to which budget, and how: typed options, method and dataset names (no torch import).

The service's protocol reads :data:`METHODS` and :data:`DATASETS` from here,
so this module imports nothing heavier than the standard library. Every
option has one flat name (``PruneConfig.from_flat``: the CLI's flags, the
daemon's ``options``, a report's ``config``); errors name that field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class MethodInfo:
    """What a method does, as the options see it: whether it removes blocks, thins channels,
    takes size targets, and whether its budget must be a fraction of the baseline latency."""

    name: str
    summary: str
    blocks: bool = False
    widths: bool = False
    fraction_only: bool = False


# The block criterion that held up best: on resnet56 and resnet20 (Fashion-MNIST, 3 seeds
# each) removal kept more accuracy than DBP's probes at the same measured speed-up, and
# DBP's choice fell below random on resnet20 (bench/results/removal.md, resnet20_blocks.md).
DEFAULT_METHOD = "removal"

METHOD_INFO: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo("dbp", "blocks: DBP gains, exact DP selection", blocks=True),
        MethodInfo("greedy", "blocks: DBP gains, ratio-greedy selection", blocks=True),
        MethodInfo(
            "removal",
            "blocks: held-out loss rise of the model without each, exact DP selection",
            blocks=True,
        ),
        MethodInfo("random", "blocks: random order (baseline)", blocks=True),
        MethodInfo("l1", "blocks: lowest mean |weight| first (baseline)", blocks=True),
        MethodInfo("hfp", "filters: gates trained to the targets, exact widths", widths=True),
        MethodInfo(
            "dbp+hfp",
            "blocks by DBP gains, then filters, one budget split by what each saves",
            blocks=True,
            widths=True,
            fraction_only=True,
        ),
        MethodInfo(
            "removal+hfp",
            "blocks by held-out loss rise, then filters, one budget split by what each saves",
            blocks=True,
            widths=True,
            fraction_only=True,
        ),
    )
}
METHODS: tuple[str, ...] = tuple(METHOD_INFO)
DATASETS: tuple[str, ...] = ("digits", "fashion-mnist", "synthetic")  # besides module:callable


class ConfigError(ValueError):
    """An option out of range or a combination that does not go together.

    ``message`` names fields as ``{field}`` placeholders; ``str()`` shows the
    flat field names, :meth:`render` any other names (a CLI's flags).
    """

    def __init__(self, message: str, *fields_: str) -> None:
        self.message, self.fields = message, fields_
        super().__init__(self.render({}))

    def render(self, names: Mapping[str, str]) -> str:
        text = self.message
        for f in self.fields:
            text = text.replace("{" + f + "}", names.get(f, f))
        return text


# What a numeric option may be; NaN fails every rule, and only a closed range admits an end.
_RULES: dict[str, Callable[[float], bool]] = {
    ">= 0": lambda v: 0 <= v < math.inf,
    ">= 1": lambda v: 1 <= v < math.inf,
    "finite and > 0": lambda v: 0 < v < math.inf,
    "finite and >= 0": lambda v: 0 <= v < math.inf,
    "in [0, 1]": lambda v: 0 <= v <= 1,
}


def check_ranges(obj: object, rules: Mapping[str, str]) -> None:
    """:class:`ConfigError` naming the first field of ``obj`` outside its rule in ``rules``
    (field -> a key of ``_RULES``); a field left None is unset and passes."""
    for name, rule in rules.items():
        value = getattr(obj, name)
        if value is not None and not _RULES[rule](value):
            raise ConfigError(f"{{{name}}} must be {rule}, got {value!r}", name)


@dataclass(frozen=True)
class Budget:
    """What the pruned model may cost: a ``fraction`` of the baseline's measured latency in
    (0, 1], or ``seconds`` per batch; and/or ``macs`` / ``params`` ratios of the unpruned model."""

    fraction: float | None = None
    seconds: float | None = None
    macs: float | None = None
    params: float | None = None

    @property
    def latency(self) -> bool:
        return self.fraction is not None or self.seconds is not None

    @property
    def sized(self) -> bool:
        return self.macs is not None or self.params is not None

    def check(self, method: MethodInfo) -> None:
        if self.fraction is not None and self.seconds is not None:
            raise ConfigError("give only one of {budget} and {budget_s}", "budget", "budget_s")
        if not self.latency and not (method.widths and not method.blocks and self.sized):
            extra = ", or {target_macs}/{target_params}" if method.widths else ""
            raise ConfigError(
                "give {budget} (fraction) or {budget_s}" + extra,
                "budget",
                "budget_s",
                *(("target_macs", "target_params") if extra else ()),
            )
        if self.sized and not method.widths:
            raise ConfigError(
                "{target_macs}/{target_params} are for methods that thin channels "
                f"({', '.join(m.name for m in METHOD_INFO.values() if m.widths)}), "
                f"not {method.name!r}",
                "target_macs",
                "target_params",
            )
        for key, v in (("target_macs", self.macs), ("target_params", self.params)):
            if v is not None and not 0.0 < v <= 1.0:
                raise ConfigError(
                    "{" + key + f"}} is a ratio of the unpruned model in (0, 1], got {v}", key
                )
        if method.fraction_only and self.fraction is None:
            raise ConfigError(
                f"method {method.name} needs {{budget}} (a fraction of the baseline latency)",
                "budget",
            )
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise ConfigError(
                f"{{budget}} is a fraction of the baseline latency in (0, 1], got {self.fraction}",
                "budget",
            )
        if self.seconds is not None and not 0 < self.seconds < math.inf:
            raise ConfigError(
                f"{{budget_s}} must be finite and > 0 s, got {self.seconds}", "budget_s"
            )


@dataclass(frozen=True)
class RunOptions:
    """How every method runs: fine-tuning (``epochs``, ``lr``), where (``device``, CPU
    ``threads``; ``latency_threads`` for timing only), what latency means (seconds per batch of
    ``latency_batch_size``, under a CUDA graph when ``cuda_graph``, ``timing_budget_s`` per
    measurement, met within ``tolerance``), the ``seed``, and accuracy on the first
    ``test_samples`` test samples (all when None)."""

    epochs: int = 2
    lr: float = 0.01
    device: str = "cpu"
    cuda_graph: bool = False
    threads: int | None = None
    latency_threads: int | None = None
    latency_batch_size: int = 1
    timing_budget_s: float = 10.0
    tolerance: float = 0.03
    seed: int = 0
    test_samples: int | None = None
    progress_bar: bool = False

    def __post_init__(self) -> None:
        check_ranges(
            self,
            {
                "epochs": ">= 0",
                "lr": "finite and > 0",
                "threads": ">= 1",
                "latency_threads": ">= 1",
                "latency_batch_size": ">= 1",
                "timing_budget_s": "finite and > 0",
                "tolerance": "in [0, 1]",
                "test_samples": ">= 1",
            },
        )


@dataclass(frozen=True)
class DepthOptions:
    """Block pruning: ``iterative`` removal in ``iterative_rounds`` with rescoring, fine-tuned
    after every round or, without ``iterative_finetune``, only after the last; probes fit on
    ``calibration_samples`` and scored on ``heldout_samples``; at most ``max_rounds`` of
    measure-and-tighten; the DP's latency ``buckets``; the baselines remove exactly
    ``remove_count`` blocks when set.

    The sample counts decide whether the probe gains rank blocks or noise: on resnet56
    (Fashion-MNIST) the held-out error of a gain is about 0.3 / sqrt(heldout) nats, and
    with 1000 held-out samples that (0.009) was as large as most stage-1 gains (0 to 0.05);
    probes fit on fewer than about 8000 samples also overstate some gains (one went
    0.050, 0.029, 0.012, 0.000 nats fit on 2000, 4000, 8000, 16000). See
    ``bench/results/probe_noise.md``."""

    iterative: bool = False
    iterative_rounds: int = 3
    iterative_finetune: bool = True
    calibration_samples: int = 8000
    heldout_samples: int = 5000
    max_rounds: int = 3
    buckets: int = 1000
    remove_count: int | None = None

    def __post_init__(self) -> None:
        check_ranges(
            self,
            {
                "iterative_rounds": ">= 1",
                "calibration_samples": ">= 1",
                "heldout_samples": ">= 1",
                "max_rounds": ">= 1",
                "buckets": ">= 1",
                "remove_count": ">= 0",
            },
        )
        if not (self.iterative or self.iterative_finetune):
            raise ConfigError(
                "{iterative_finetune}: fine-tuning only after the last round needs {iterative}",
                "iterative_finetune",
                "iterative",
            )


@dataclass(frozen=True)
class WidthOptions:
    """Filter pruning: channel counts are multiples of ``round_to``; the gates train for
    ``sparsity_epochs``; the block pass of dbp+hfp and removal+hfp takes ``depth_share`` of
    the cut (None: chosen from what each pass buys on this device); a ratio more than
    ``width_tolerance`` under its target is a warning. Under a latency budget the widths are
    fitted at most ``max_fits`` times: each fit is measured before fine-tuning, and one more
    than the run's tolerance over or under the budget corrects the next fit's latency
    target by what it measured (1: trust the width-latency model, measure nothing)."""

    round_to: int = 8
    sparsity_epochs: int = 1
    depth_share: float | None = None
    width_tolerance: float = 0.02
    max_fits: int = 4

    def __post_init__(self) -> None:
        check_ranges(
            self,
            {
                "round_to": ">= 1",
                "sparsity_epochs": ">= 0",
                "depth_share": "in [0, 1]",
                "width_tolerance": "finite and >= 0",
                "max_fits": ">= 1",
            },
        )


@dataclass(frozen=True)
class PruneOptions:
    """Everything :func:`pruner.prune` needs besides the model and the data."""

    method: str = DEFAULT_METHOD
    budget: Budget = field(default_factory=Budget)
    run: RunOptions = field(default_factory=RunOptions)
    depth: DepthOptions = field(default_factory=DepthOptions)
    width: WidthOptions = field(default_factory=WidthOptions)

    def __post_init__(self) -> None:
        if self.method not in METHOD_INFO:
            raise ConfigError(f"{{method}} must be one of {METHODS}, got {self.method!r}", "method")
        self.budget.check(METHOD_INFO[self.method])

    @property
    def info(self) -> MethodInfo:
        return METHOD_INFO[self.method]


@dataclass(frozen=True)
class IOOptions:
    """Where a checkpoint run reads and writes: the ``model`` name the ``checkpoint`` must
    hold ("" for any), the ``data`` (a built-in name or ``module:callable``) under
    ``data_root``, ``limit`` train and test samples, loader ``batch_size``, the latency
    ``table`` path ("" for none, None for the default), the ``out`` directory, and whether
    to ``export`` a torch.export program beside the checkpoint."""

    model: str
    checkpoint: str
    data: str
    out: str
    data_root: str | None = None
    limit: int | None = None
    batch_size: int = 128
    table: str | None = None
    export: bool = True

    def __post_init__(self) -> None:
        check_ranges(self, {"limit": ">= 1", "batch_size": ">= 1"})


# Flat names that differ from their typed field: flat -> (part, field).
_RENAMED = {
    "budget": ("budget", "fraction"),
    "budget_s": ("budget", "seconds"),
    "target_macs": ("budget", "macs"),
    "target_params": ("budget", "params"),
}
_PARTS = {"io": IOOptions, "run": RunOptions, "depth": DepthOptions, "width": WidthOptions}


def _flat_fields() -> dict[str, tuple[str, str]]:
    out = dict(_RENAMED)
    for part, cls in _PARTS.items():
        out.update({f.name: (part, f.name) for f in fields(cls)})
    return out


FLAT_FIELDS: dict[str, tuple[str, str]] = {"method": ("", "method"), **_flat_fields()}

# What each scalar annotation admits; a bool is an int to Python, never to an option.
_SCALARS: dict[str, tuple[type, ...]] = {
    "bool": (bool,),
    "int": (int,),
    "float": (int, float),
    "str": (str,),
}


def _annotation(key: str) -> str:
    """The annotation of flat option ``key``'s field, e.g. ``"int | None"``."""
    part, name = FLAT_FIELDS[key]
    if not part:
        return "str"  # method
    cls = Budget if part == "budget" else _PARTS[part]
    return next(f.type for f in fields(cls) if f.name == name)  # type: ignore[return-value]


def check_type(key: str, value: Any, annotation: str) -> None:
    """:class:`ConfigError` naming ``key`` unless ``value`` fits ``annotation``: a request's
    ``"no"`` must not turn a flag on, nor ``"3"`` reach a comparison with a number."""
    kinds = [k.strip() for k in annotation.split("|")]
    if value is None and "None" in kinds:
        return
    wanted = [k for k in kinds if k != "None"]
    for kind in wanted:
        admits = _SCALARS.get(kind)
        if admits is None:
            return  # not a scalar: the dataclass checks its own value
        if isinstance(value, admits) and (kind == "bool" or not isinstance(value, bool)):
            return
    names = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}
    want = " or ".join(names[k] for k in wanted) + (" or null" if "None" in kinds else "")
    raise ConfigError(f"{{{key}}} must be {want}, got {value!r}", key)


@dataclass(frozen=True)
class PruneConfig:
    """A checkpoint run (:func:`pruner.prune_checkpoint`): where from and to, and the options."""

    io: IOOptions
    options: PruneOptions

    @classmethod
    def from_flat(cls, d: Mapping[str, Any]) -> PruneConfig:
        """From one flat dict of option names (see :data:`FLAT_FIELDS`; ``budget_ms`` is
        ``budget_s`` in milliseconds); unknown names and bad values are :class:`ConfigError`."""
        d = dict(d)
        unknown = sorted(set(d) - set(FLAT_FIELDS) - {"budget_ms"})
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown}; known: {sorted(FLAT_FIELDS)}")
        for key, value in d.items():
            check_type(key, value, "float | None" if key == "budget_ms" else _annotation(key))
        if d.get("budget_ms") is not None:
            if d.get("budget_s") is not None:
                raise ConfigError(
                    "give only one of {budget_s} and {budget_ms}", "budget_s", "budget_ms"
                )
            d["budget_s"] = d.pop("budget_ms") / 1e3
        d.pop("budget_ms", None)
        parts: dict[str, dict[str, Any]] = {p: {} for p in ("", "budget", *_PARTS)}
        for key, value in d.items():
            part, name = FLAT_FIELDS[key]
            parts[part][name] = value
        missing = [
            f.name
            for f in fields(IOOptions)
            if f.default is dataclasses.MISSING and f.name not in parts["io"]
        ]
        if missing:
            raise ConfigError(f"missing option(s) {missing}")
        options = PruneOptions(
            method=parts[""].get("method", DEFAULT_METHOD),
            budget=Budget(**parts["budget"]),
            run=RunOptions(**parts["run"]),
            depth=DepthOptions(**parts["depth"]),
            width=WidthOptions(**parts["width"]),
        )
        return cls(IOOptions(**parts["io"]), options)

    def to_flat(self) -> dict[str, Any]:
        """The flat dict :meth:`from_flat` reads back to an equal config."""
        out = {"method": self.options.method, **options_flat(self.options)}
        out.update(dataclasses.asdict(self.io))
        return out


def options_flat(options: PruneOptions) -> dict[str, Any]:
    """The flat names and values of ``options`` (no io fields)."""
    b = options.budget
    out: dict[str, Any] = {
        "method": options.method,
        "budget": b.fraction,
        "budget_s": b.seconds,
        "target_macs": b.macs,
        "target_params": b.params,
    }
    for part in (options.run, options.depth, options.width):
        out.update(dataclasses.asdict(part))
    return out

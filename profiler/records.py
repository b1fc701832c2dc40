"""Typed results of the profiler, each round-tripping through JSON.

All times are in seconds. Shapes are tuples of ints in NCHW order. Fields
convert with :mod:`profiler.plain` (msgspec); a ``to_dict`` written out here
adds the figures written for readers of the JSON (medians, totals), which
reading ignores.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .plain import check_version, from_plain, to_plain

SCHEMA_VERSION = 1

TIMERS = ("perf_counter", "cuda_events")
REPLACEMENTS = ("identity", "shortcut", "adapter", "zero", "none")
ADAPTER_ACTIVATIONS = ("relu", "relu6")  # what an adapter may end in, besides nothing ("")


def _quantile(sorted_samples: tuple[float, ...], q: float) -> float:
    """Linear-interpolated quantile of already sorted samples (numpy's default method)."""
    if not sorted_samples:
        return math.nan
    pos = q * (len(sorted_samples) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_samples) - 1)
    return sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * (pos - lo)


@dataclass(frozen=True)
class Measurement:
    """Latency samples of one piece of work, in seconds per call.

    Each sample is the mean over ``number`` back-to-back calls (as in
    ``torch.utils.benchmark``'s blocked measurements), so that short kernels are
    not dominated by timer resolution.
    """

    samples_s: tuple[float, ...]
    number: int = 1
    timer: str = "perf_counter"
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if self.timer not in TIMERS:
            raise ValueError(f"timer must be one of {TIMERS}, got {self.timer!r}")
        object.__setattr__(self, "samples_s", tuple(float(s) for s in self.samples_s))

    @property
    def runs(self) -> int:
        return len(self.samples_s)

    @property
    def _sorted(self) -> tuple[float, ...]:
        return tuple(sorted(self.samples_s))

    @property
    def median_s(self) -> float:
        return _quantile(self._sorted, 0.5)

    @property
    def p10_s(self) -> float:
        return _quantile(self._sorted, 0.1)

    @property
    def p90_s(self) -> float:
        return _quantile(self._sorted, 0.9)

    @property
    def iqr_s(self) -> float:
        s = self._sorted
        return _quantile(s, 0.75) - _quantile(s, 0.25)

    def to_dict(self) -> dict[str, Any]:
        # Derived statistics are written for readers of the JSON; from_dict ignores them.
        return {
            **to_plain(self),
            "median_s": self.median_s,
            "p10_s": self.p10_s,
            "p90_s": self.p90_s,
            "iqr_s": self.iqr_s,
            "runs": self.runs,
        }

    from_dict = classmethod(from_plain)

    @classmethod
    def exact(cls, seconds: float, fingerprint: str = "") -> Measurement:
        """A measurement known without timing (e.g. an identity replacement costs 0 s)."""
        return cls(samples_s=(seconds,), number=1, fingerprint=fingerprint)


@dataclass(frozen=True)
class DeviceInfo:
    """What the measurements were taken on.

    ``fingerprint`` is a stable hash of the fields that change latency (device
    model, threads, library versions); telemetry such as temperature is kept in
    ``telemetry`` and does not enter the fingerprint.
    """

    kind: str  # "cpu" | "cuda"
    name: str
    fingerprint: str
    threads: int = 0
    torch_version: str = ""
    details: dict[str, str] = field(default_factory=dict)
    telemetry: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    to_dict = to_plain
    from_dict = classmethod(from_plain)


@dataclass(frozen=True)
class Block:
    """A unit of the network that can be timed alone and, if removable, replaced.

    ``name`` is the module's qualified path when the block is exactly one module,
    otherwise the name of its output node in the traced graph. ``nodes`` lists the
    traced-graph nodes the block spans, in topological order. FLOPs count a
    multiply-add as two operations; ``macs`` counts it as one.
    """

    name: str
    kind: str  # "residual" | "conv_bn_act" | "inverted_residual" | "branches" | "dense" | "unit"
    nodes: tuple[str, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    flops: int
    macs: int
    params: int
    stage: int
    removable: bool
    replacement: str  # one of REPLACEMENTS
    reason: str = ""  # why it is not removable, when it is not
    signature: str = ""
    # Graph nodes surgery needs: where the block starts and ends, and for residual
    # units the merge (add) node and the add operand on the shortcut side (equal to
    # input_node for an identity shortcut).
    input_node: str = ""
    output_node: str = ""
    merge_node: str = ""
    shortcut_node: str = ""
    # The activation an adapter standing in for this block ends in ("relu", "relu6" or
    # ""): the block's output is known to lie in that activation's range.
    adapter_activation: str = ""

    def __post_init__(self) -> None:
        if self.replacement not in REPLACEMENTS:
            raise ValueError(f"replacement must be one of {REPLACEMENTS}, got {self.replacement!r}")
        if self.adapter_activation not in ("", *ADAPTER_ACTIVATIONS):
            raise ValueError(
                f"block {self.name!r}: adapter activation {self.adapter_activation!r} is not "
                f"one of {['', *ADAPTER_ACTIVATIONS]}"
            )
        for name in ("nodes", "input_shape", "output_shape"):
            object.__setattr__(self, name, tuple(getattr(self, name)))


@dataclass(frozen=True)
class BlockTiming:
    """A block with its serial latency and the latency of what replaces it."""

    block: Block
    latency: Measurement
    replacement_latency: Measurement | None = None

    @property
    def latency_s(self) -> float:
        return self.latency.median_s

    @property
    def replacement_latency_s(self) -> float | None:
        return None if self.replacement_latency is None else self.replacement_latency.median_s

    def to_dict(self) -> dict[str, Any]:
        b = self.block
        return {
            # The flat fields are what most readers want; "block" and the
            # measurements carry everything needed to rebuild this object.
            "name": b.name,
            "kind": b.kind,
            "latency_s": self.latency_s,
            "p10_s": self.latency.p10_s,
            "p90_s": self.latency.p90_s,
            "iqr_s": self.latency.iqr_s,
            "flops": b.flops,
            "params": b.params,
            "removable": b.removable,
            "replacement": b.replacement,
            "replacement_latency_s": self.replacement_latency_s,
            "block": to_plain(b),
            "latency": self.latency.to_dict(),
            "replacement_latency": _opt_dict(self.replacement_latency),
        }


@dataclass(frozen=True)
class Segment:
    """A stretch of the network outside every block (stem, head, glue), timed alone."""

    name: str
    nodes: tuple[str, ...]
    latency: Measurement
    flops: int = 0
    params: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = to_plain(self)
        return {**d, "latency_s": self.latency.median_s, "latency": self.latency.to_dict()}


@dataclass(frozen=True)
class Interference:
    """CPU use while a profile was timed, from ``profiler.interference``.

    ``own_cores`` and ``other_cores`` are average numbers of busy logical cores
    (this process, everything else) over ``wall_s`` seconds; ``cores`` is how
    many this process may run on and ``threads`` how many it timed with.
    """

    wall_s: float
    cores: int
    threads: int
    own_cores: float
    other_cores: float
    load_1m_start: float
    load_1m_end: float

    @property
    def spare_cores(self) -> float:
        """Cores left to other processes before they compete with the timed threads."""
        return max(self.cores - self.threads, 0)


@dataclass(frozen=True)
class ProfileQuality:
    """The profile's own checks: passed (``ok``), or the problems, each with its cause and fix.

    ``spread`` is the latency-weighted relative IQR of the timed pieces
    (sum of IQRs / sum of medians); ``drift`` the relative change of the
    whole model's median between the first and last third of the timing
    rounds; both ``nan`` when nothing was timed in this run.
    """

    ok: bool
    problems: tuple[str, ...] = ()
    additivity_error: float = 0.0
    spread: float = math.nan
    drift: float = math.nan
    interference: Interference | None = None
    prediction_error: float = math.nan  # the prediction check's error (nan: no check)

    def to_dict(self) -> dict[str, Any]:
        return {**to_plain(self), **{k: _finite_or_none(getattr(self, k)) for k in _MAYBE_NAN}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProfileQuality:
        return from_plain(cls, _null_to_nan(d))


@dataclass(frozen=True)
class PredictionCheck:
    """The profile's prediction for a pruned model, against that model measured.

    ``removed``: the blocks taken out (every second block that identity, its
    shortcut or an adapter replaces); ``predicted_fraction``: the latency the
    profile predicts without them, as a fraction of end to end
    (:meth:`BlockProfile.predicted_fraction`, what a pruner predicts);
    ``measured``: the traced model with those blocks bypassed as block surgery
    does it, timed in the same rounds as ``reference``, the whole traced model.
    """

    removed: tuple[str, ...]
    predicted_fraction: float
    measured: Measurement
    reference: Measurement

    @property
    def measured_fraction(self) -> float:
        return self.measured.median_s / self.reference.median_s

    @property
    def error(self) -> float:
        """predicted / measured fraction - 1: positive when the prediction is too slow."""
        return self.predicted_fraction / self.measured_fraction - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **to_plain(self),
            "measured": self.measured.to_dict(),
            "reference": self.reference.to_dict(),
            "measured_fraction": self.measured_fraction,
            "error": self.error,
        }


def _finite_or_none(x: float) -> float | None:
    """JSON has no NaN: an unknown figure is written as null."""
    return x if math.isfinite(x) else None


_MAYBE_NAN = ("spread", "drift", "prediction_error")


def _null_to_nan(quality: dict[str, Any]) -> dict[str, Any]:
    return {**quality, **{k: math.nan for k in _MAYBE_NAN if quality.get(k) is None}}


def _opt_dict(record: Any) -> dict[str, Any] | None:
    return None if record is None else record.to_dict()


@dataclass(frozen=True)
class BlockProfile:
    """Per-block serial latency of one model on one device at one batch size.

    ``end_to_end`` times the traced graph the blocks were cut from (what a
    pruned model runs as, too); ``eager`` times the model exactly as given.
    ``timing`` says how the pieces were timed: ``alone`` (each in its own
    launches), ``chained`` (one forward pass, marks between pieces) or
    ``chained_graph`` (that pass in one captured CUDA graph). When chained,
    ``launch_overhead_s`` is what the pieces timed alone paid beyond the same
    pieces in one pass (seconds per forward pass), and ``mark_cost_s`` the cost
    of one timing mark, already subtracted from each piece.
    """

    model: str
    batch_size: int
    input_shape: tuple[int, ...]
    dtype: str
    device: DeviceInfo
    blocks: tuple[BlockTiming, ...]
    rest: tuple[Segment, ...]
    end_to_end: Measurement
    fused: bool = False
    from_table: int = 0  # how many measurements were served from the latency table
    eager: Measurement | None = None  # the model as given, not traced (for reference)
    created_at: float = 0.0  # Unix time
    quality: ProfileQuality | None = None  # None: not checked (a profile from an older prunerd)
    timing: str = "alone"
    launch_overhead_s: float | None = None
    mark_cost_s: float | None = None
    check: PredictionCheck | None = None  # None: not timed in this run

    @property
    def rest_s(self) -> float:
        return sum(s.latency.median_s for s in self.rest)

    @property
    def end_to_end_s(self) -> float:
        return self.end_to_end.median_s

    @property
    def blocks_s(self) -> float:
        return sum(b.latency_s for b in self.blocks)

    @property
    def additivity_error(self) -> float:
        """(sum(blocks) + rest - end_to_end) / end_to_end."""
        return (self.blocks_s + self.rest_s - self.end_to_end_s) / self.end_to_end_s

    def predicted_fraction(self, removed: Iterable[str]) -> float:
        """Latency predicted for this model without the ``removed`` blocks, as a fraction of
        end to end: (rest + kept blocks + replacements) / (rest + every block), i.e. the
        pieces scaled to the measured end to end, as a pruner predicts."""
        gone = set(removed)
        unknown = gone - {b.block.name for b in self.blocks}
        if unknown:
            raise KeyError(f"no blocks named {sorted(unknown)} in this profile")
        kept = sum(
            (b.replacement_latency_s or 0.0) if b.block.name in gone else b.latency_s
            for b in self.blocks
        )
        return (self.rest_s + kept) / (self.rest_s + self.blocks_s)

    def block(self, name: str) -> BlockTiming:
        for b in self.blocks:
            if b.block.name == name:
                return b
        raise KeyError(
            f"no block named {name!r}; blocks are: {[b.block.name for b in self.blocks]}"
        )

    def to_dict(self) -> dict[str, Any]:
        # The records that write figures for readers (medians, totals) write their own.
        return {
            "schema_version": SCHEMA_VERSION,
            **to_plain(self),
            "blocks": [b.to_dict() for b in self.blocks],
            "rest": [s.to_dict() for s in self.rest],
            "rest_s": self.rest_s,
            "end_to_end_s": self.end_to_end_s,
            "end_to_end": self.end_to_end.to_dict(),
            "eager_s": None if self.eager is None else self.eager.median_s,
            "eager": _opt_dict(self.eager),
            "additivity_error": self.additivity_error,
            "quality": _opt_dict(self.quality),
            "check": _opt_dict(self.check),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BlockProfile:
        version = d.get("schema_version", SCHEMA_VERSION)
        hint = "; re-run `prunerd profile` to produce a current one"
        check_version("profile schema_version", version, SCHEMA_VERSION, hint)
        quality = d.get("quality")
        return from_plain(cls, {**d, "quality": _null_to_nan(quality) if quality else None})

    @classmethod
    def from_json(cls, text: str) -> BlockProfile:
        return cls.from_dict(json.loads(text))

"""Launch choices for the Conv-BN-ReLU kernel, measured once per shape and kept on disk.

A choice says which tile config the Triton kernel runs with and which backend
(``triton`` or ``torch``: cuDNN with the folded bias) is faster for one conv
shape, once for eager launches and once for launches replayed from a CUDA
graph: the Triton launch path costs more host time than cuDNN's, so at small
sizes the eager and the graph winners differ.

Choices live in one JSON file, ``$PRUNERD_CACHE/conv_bn_relu.json`` (default
``~/.cache/prunerd``), keyed by everything that changes the winner: device
(name and SM count, so a MIG slice is its own device), Triton version, shapes,
stride/padding/dilation, dtype, memory layout, activation, bias and fp32 input
precision. A second process finds the choice there and tunes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

CACHE_VERSION = 2  # 2: eager choices weigh host time
CACHE_FILE = "conv_bn_relu.json"
BACKENDS = ("triton", "torch")


def cache_dir() -> Path:
    """``$PRUNERD_CACHE`` when set, else ``~/.cache/prunerd``."""
    env = os.environ.get("PRUNERD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "prunerd"


@dataclass(frozen=True)
class TileConfig:
    """One launch config: output tile BLOCK_M pixels x BLOCK_N channels, BLOCK_K channels per step."""

    block_m: int
    block_n: int
    block_k: int
    num_stages: int
    num_warps: int

    def meta(self) -> dict[str, int]:
        """Keyword arguments of the kernel launch."""
        return {
            "BLOCK_M": self.block_m,
            "BLOCK_N": self.block_n,
            "BLOCK_K": self.block_k,
            "num_stages": self.num_stages,
            "num_warps": self.num_warps,
        }


# Ampere/Hopper tiles: powers of two, BLOCK_K >= 16 so fp16/bf16 dots compile.
# (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps)
CONFIGS: tuple[TileConfig, ...] = tuple(
    TileConfig(*c)
    for c in (
        (128, 128, 32, 3, 8),
        (128, 64, 32, 4, 4),
        (64, 128, 32, 4, 4),
        (128, 32, 32, 4, 4),
        (64, 64, 32, 4, 4),
        (64, 32, 32, 5, 2),
        (32, 64, 32, 5, 2),
        (128, 64, 64, 3, 8),
        (64, 64, 16, 4, 4),
        (32, 32, 16, 4, 2),
        (64, 16, 16, 4, 2),  # 16-channel layers (the CIFAR ResNets' first stage)
    )
)


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def prune_configs(configs: Sequence[TileConfig], m: int, n: int, k: int) -> list[TileConfig]:
    """The configs worth trying for a GEMM of M pixels x N channels reducing over K per window step.

    A tile larger than the problem (rounded up to a power of two) in any
    dimension only adds masked work, so such a config is dropped whenever a
    config with a smaller tile in that dimension exists. Never returns an empty list.
    """
    if not configs:
        raise ValueError("no configs to prune")
    limits = []
    for dim, size in (("block_m", m), ("block_n", n), ("block_k", k)):
        smallest = min(getattr(c, dim) for c in configs)
        limits.append((dim, max(smallest, _pow2_at_least(size))))
    kept = [c for c in configs if all(getattr(c, d) <= lim for d, lim in limits)]
    return kept or [min(configs, key=lambda c: (c.block_m * c.block_n, c.block_k))]


@dataclass(frozen=True)
class ConvKey:
    """Everything that changes which launch wins for one conv call."""

    device: str  # "<name> sm<count>"
    triton: str
    n: int
    c: int
    h: int
    w: int
    k: int
    kh: int
    kw: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    dtype: str  # "float16", ...
    layout: str  # "nchw" | "channels_last"
    activation: str  # "none" | "relu" | "relu6"
    bias: bool
    precision: str  # fp32 dot precision: "ieee" | "tf32"

    def text(self) -> str:
        """The key as written in the cache file."""
        return "|".join(f"{k}={v}" for k, v in asdict(self).items())


@dataclass(frozen=True)
class Choice:
    """What to launch for one key, and the timings (seconds per call) that decided it.

    ``times_s`` holds ``"<backend>:<mode>"`` -> seconds, mode ``eager`` (back-to-back
    launches from Python) or ``graph`` (replayed from a CUDA graph); empty when the
    choice came from the rule, not from a measurement.
    """

    config: TileConfig
    eager: str = "triton"
    graph: str = "triton"
    times_s: dict[str, float] = field(default_factory=dict)
    measured: bool = True

    def __post_init__(self) -> None:
        for mode in (self.eager, self.graph):
            if mode not in BACKENDS:
                raise ValueError(f"backend must be one of {BACKENDS}, got {mode!r}")

    def backend(self, capturing: bool) -> str:
        return self.graph if capturing else self.eager

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Choice:
        return msgspec.convert(d, cls, strict=False)


def rule_choice(configs: Sequence[TileConfig], m: int, n: int, k: int) -> Choice:
    """The choice when nothing can be measured (e.g. first met while a CUDA graph is captured).

    The first config that suits the shape; cuDNN in eager mode, where the
    Triton launch path costs about twice cuDNN's host time, and Triton inside
    a graph, where host time is gone and the fused kernel was measured faster.
    """
    return Choice(prune_configs(configs, m, n, k)[0], "torch", "triton", {}, measured=False)


def pick(times_s: dict[str, float]) -> tuple[str, str]:
    """(eager winner, graph winner) from ``"<backend>:<mode>"`` timings.

    From a graph the faster GPU time wins (Triton on a tie). Eager, a call costs what
    the stretch of the model around it is bound by: its host time where the GPU waits
    for launches, its GPU time where the host runs ahead, and one conv cannot tell
    which. With host times (``<backend>:host``) Triton takes an eager call only if what
    it saves on the GPU exceeds what its launch path costs the host beyond cuDNN's, the
    choice whose worse case loses less (on a slow host, fused eager resnet56 at batch
    128 ran 1.12x unfused when convs were chosen by back-to-back time alone); cuDNN on
    a tie. Without host times, the faster back-to-back time wins.
    """

    def best(mode: str) -> str:
        t, c = times_s.get(f"triton:{mode}"), times_s.get(f"torch:{mode}")
        if t is None or c is None:
            return "triton" if c is None else "torch"
        return "torch" if c < t else "triton"

    weighed = [times_s.get(k) for k in ("triton:graph", "torch:graph", "triton:host", "torch:host")]
    if None in weighed:
        return best("eager"), best("graph")
    gpu_t, gpu_c, host_t, host_c = weighed
    eager = "triton" if gpu_c - gpu_t > host_t - host_c else "torch"
    return eager, best("graph")


class TuneCache:
    """Choices by :class:`ConvKey`, in memory and in one JSON file.

    Every write merges with what is on disk (other processes may have added
    keys) and replaces the file atomically, so a reader never sees half a file.
    A file that is unreadable or from another version is treated as empty.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else cache_dir() / CACHE_FILE
        self._entries: dict[str, Choice] | None = None

    def _read(self) -> dict[str, Choice]:
        try:
            data = json.loads(self.path.read_text())
            if data.get("version") != CACHE_VERSION:
                return {}
            return {k: Choice.from_dict(v) for k, v in data["entries"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def get(self, key: ConvKey) -> Choice | None:
        if self._entries is None:
            self._entries = self._read()
        return self._entries.get(key.text())

    def put(self, key: ConvKey, choice: Choice) -> None:
        entries = self._read()
        entries[key.text()] = choice
        self._entries = entries
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"version": CACHE_VERSION, "entries": {k: c.to_dict() for k, c in entries.items()}}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".conv_bn_relu.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(body, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def __len__(self) -> int:
        if self._entries is None:
            self._entries = self._read()
        return len(self._entries)

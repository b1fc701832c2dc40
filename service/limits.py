"""Per-request bounds: what one job may ask of the machine, checked before it is queued.

The protocol checks that a field is well formed (an integer, a size); these bounds are
the daemon's own policy on top (``[limits]`` in the settings): batch, channels, input
size, the activation memory they add up to, and the prune options that decide how long
a job runs (epochs and rounds, threads, the timing budget). A request over a bound gets
``too_large`` naming the field, the bound and the setting that raises it.

The processes a prune job runs as (``params.ranks``) are capped by what the machine
has: GPUs on CUDA (``max_gpus``), CPU processes (``max_procs``). Asking for more is a
``bad_request`` naming the field, the value, the cap and the flag that raises it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from profiler import DEFAULT_IN_CHANNELS, DEFAULT_INPUT_SIZE, is_program

from .config import Settings
from .protocol import ProtocolError

# Feature-map channels per input pixel one forward pass keeps alive, fp32: a CNN's widest
# full-resolution stage is 64 channels in the zoo, and a forward holds a few maps of it at
# once (conv output, BN output, the residual input), so 4 x 64 is a generous estimate.
FEATURE_CHANNELS = 256
BYTES_PER_VALUE = 4

# Prune options that multiply a job's run time, by the bound that caps them.
EPOCH_OPTIONS = ("epochs", "sparsity_epochs", "iterative_rounds", "max_rounds", "max_fits")
THREAD_OPTIONS = ("threads", "latency_threads")
BATCH_OPTIONS = ("batch_size", "latency_batch_size")  # images per forward: max_batch_size
# Counts that size a job's data or search; fixed ceilings well above any useful value.
COUNT_OPTIONS = {
    "calibration_samples": 1_000_000,
    "heldout_samples": 1_000_000,
    "limit": 10_000_000,
    "test_samples": 10_000_000,
    "buckets": 100_000,
    "remove_count": 10_000,
    "round_to": 1024,
    "seed": 2**32 - 1,  # what every generator a job seeds takes
}


def activation_bytes(batch: int, in_channels: int, height: int, width: int) -> int:
    """Estimated memory of one forward pass: the input plus the feature maps it keeps alive."""
    return BYTES_PER_VALUE * batch * height * width * (in_channels + FEATURE_CHANNELS)


def _too_large(field: str, value: Any, bound: Any, setting: str) -> ProtocolError:
    return ProtocolError(
        "too_large",
        f"{field}={value} is over this daemon's {setting} ({bound}); ask for less, or raise "
        f"{setting} in the daemon's [limits] settings",
        field,
    )


def shape_source(params: dict[str, Any]) -> tuple[str, str] | None:
    """What decides the input a job's model takes over the request's own fields, and the
    field naming it: a checkpoint (its stored spec) or a ``.pt2`` program (the input it
    was exported with, where the request leaves it unset). None: the request decides."""
    if params.get("checkpoint"):
        return f"checkpoint {params['checkpoint']!r}", "params.checkpoint"
    if is_program(params.get("model", "")):
        return f"program {params['model']!r}", "params.model"
    return None


def _requested_shape(params: dict[str, Any]) -> tuple[int | None, tuple[int, int] | None]:
    """(in_channels, (height, width)) as far as the request decides them: what it sets, the
    defaults where it sets nothing and the model says nothing, None where the model will."""
    later = shape_source(params) is not None
    channels = params.get("in_channels")
    size = params.get("input_size")
    if channels is None and not later:
        channels = DEFAULT_IN_CHANNELS
    if size is None and not later:
        size = DEFAULT_INPUT_SIZE
    return channels, None if size is None else (int(size[0]), int(size[1]))


@dataclass(frozen=True)
class RequestBounds:
    max_batch_size: int
    max_channels: int
    max_input_side: int
    max_activation_bytes: int
    max_epochs: int
    max_threads: int
    max_timing_budget_s: float
    max_gpus: int = 0  # GPUs one job may use (the daemon resolves the setting's default)
    max_procs: int = 1  # CPU processes one job may run as

    @classmethod
    def from_settings(cls, st: Settings, visible_gpus: int = 0) -> RequestBounds:
        """The settings' bounds; ``visible_gpus`` (CUDA devices the daemon sees) is the
        GPU cap when the settings leave ``max_gpus`` unset."""
        return cls(
            st.max_batch_size,
            st.max_channels,
            st.max_input_side,
            st.max_activation_bytes,
            st.max_epochs,
            st.max_threads,
            st.max_timing_budget_s,
            visible_gpus if st.max_gpus is None else st.max_gpus,
            st.max_procs,
        )

    def check(self, kind: str, params: dict[str, Any]) -> None:
        """Raise ProtocolError ("too_large", or "bad_request" for ranks over the machine's
        caps) when a job's parameters exceed a bound."""
        if "model" not in params:
            return  # selftest: the protocol's own ranges are its bounds
        options = params.get("options") or {}
        self._check_ranks(params)
        self._check_shape(params, options)
        self._check_options(options)

    def check_model_shape(
        self,
        params: dict[str, Any],
        in_channels: int,
        input_size: tuple[int, int],
        source: tuple[str, str],
    ) -> None:
        """The same bounds on the input the loaded model takes, which a checkpoint or a
        ``.pt2`` program decides over the request's own fields (run in the worker, once it
        knows). ``source``: what decided it and its field, e.g. ("checkpoint 'm.pt'",
        "params.checkpoint")."""
        try:
            resolved = {**params, "in_channels": in_channels, "input_size": list(input_size)}
            self._check_shape(resolved, params.get("options") or {})
        except ProtocolError as e:
            raise ProtocolError(
                e.code,
                f"the model in {source[0]} takes {in_channels}x{input_size[0]}x{input_size[1]} "
                f"inputs: {e.message}",
                source[1],
            ) from None

    def _check_ranks(self, params: dict[str, Any]) -> None:
        """A job on cuda uses ``ranks`` GPUs (one by default); on cpu, ``ranks`` processes."""
        ranks, device = params.get("ranks", 1), str(params.get("device", "cpu"))
        if device.startswith("cuda"):
            if ranks <= self.max_gpus:
                return
            sees = " (it sees no CUDA device)" if self.max_gpus == 0 else ""
            fix = (
                "start the daemon with --max-gpus K (max_gpus in its settings) on a machine "
                "with K GPUs"
            )
            if ranks == 1:
                raise ProtocolError(
                    "bad_request",
                    f"params.device={device!r} needs a GPU, over this daemon's max_gpus "
                    f"({self.max_gpus}){sees}; run on cpu, or {fix}",
                    "params.device",
                )
            raise ProtocolError(
                "bad_request",
                f"params.ranks={ranks} on cuda asks for {ranks} GPUs, over this daemon's "
                f"max_gpus ({self.max_gpus}){sees}; ask for at most {self.max_gpus}, or {fix}",
                "params.ranks",
            )
        if ranks > self.max_procs:
            raise ProtocolError(
                "bad_request",
                f"params.ranks={ranks} on cpu asks for {ranks} processes, over this daemon's "
                f"max_procs ({self.max_procs}); ask for at most {self.max_procs}, or start the "
                "daemon with --max-procs N (max_procs in its settings)",
                "params.ranks",
            )

    def _check_shape(self, params: dict[str, Any], options: dict[str, Any]) -> None:
        batch = params["batch_size"]
        if batch > self.max_batch_size:
            raise _too_large("params.batch_size", batch, self.max_batch_size, "max_batch_size")
        batches = [batch]
        for name in BATCH_OPTIONS:
            v = options.get(name)
            if type(v) is not int:
                continue  # the job's own config check names a wrong type
            if v > self.max_batch_size:
                raise _too_large(f"params.options.{name}", v, self.max_batch_size, "max_batch_size")
            batches.append(v)
        channels, size = _requested_shape(params)
        if channels is not None and channels > self.max_channels:
            raise _too_large("params.in_channels", channels, self.max_channels, "max_channels")
        if size is not None and max(size) > self.max_input_side:
            raise _too_large("params.input_size", list(size), self.max_input_side, "max_input_side")
        if channels is None or size is None:
            return  # the model decides; its worker checks (check_model_shape)
        biggest = max(batches)
        need = activation_bytes(biggest, channels, *size)
        if need > self.max_activation_bytes:
            raise ProtocolError(
                "too_large",
                f"batch {biggest} x {channels} channels x {size[0]}x{size[1]} needs about "
                f"{need / 2**20:.0f} MiB of activations, over this daemon's max_activation_bytes "
                f"({self.max_activation_bytes / 2**20:.0f} MiB); use a smaller batch or input, or "
                "raise max_activation_bytes in the daemon's [limits] settings",
                "params.batch_size",
            )

    def _check_options(self, options: dict[str, Any]) -> None:
        def number(name: str) -> Any:
            v = options.get(name)
            return v if type(v) in (int, float) else None

        for name in EPOCH_OPTIONS:
            v = number(name)
            if v is not None and v > self.max_epochs:
                raise _too_large(f"params.options.{name}", v, self.max_epochs, "max_epochs")
        for name in THREAD_OPTIONS:
            v = number(name)
            if v is not None and v > self.max_threads:
                raise _too_large(f"params.options.{name}", v, self.max_threads, "max_threads")
        v = number("timing_budget_s")
        if v is not None and v > self.max_timing_budget_s:
            raise _too_large(
                "params.options.timing_budget_s", v, self.max_timing_budget_s, "max_timing_budget_s"
            )
        for name, ceiling in COUNT_OPTIONS.items():
            v = number(name)
            if v is not None and v > ceiling:
                raise ProtocolError(
                    "too_large",
                    f"params.options.{name}={v} is over {ceiling}",
                    f"params.options.{name}",
                )

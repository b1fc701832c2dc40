"""Report a deployed model's inference latency to prunerd, without ever slowing inference down.

::

    from service import monitor

    monitor.configure("resnet56-pruned", budget_s=0.004)   # optional; defaults below
    with monitor.track():                                  # or monitor.track("other-deployment")
        out = model(x)
    with monitor.track(cuda=True):                         # a model on a GPU: CUDA events
        out = model(x.cuda())
    monitor.observe(0.0031)                                # a latency measured elsewhere, seconds

Samples are buffered and sent in batches (one JSON message per ``batch_size`` samples or
every ``flush_interval_s``) over a ZeroMQ PUSH socket with a send high-water mark. Sends
never block: when the daemon is away or behind and the queue is full, the batch is dropped
and counted (``Monitor.dropped``, also reported to the daemon with the next batch that gets
through). A latency that is not a number of seconds in [0, 3600] (NaN, a negative
difference of wall-clock times) is left out and counted (``Monitor.invalid``, with one
warning), so that it cannot cost the daemon's refusal of the whole batch it would have
gone in. Environment: ``PRUNERD_INGEST`` (endpoint, default ``tcp://127.0.0.1:5752``) and
``PRUNERD_DEPLOYMENT`` (default deployment name).

On a GPU, ``track()`` alone would time only the kernel launches (``model(x)`` returns once
they are queued): ``track(cuda=True)`` records CUDA events around the body instead and
reads their time once the GPU has run it, at a later call (see :mod:`service.gpu_spans`).
"""

from __future__ import annotations

import atexit
import math
import os
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import zmq

from .config import DEFAULT_HOST, DEFAULT_INGEST_PORT
from .gpu_spans import GpuSpans
from .protocol import DEPLOYMENT_RE, MAX_SAMPLE_S, MAX_SAMPLES_PER_MESSAGE, encode_samples


class Monitor:
    """A latency reporter. Thread-safe; one per process is enough (see the module functions)."""

    def __init__(
        self,
        deployment: str | None = None,
        connect: str | None = None,
        budget_s: float | None = None,
        batch_size: int = 512,
        flush_interval_s: float = 1.0,
        hwm: int = 1000,
        curve_server_key: bytes | None = None,
        curve_keypair: tuple[bytes, bytes] | None = None,
    ) -> None:
        """``hwm`` is in messages (batches) queued for the daemon; ``budget_s`` in seconds."""
        self.deployment = deployment or os.environ.get("PRUNERD_DEPLOYMENT", "default")
        self._check_name(self.deployment)
        _check_settings(budget_s, batch_size, flush_interval_s, hwm)
        self.endpoint = connect or os.environ.get(
            "PRUNERD_INGEST", f"tcp://{DEFAULT_HOST}:{DEFAULT_INGEST_PORT}"
        )
        self.budget_s = budget_s
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.sent = 0  # samples handed to ZeroMQ
        self.dropped = 0  # samples dropped because the queue to the daemon was full
        self.invalid = 0  # latencies left out: not a number of seconds in [0, MAX_SAMPLE_S]
        self._lock = threading.Lock()
        self._buffers: dict[str, list[float]] = {}
        self._last_flush = time.monotonic()
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        # Never hold up process exit for a daemon that is not there.
        self._sock.setsockopt(zmq.LINGER, 200)
        if curve_server_key is not None:
            public, secret = curve_keypair or zmq.curve_keypair()
            self._sock.curve_serverkey = curve_server_key
            self._sock.curve_publickey = public
            self._sock.curve_secretkey = secret
        self._sock.connect(self.endpoint)
        self._closed = False
        self._gpu: GpuSpans | None = None  # made by the first track(cuda=True)

    @staticmethod
    def _check_name(name: str) -> None:
        if not DEPLOYMENT_RE.fullmatch(name):  # "$" would let a trailing newline by
            raise ValueError(f"deployment name {name!r} must match {DEPLOYMENT_RE.pattern}")

    def observe(self, seconds: float, deployment: str | None = None) -> None:
        """Record one inference latency in seconds."""
        self._record(seconds, deployment)
        self._read_gpu()

    def _record(self, seconds: float, deployment: str | None) -> None:
        name = deployment or self.deployment
        value = float(seconds)
        if not 0.0 <= value <= MAX_SAMPLE_S:  # also NaN: the daemon refuses the batch for it
            self._left_out(value)
            return
        with self._lock:
            buf = self._buffers.get(name)
            if buf is None:
                self._check_name(name)
                buf = self._buffers[name] = []
            buf.append(value)
            if (
                len(buf) >= self.batch_size
                or time.monotonic() - self._last_flush >= self.flush_interval_s
            ):
                self._flush_locked()

    def _read_gpu(self, wait: bool = False) -> None:
        """Record the GPU spans that have completed (``wait``: all of them); nothing to do
        while none is open (every call without track(cuda=True))."""
        if self._gpu is None or not len(self._gpu):
            return
        with self._lock:
            done = self._gpu.finished(wait)
            self.dropped += self._gpu.overflow  # spans the GPU was too far behind to keep
            self._gpu.overflow = 0
        for seconds, deployment in done:
            self._record(seconds, deployment)

    def _left_out(self, value: float) -> None:
        with self._lock:
            self.invalid += 1
            first = self.invalid == 1
        if first:
            warnings.warn(
                f"prunerd monitor: latency {value!r} s left out: not in [0, {MAX_SAMPLE_S:g}] "
                "seconds (Monitor.invalid counts these; this warning is shown once)",
                RuntimeWarning,
                stacklevel=3,
            )

    def track(self, deployment: str | None = None, cuda: bool = False) -> AbstractContextManager:
        """Time the body of a ``with`` block and observe it: on the host's clock
        (perf_counter, seconds), or with ``cuda=True`` the GPU's time for the work the body
        queued on the current CUDA stream, read once the GPU has run it (nothing waits)."""
        return self._track_gpu(deployment) if cuda else self._track_host(deployment)

    @contextmanager
    def _track_host(self, deployment: str | None) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe(time.perf_counter() - start, deployment)

    @contextmanager
    def _track_gpu(self, deployment: str | None) -> Iterator[None]:
        if self._gpu is None:
            with self._lock:
                if self._gpu is None:  # (not `or`: a GpuSpans with no open span is falsy)
                    self._gpu = GpuSpans()
        self._read_gpu()  # the spans of earlier calls the GPU has finished since
        start = self._gpu.start()
        try:
            yield
        finally:
            with self._lock:
                self._gpu.stop(start, deployment)

    def flush(self) -> None:
        self._read_gpu()
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        self._last_flush = time.monotonic()
        if self._closed:
            return
        for name, buf in self._buffers.items():
            if not buf:
                continue
            msg = encode_samples(name, buf, self.budget_s, self.dropped)
            try:
                self._sock.send(msg, zmq.NOBLOCK, copy=False)
                self.sent += len(buf)
            except zmq.Again:
                # The high-water mark is reached: the daemon is away or behind. Inference wins.
                self.dropped += len(buf)
            buf.clear()

    def close(self) -> None:
        """Flush what is buffered and close the socket (waits at most the 200 ms linger, and
        for the GPU to finish the spans it has not yet run)."""
        if not self._closed:
            try:
                self._read_gpu(wait=True)
            except RuntimeError:  # a CUDA context that failed (the deployment crashed)
                self.dropped += 0 if self._gpu is None else len(self._gpu)
        with self._lock:
            if self._closed:
                return
            self._flush_locked()
            self._closed = True
            self._sock.close()


def _check_settings(
    budget_s: float | None, batch_size: int, flush_interval_s: float, hwm: int
) -> None:
    """ValueError naming a setting with which no batch would be sent or accepted."""
    if budget_s is not None and not 1e-9 <= budget_s <= MAX_SAMPLE_S:
        raise ValueError(f"budget_s must be seconds in [1e-9, {MAX_SAMPLE_S:g}], got {budget_s}")
    if not 1 <= batch_size <= MAX_SAMPLES_PER_MESSAGE:
        raise ValueError(f"batch_size must be in 1..{MAX_SAMPLES_PER_MESSAGE}, got {batch_size}")
    if not 0 < flush_interval_s < math.inf:
        raise ValueError(f"flush_interval_s must be finite and > 0, got {flush_interval_s}")
    if hwm < 1:  # 0 is libzmq's "no limit": an absent daemon would cost unbounded memory
        raise ValueError(f"hwm must be >= 1 batch, got {hwm}")


_default: Monitor | None = None
_default_lock = threading.Lock()


def configure(
    deployment: str | None = None, connect: str | None = None, **kwargs: object
) -> Monitor:
    """Replace the process-wide monitor the module functions use."""
    global _default
    with _default_lock:
        if _default is not None:
            _default.close()
        _default = Monitor(deployment, connect, **kwargs)  # type: ignore[arg-type]
        return _default


def get() -> Monitor:
    global _default
    with _default_lock:
        if _default is None:
            _default = Monitor()
        return _default


def observe(seconds: float, deployment: str | None = None) -> None:
    get().observe(seconds, deployment)


def track(deployment: str | None = None, cuda: bool = False) -> AbstractContextManager:
    """See :meth:`Monitor.track`."""
    return get().track(deployment, cuda)


def flush() -> None:
    get().flush()


@atexit.register
def _close_default() -> None:
    if _default is not None:
        _default.close()

"""Will a profile fit in memory? The activations it keeps, estimated before any big batch runs.

A profile keeps the input of every piece it times (blocks, the rest, replacements) for a
whole batch, on top of one forward pass's live tensors. On a CPU a batch that does not
fit is not an exception: the machine swaps for minutes and the kernel's OOM killer ends
the process without a word (resnet20 at batch 100,000 on a 24 GiB machine: killed after
136 s). So the profiler estimates first, from shapes at batch 1 (per sample):

- ``live``: the most bytes alive at once while the graph runs (each value from the node
  that makes it to its last user);
- ``kept``: first from above, the bytes of every value the graph passes through alone
  (after it, nothing computed before is still needed: pieces are cut at such values, but
  in a plain chain every value is one); where that bound does not fit, the bytes of the
  pieces' actual inputs (:func:`bytes_of`).

A batch of B needs about B x (kept + live) bytes. On resnet20 that is 0.62 MB per sample
(0.42 kept, 0.20 live) where the process grew by 0.78 MB per sample from batch 512 to 2048:
an estimate from below, so a batch it refuses cannot fit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch.fx as fx

from .graph import tensor_meta


class BatchTooLarge(ValueError):
    """A batch whose activations cannot fit in the memory this machine has available."""


@dataclass(frozen=True)
class ActivationEstimate:
    """Bytes per sample a profile keeps (``kept``) and needs at once to run (``live``)."""

    kept: int
    live: int

    @property
    def per_sample(self) -> int:
        return self.kept + self.live


def _nbytes(node: fx.Node) -> int:
    meta = tensor_meta(node)
    if meta is None:
        return 0
    return math.prod(meta.shape) * meta.dtype.itemsize


def bytes_of(nodes: Iterable[fx.Node], batch: int = 1) -> int:
    """Per-sample bytes of the values of ``nodes`` (shapes propagated at ``batch``)."""
    return sum(_nbytes(n) for n in set(nodes)) // batch


def estimate_activations(gm: fx.GraphModule, batch: int = 1) -> ActivationEstimate:
    """Per-sample ``live`` bytes of ``gm`` and its ``kept`` bound from above, from the
    ``tensor_meta`` shapes its nodes carry (shape propagation at batch ``batch``)."""
    # Parameters and buffers (get_attr) are the model's own memory, not activations.
    nodes = [n for n in gm.graph.nodes if n.op not in ("get_attr", "output")]
    order = {n: i for i, n in enumerate(nodes)}
    last_use = {
        n: max((order.get(u, len(nodes)) for u in n.users), default=i) for i, n in enumerate(nodes)
    }
    live: dict[fx.Node, int] = {}
    kept = peak = total = 0
    for i, n in enumerate(nodes):
        live[n] = _nbytes(n)
        total += live[n]
        peak = max(peak, total)
        for done in [m for m in live if last_use[m] <= i]:
            total -= live.pop(done)
        if list(live) == [n]:  # everything now flows through n alone
            kept += live[n]
    return ActivationEstimate(kept // batch, peak // batch)


def available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def fits(estimate: ActivationEstimate, batch_size: int, available: int) -> bool:
    return estimate.per_sample * batch_size <= available


def check_fits(estimate: ActivationEstimate, batch_size: int, what: str, available: int) -> None:
    """:class:`BatchTooLarge` when ``batch_size`` samples of ``estimate`` need more than
    ``available`` bytes; it names the most samples that could fit, and half of that to
    try (the estimate is from below: a process needs more)."""
    if fits(estimate, batch_size, available):
        return
    need = estimate.per_sample * batch_size
    most = max(1, available // max(1, estimate.per_sample))
    raise BatchTooLarge(
        f"profiling {what} at batch {batch_size} keeps at least {need / 2**30:.1f} GiB of "
        f"activations ({estimate.per_sample / 2**20:.2f} MiB per sample) and this machine "
        f"has {available / 2**30:.1f} GiB available: no batch above {most} fits; try "
        f"--batch-size {max(1, most // 2)} or less"
    )

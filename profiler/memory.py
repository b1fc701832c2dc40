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

Training and evaluation (``pruner.batch_memory``) use the same shapes: a training step
keeps what its backward needs (:func:`saved_for_backward`), an evaluation needs ``live``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

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


# Operators whose backward needs their input; ReLU's needs its output. By class and function.
_KEEP_INPUT_MODULES = (
    nn.Hardtanh, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU, nn.Mish,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
)  # fmt: skip
_KEEP_INPUT_FUNCTIONS = {
    F.hardtanh, F.relu6, F.silu, F.gelu, F.hardswish, F.leaky_relu, F.mish, F.max_pool2d
}  # fmt: skip
_KEEP_OUTPUT_FUNCTIONS = {F.relu, torch.relu}


def _kept(gm: fx.GraphModule, n: fx.Node) -> fx.Node | None:
    """The value ``n``'s backward keeps: its input, its output, or None."""
    if not n.args or not isinstance(n.args[0], fx.Node):
        return None
    if n.op == "call_function":
        if n.target in _KEEP_INPUT_FUNCTIONS:
            return n.args[0]
        return n if n.target in _KEEP_OUTPUT_FUNCTIONS else None
    if n.op != "call_module":
        return None
    module = gm.get_submodule(str(n.target))
    if any(w.requires_grad for w in module.parameters(recurse=False)):
        return n.args[0]
    if isinstance(module, _KEEP_INPUT_MODULES):
        return n.args[0]
    return n if isinstance(module, nn.ReLU) else None


def saved_for_backward(gm: fx.GraphModule, batch: int = 1) -> int:
    """Per-sample bytes a training step keeps from its forward for the backward, from below:
    the input of every module with weights to learn (a convolution, a linear layer and a
    batch norm each need theirs for their weights' gradient), of the activations and pools
    whose gradient needs it (ReLU6, SiLU, max pool, ...), ReLU's output; each value once.
    Left out, so still from below: what other operators keep (a max pool's int64 indices,
    a softmax's output). An in-place activation's output counts apart from its input:
    autograd keeps both (mobilenetv2's in-place ReLU6: three tensors of each expanded
    layer's size, not two)."""
    saved = {kept for n in gm.graph.nodes if (kept := _kept(gm, n)) is not None}
    return bytes_of(saved, batch)


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


def fits(per_sample: int, batch_size: int, available: int) -> bool:
    return per_sample * batch_size <= available


def check_fits(per_sample: int, batch_size: int, doing: str, available: int) -> None:
    """:class:`BatchTooLarge` when ``batch_size`` samples of ``per_sample`` bytes need more
    than ``available``; ``doing`` starts the message (``"profiling resnet20 (3, 32, 32)"``).
    It names the most samples that could fit, and half of that to try (the estimate is
    from below: a process needs more)."""
    if fits(per_sample, batch_size, available):
        return
    need = per_sample * batch_size
    most = max(1, available // max(1, per_sample))
    raise BatchTooLarge(
        f"{doing} at batch {batch_size} keeps at least {need / 2**30:.1f} GiB of "
        f"activations ({per_sample / 2**20:.2f} MiB per sample) and this machine "
        f"has {available / 2**30:.1f} GiB available: no batch above {most} fits; try "
        f"--batch-size {max(1, most // 2)} or less"
    )

"""Will a training step's or an evaluation's batch fit in this machine's memory? Asked
before the batch is drawn.

On a CPU a batch that does not fit is no exception: ``prunerd train --batch-size 60000``
on Fashion-MNIST (every image in one step) swaps, and the kernel's OOM killer ends the
run without a word. The model's shapes at batch 1 give the bytes per sample from below
(:mod:`profiler.memory`): what a training step keeps for its backward, or what an
evaluation needs alive at once (resnet20 at 28x28: 1.140 MiB per sample kept for the
backward, as autograd's own saved tensors count; the process grew by 4827 MiB over 2
training steps at batch 4096, against 4669 MiB estimated). A batch whose bytes exceed the memory available is a
:class:`~profiler.memory.BatchTooLarge` naming the batch to try. On CUDA an
out-of-memory is already an exception with a message, so only CPU runs are checked; a
model torch.fx cannot trace, or batches that do not say their shape, go unchecked.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from profiler import (
    TraceError,
    available_memory,
    check_fits,
    estimate_activations,
    propagate_shapes,
    saved_for_backward,
    trace,
)

from .adapt import AdaptedBatches
from .data import Batches


def sample_shape(batches: Iterable[Any]) -> tuple[int, ...] | None:
    """(C, H, W) of one sample as ``batches`` yield it, without drawing a batch; None when
    they do not say (a ``module:callable`` dataset's own loader)."""
    if isinstance(batches, AdaptedBatches):
        a = batches.adaptation
        return (a.channels, *a.size)
    if isinstance(batches, Batches):
        return tuple(batches.images.shape[1:])
    return None


def step_samples(batches: Iterable[Any]) -> int | None:
    """Samples in the largest batch this process takes from ``batches`` (a sharded view's
    share of it), without drawing one; None when they do not say."""
    source = batches.source if isinstance(batches, AdaptedBatches) else batches
    if not isinstance(source, Batches):
        return None
    n = min(source.batch_size, source.num_samples)
    return -(-n // source.sharding[1]) if source.sharding is not None else n


def _per_sample(model: nn.Module, shape: tuple[int, ...], training: bool) -> int | None:
    """Bytes per sample from the model's batch-1 shapes; None when they cannot be had (the
    run itself then says what is wrong with the model or its input)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    try:
        gm = trace(model)
        propagate_shapes(gm, torch.zeros((1, *shape), dtype=dtype))
    except (TraceError, ValueError):
        return None
    return saved_for_backward(gm) if training else estimate_activations(gm).live


def check_batch_fits(
    model: nn.Module,
    batches: Iterable[Any],
    device: str,
    training: bool,
    doing: str,
    alongside: nn.Module | None = None,
) -> None:
    """``BatchTooLarge`` when the largest batch of ``batches`` cannot fit on this CPU;
    ``doing`` starts the message (``"training resnet20"``). ``alongside``: a model whose
    inference on the same batch runs while the training step's tensors are kept (the
    teacher of a distillation: a pruned resnet20's step at batch 4096 grew the process by
    2321 MiB with its teacher, 1488 MiB without; the student alone is 1336 MiB kept for
    its backward, the teacher's inference 588 MiB alive at once)."""
    if torch.device(device).type != "cpu":
        return
    shape, batch, available = sample_shape(batches), step_samples(batches), available_memory()
    if shape is None or batch is None or available is None:
        return
    per_sample = _per_sample(model, shape, training)
    if per_sample is not None and alongside is not None:
        beside = _per_sample(alongside, shape, training=False)
        per_sample = None if beside is None else per_sample + beside
    if per_sample is not None:
        check_fits(per_sample, batch, f"{doing} {shape}", available)

"""Recovery training of a pruned model with knowledge distillation from the unpruned one.

The loss (Hinton et al. 2015) mixes the softened teacher distribution with the
true labels:

    alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

with the KL summed over classes and averaged over the batch. The T^2 factor
keeps the gradient scale of the soft term independent of T.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .batch_memory import check_batch_fits
from .train import EpochStats, FitResult, fit


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """Distillation loss (scalar) from logits (B, K) of student and teacher and labels (B,)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    t = float(temperature)
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, labels)
    return alpha * t * t * soft + (1.0 - alpha) * hard


class KDLoss:
    """A ``fit`` loss: runs the frozen teacher on each batch's inputs and applies :func:`kd_loss`."""

    def __init__(self, teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.9) -> None:
        self.teacher = teacher
        self.temperature = temperature
        self.alpha = alpha

    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor
    ) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        return kd_loss(logits, teacher_logits, labels, self.temperature, self.alpha)


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no gradients for the duration; the previous state is restored afterwards."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()  # BN uses running stats and dropout is off: the teacher's targets stay fixed
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def finetune(
    student: nn.Module,
    teacher: nn.Module,
    train: Iterable[tuple[torch.Tensor, torch.Tensor]],
    val: Iterable[tuple[torch.Tensor, torch.Tensor]] | None,
    epochs: int,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    temperature: float = 4.0,
    alpha: float = 0.9,
    patience: int | None = 2,
    device: str = "cpu",
    progress: bool = True,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> FitResult:
    """Fine-tune ``student`` (an nn.Module or torch.fx GraphModule) in place by distillation.

    The teacher runs frozen in eval mode; early stopping and the restored best
    weights follow val accuracy (see :func:`pruner.train.fit`). The default lr
    is lower than for training from scratch: the student starts from trained
    weights.
    """
    teacher.to(device)
    # Before fit's own check, which counts the student alone: the teacher's inference
    # runs while the student's step keeps its tensors. On this rank's share of each batch,
    # as fit checks (the whole batch overcounts a run on several processes).
    check_batch_fits(
        student,
        distributed.shard(train),
        device,
        True,
        "fine-tuning the pruned model",
        alongside=teacher,
    )
    with frozen(teacher):
        return fit(
            student,
            train,
            val,
            epochs,
            lr=lr,
            weight_decay=weight_decay,
            loss_fn=KDLoss(teacher, temperature, alpha),
            device=device,
            progress=progress,
            patience=patience,
            on_epoch=on_epoch,
        )

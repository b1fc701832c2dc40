"""profiler.memory and pruner.batch_memory: what a profile, a training step and an
evaluation keep and need at once, and the refusal of a batch that cannot fit, before it
is made."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from profiler import ActivationEstimate, BatchTooLarge, build_model_for, estimate_activations
from profiler.graph import propagate_shapes, trace
from profiler.memory import bytes_of, check_fits, saved_for_backward
from pruner.adapt import AdaptedBatches, InputAdaptation
from pruner.batch_memory import check_batch_fits, sample_shape, step_samples
from pruner.data import load_data

from .cli_helpers import PRUNERD, run


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class Residual(Chain):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + y.mean() * x.sum()


def _shaped(model: nn.Module, batch: int) -> torch.fx.GraphModule:
    gm = trace(model)
    propagate_shapes(gm, torch.randn(batch, 3, 8, 8))
    return gm


@pytest.mark.parametrize("batch", [1, 4])
def test_a_chain_keeps_every_value_and_holds_two_at_once(batch: int) -> None:
    """x (3x8x8 fp32: 768 B), conv (4x8x8: 1024 B), relu (1024 B): each is a value the whole
    graph passes through alone; the most alive at once is conv's output and relu's."""
    e = estimate_activations(_shaped(Chain(), batch), batch)
    assert e == ActivationEstimate(kept=768 + 1024 + 1024, live=2048)
    assert e.per_sample == 2816 + 2048


def test_a_value_still_needed_later_is_no_cut() -> None:
    """x is used again after the conv: only x itself and the final sum are cuts, and x
    stays alive beside the conv's output until the end."""
    gm = _shaped(Residual(), 1)
    e = estimate_activations(gm)
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    assert e.kept == 768 + bytes_of([out])
    assert e.live >= 768 + 1024
    assert bytes_of([n for n in gm.graph.nodes if n.op == "placeholder"] * 2) == 768


def test_a_batch_that_cannot_fit_names_the_one_to_try() -> None:
    per_sample = ActivationEstimate(kept=600, live=400).per_sample
    check_fits(per_sample, 10, "m", available=10_000)  # exactly fits
    with pytest.raises(BatchTooLarge) as refused:
        check_fits(per_sample, 11, "m", available=10_000)
    said = str(refused.value)
    assert "at batch 11" in said and "no batch above 10 fits; try --batch-size 5 or less" in said


def test_profile_refuses_a_batch_no_machine_holds_before_making_it() -> None:
    """resnet20 at 64x64 keeps ~2.4 MB per sample: a million samples (2.2 TiB) once ran
    until the kernel's OOM killer ended the process without a word. Refused in seconds,
    before the input batch (12 GiB itself) is made."""
    done = run(PRUNERD, "profile", "resnet20", "--input-size", "64,64", "--batch-size",
               "1000000", "--no-table", "--threads", "1", timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "prunerd profile: error: profiling resnet20 (3, 64, 64) at batch 1000000" in done.stderr
    assert "try --batch-size" in done.stderr and "Traceback" not in done.stderr


def _saved_by_autograd(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the activations autograd keeps for the backward of ``model(x)``, each
    storage once (weights and buffers left out)."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return sum(n for ptr, n in seen.items() if ptr not in own)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "vgg16"])
def test_what_training_keeps_is_estimated_from_below_and_close(name: str) -> None:
    """The estimate against what autograd really saves (counted with saved_tensors_hooks):
    never more, so no batch that fits is refused, and within 15%, so one that cannot fit is.
    At 28x28: resnet20 1.140 of 1.140 MiB, mobilenetv2 14.246 of 14.262, vgg16 1.770 of
    1.968 (its max pools' int64 indices are left out)."""
    _, model = build_model_for(name, 1, 10, (28, 28))
    gm = trace(model)
    propagate_shapes(gm, torch.zeros(1, 1, 28, 28))
    estimate = saved_for_backward(gm)
    actual = _saved_by_autograd(model.train(), torch.randn(8, 1, 28, 28)) / 8
    assert 0.85 * actual <= estimate <= actual, (estimate, actual)


def _digits_as(size: int, batch_size: int) -> AdaptedBatches:
    """Digits (1797 8x8 images) as a model of 3 x size x size takes them; nothing drawn."""
    bundle = load_data("digits", batch_size=batch_size)
    return AdaptedBatches(bundle.train, InputAdaptation(1, (8, 8), 3, (size, size)))


def test_a_batch_that_cannot_fit_is_refused_before_it_is_drawn() -> None:
    """resnet20 on digits blown up to 1024x1024: a whole-split batch needs terabytes; both a
    training step and an evaluation are refused naming the batch, the cap by the split's
    size included; a batch of 2 passes."""
    _, model = build_model_for("resnet20", 3, 10, (1024, 1024))
    huge = _digits_as(1024, batch_size=100_000)
    train_size = load_data("digits").info.train_size  # 1617 less the val split: 1294
    assert sample_shape(huge) == (3, 1024, 1024) and step_samples(huge) == train_size
    for training in (True, False):
        with pytest.raises(
            BatchTooLarge, match=rf"^checking resnet20 \(3, 1024, 1024\) at batch {train_size} "
        ):
            check_batch_fits(model, huge, "cpu", training, "checking resnet20")
    check_batch_fits(model, _digits_as(1024, batch_size=2), "cpu", True, "checking resnet20")


def test_distillation_counts_the_teachers_inference_beside_the_step() -> None:
    """A batch the student's step alone would fit, but not with its teacher's inference
    running beside it, is refused for fine-tuning, before a step is taken: `prunerd prune
    --batch-size 60000` on Fashion-MNIST passed the student-only check and was killed by
    the OOM killer 87 s in. The batch is sized from this machine's available memory."""
    from profiler import available_memory
    from pruner.distill import finetune

    _, model = build_model_for("resnet20", 3, 10, (512, 512))
    gm = trace(model)
    propagate_shapes(gm, torch.zeros(1, 3, 512, 512))
    step, beside = saved_for_backward(gm), estimate_activations(gm).live
    batch = int(available_memory() / (step + beside / 2))  # fits alone, not with the teacher
    batches = _Undrawable(_digits_as(512, batch_size=batch))
    assert step_samples(batches) == batch
    check_batch_fits(model, batches, "cpu", True, "training resnet20")
    with pytest.raises(BatchTooLarge, match=rf"^fine-tuning the pruned model .* at batch {batch} "):
        finetune(model, build_model_for("resnet20", 3, 10, (512, 512))[1], batches, None, 1)


class _Undrawable(AdaptedBatches):
    """The batches as the checks see them; drawing one fails the test instead of taking the
    tens of GiB the batch would (the machine's OOM killer would end the test run)."""

    def __init__(self, batches: AdaptedBatches) -> None:
        super().__init__(batches.source, batches.adaptation)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise AssertionError("a batch was drawn: the memory check let it through")


def test_a_shared_batch_is_checked_for_each_process_share() -> None:
    train = load_data("digits", batch_size=100).train
    assert step_samples(train) == 100 and step_samples(train.sharded(1, 3)) == 34
    assert step_samples(iter(train)) is None and sample_shape(iter(train)) is None


def test_train_refuses_a_batch_no_machine_holds_and_writes_nothing(tmp_path) -> None:
    """Digits at 1024x1024 in batches of 1000: ~1 TiB for the backward. Once it would swap
    until the OOM killer; now exit 2 in seconds naming the batch to try, no checkpoint."""
    out = tmp_path / "m.pt"
    done = run(PRUNERD, "train", "resnet20", "--data", "digits", "--input-size", "1024,1024",
               "--batch-size", "1000", "--epochs", "1", "--threads", "1", "--out", str(out),
               timeout=120)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "prunerd train: error: training CifarResNet (1, 1024, 1024) at batch 1000" in done.stderr
    assert "try --batch-size" in done.stderr and not out.exists()

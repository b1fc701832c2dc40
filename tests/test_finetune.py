"""Knowledge-distillation recovery: the loss by hand, a frozen teacher, fx students."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import profiler
from pruner.data import load_data
from pruner.distill import KDLoss, finetune, frozen, kd_loss
from pruner.train import evaluate, fit


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The machine's 2 cores are shared; one intra-op thread avoids oversubscription stalls.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_kd_loss_hand_computed() -> None:
    student = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0, 0.0], [0.0, 4.0, 2.0]])
    labels = torch.tensor([0, 1])
    t, alpha = 2.0, 0.75

    kl, ce = 0.0, 0.0
    for s_row, t_row, y in zip(student.tolist(), teacher.tolist(), labels.tolist(), strict=True):
        p_s = softmax([v / t for v in s_row])
        p_t = softmax([v / t for v in t_row])
        kl += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
        ce += -math.log(softmax(s_row)[y])
    expected = alpha * t * t * kl / 2 + (1 - alpha) * ce / 2

    got = kd_loss(student, teacher, labels, temperature=t, alpha=alpha)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_kd_loss_limits() -> None:
    s = torch.randn(4, 5)
    y = torch.tensor([0, 1, 2, 3])
    # alpha = 0 is plain cross-entropy; a student equal to its teacher has no soft loss.
    assert torch.allclose(
        kd_loss(s, torch.randn(4, 5), y, alpha=0.0), nn.functional.cross_entropy(s, y)
    )
    assert float(kd_loss(s, s.clone(), y, alpha=1.0)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, s, y, temperature=0.0)
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(s, s, y, alpha=1.5)


def test_kd_loss_gradient_reaches_student_only() -> None:
    teacher = nn.Linear(3, 2)
    loss_fn = KDLoss(teacher, temperature=3.0, alpha=0.5)
    x = torch.randn(4, 3)
    logits = torch.randn(4, 2, requires_grad=True)
    loss_fn(logits, torch.tensor([0, 1, 0, 1]), x).backward()
    assert logits.grad is not None and teacher.weight.grad is None


def test_frozen_restores_state() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model.train()
    model[0].bias.requires_grad_(False)
    with frozen(model):
        assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.training
    assert model[0].weight.requires_grad and not model[0].bias.requires_grad


def test_finetune_recovers_a_damaged_fx_student() -> None:
    torch.manual_seed(0)
    data = load_data("synthetic", size=8, count=384, batch_size=32)
    info = data.info
    spec = profiler.ModelSpec("resnet20", info.in_channels, info.num_classes, info.input_size)
    teacher = profiler.build_model(spec)
    fit(teacher, data.train, data.val, epochs=2, lr=0.05, progress=False)
    teacher_acc = evaluate(teacher, data.test).accuracy
    assert teacher_acc > 0.8
    teacher.train()  # finetune must put it in eval mode itself and give the mode back
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}

    # Like a pruned model: a GraphModule with trained weights and one stage damaged.
    student = torch.fx.symbolic_trace(copy.deepcopy(teacher))
    for module in student.layer3.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    damaged_acc = evaluate(student, data.test).accuracy
    result = finetune(student, teacher, data.train, data.val, epochs=2, lr=0.02, progress=False)

    assert 1 <= result.epochs_run <= 2
    recovered = evaluate(student, data.test).accuracy
    assert recovered > damaged_acc and recovered >= teacher_acc - 0.1
    assert isinstance(student, torch.fx.GraphModule)
    # The teacher is untouched: same weights and BN statistics, mode and grad flags restored.
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_state[key]), key
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())

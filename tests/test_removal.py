"""The removal criterion: each block's held-out loss rise, scored with the shared prefix run
once, equals removing the block by surgery and evaluating the result."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from profiler import ModelSpec, build_model, discover, load_model, read_checkpoint, without_blocks
from pruner import cached_baseline, load_data
from pruner.depth import RemovalScorer, fit_adapters, removal_scores, remove_blocks
from pruner.depth.prefix import SharedPrefix

from .models_for_tests import DenseNetLike, InlineResidualNet


def _models() -> list[tuple[str, torch.nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    zoo = [
        (name, build_model(ModelSpec(name, in_channels=1, num_classes=10)), (2, 1, 16, 16))
        for name in ("resnet20", "mobilenetv2", "vgg16")
    ]
    tests = [
        ("inline", InlineResidualNet(in_channels=1), (2, 1, 12, 12)),
        ("densenet", DenseNetLike(in_channels=1), (2, 1, 12, 12)),
    ]
    return [(n, m.eval(), torch.randn(shape)) for n, m, shape in zoo + tests]


def _perturb_norms(model: torch.nn.Module) -> None:
    """Give BN layers non-trivial statistics, so a wrong value cannot pass as a right one."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


@pytest.mark.parametrize("case", _models(), ids=lambda c: c[0])
@torch.no_grad()
def test_shared_prefix_outputs_equal_each_variant_run_alone(case):
    """Every removable block's variant (identity, shortcut, adapter, a dense layer's zero),
    run from the whole model's kept values, returns what it returns run on its own; the
    in-place activations of the zoo and DenseNet cannot leak between variants."""
    _, model, x = case
    _perturb_norms(model)
    bg = discover(model, x[:1])
    blocks = [b for b in bg.blocks if b.removable and b.replacement != "none"]
    assert blocks
    calib = [(torch.randn_like(x), torch.zeros(len(x), dtype=torch.long))]
    adapters = fit_adapters(bg.gm, blocks, calib)
    variants = {
        b.name: (
            remove_blocks(copy.deepcopy(bg.gm), [b])
            if b.replacement == "zero"
            else without_blocks(bg.gm, [b], adapters)
        )
        for b in blocks
    }
    base_out, outs = SharedPrefix(bg.gm, variants)(x)
    torch.testing.assert_close(base_out, bg.gm(x), rtol=0, atol=0)
    for name, variant in variants.items():
        torch.testing.assert_close(outs[name], variant(x), rtol=1e-6, atol=1e-6, msg=name)
    torch.testing.assert_close(bg.gm(x), model(x), rtol=0, atol=0)  # nothing mutated


@torch.no_grad()
def test_shared_prefix_skips_the_prefix_of_a_residual_net():
    model = build_model(ModelSpec("resnet20", in_channels=1, num_classes=10)).eval()
    bg = discover(model, torch.zeros(1, 1, 16, 16))
    blocks = [b for b in bg.blocks if b.replacement in ("identity", "shortcut")]
    runner = SharedPrefix(bg.gm, {b.name: without_blocks(bg.gm, [b]) for b in blocks})
    # Removing block i of n runs only what follows it: about half of every variant.
    assert 0.35 < runner.shared_fraction() < 0.65


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    ckpt = cached_baseline(
        "resnet20", "digits", 3, cache_dir=tmp_path_factory.mktemp("ckpt"), progress=False
    )
    model = load_model(read_checkpoint(ckpt).spec, checkpoint=ckpt)
    return model, load_data("digits", batch_size=64)


@torch.no_grad()
def test_removal_scores_equal_removing_each_block_and_evaluating(digits):
    """Each score is the whole model's and the surgically pruned model's loss and accuracy
    on the same held-out images; its rise is their paired difference, with its se."""
    model, data = digits
    model.train()  # the scorer evaluates in eval mode and gives the mode back
    x0 = next(iter(data.val))[0][:1]
    blocks = [b for b in discover(model, x0).blocks if b.removable]
    scores = removal_scores(model, blocks, data.val, data.train, max_eval=100)
    assert model.training
    assert [s.name for s in scores] == [b.name for b in blocks]
    model.eval()
    xs, ys = zip(*data.val, strict=True)
    x, y = torch.cat(xs)[:100], torch.cat(ys)[:100].long()
    base_loss = F.cross_entropy(model(x), y, reduction="none")
    base_right = (model(x).argmax(1) == y).float()
    for s in scores[:: max(1, len(scores) // 3)]:  # a few, network order spread
        bg = discover(model, x0)
        block = next(b for b in bg.blocks if b.name == s.name)
        adapters = fit_adapters(bg.gm, [block], data.train)
        pruned = remove_blocks(bg.gm, [block], adapters).eval()
        loss = F.cross_entropy(pruned(x), y, reduction="none")
        right = (pruned(x).argmax(1) == y).float()
        assert s.samples == 100
        assert s.loss == pytest.approx(float(loss.mean()), rel=1e-5, abs=1e-6)
        assert s.accuracy == pytest.approx(float(right.mean()))
        assert s.loss_rise == pytest.approx(float((loss - base_loss).mean()), rel=1e-4, abs=1e-6)
        assert s.accuracy_drop == pytest.approx(float((base_right - right).mean()), abs=1e-9)
        se = float((loss - base_loss).std() / 100**0.5)
        assert s.loss_rise_se == pytest.approx(se, rel=1e-4, abs=1e-7)
    # A trained net on digits: removing the whole first unit of a stage hurts most.
    assert max(scores, key=lambda s: s.loss_rise).loss_rise > 0.05


@torch.no_grad()
def test_removed_blocks_score_nothing_and_gains_are_rises(digits):
    model, data = digits
    x0 = next(iter(data.val))[0][:1]
    bg = discover(model, x0)
    blocks = [b for b in bg.blocks if b.removable]
    gone = blocks[1]
    pruned = remove_blocks(bg.gm, [gone], fit_adapters(bg.gm, [gone], data.train))
    scores = RemovalScorer(data.val, data.train, max_eval=64)(pruned, blocks)
    assert gone.name not in scores.gains
    assert set(scores.gains) == {b.name for b in blocks} - {gone.name}
    assert scores.gains == {s.name: s.loss_rise for s in scores.removals}


@torch.no_grad()
def test_a_split_read_once_scores_every_image(digits):
    """A stream that can be read only once (a generator) gives the scores a list gives: the
    batch that traces the model is scored too, not drawn twice or lost."""
    model, data = digits
    batches = list(data.val)
    blocks = [b for b in discover(model, batches[0][0][:1]).blocks if b.removable][:3]
    listed = removal_scores(model, blocks, batches, data.train)
    streamed = removal_scores(model, blocks, (b for b in batches), data.train)
    assert streamed == listed
    assert listed[0].samples == sum(len(y) for _, y in batches)


def test_an_empty_split_is_a_clear_error(digits):
    model, data = digits
    x0 = next(iter(data.val))
    blocks = [b for b in discover(model, x0[0][:1]).blocks if b.removable]
    with pytest.raises(ValueError, match="held-out split is empty"):
        removal_scores(model, blocks, [], data.train)
    with pytest.raises(ValueError, match="max_eval must be at least 1, got 0"):
        removal_scores(model, blocks, [x0], data.train, max_eval=0)

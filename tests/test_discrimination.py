"""DBP scores: pooled features stream, probes separate what is separable, gains chain."""

from __future__ import annotations

import torch

from profiler import ModelSpec, build_model, discover
from pruner import load_data
from pruner.depth.discrimination import (
    INPUT,
    fit_probe,
    pooled_features,
    probe_metrics,
    score_blocks,
    score_features,
    scores_from_json,
    scores_to_json,
)


def test_probe_separates_informative_features_only():
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (600,), generator=gen)
    informative = torch.nn.functional.one_hot(y, 3).float() * 3 + torch.randn(600, 3, generator=gen)
    noise = torch.randn(600, 3, generator=gen)
    good = fit_probe(informative[:400], y[:400], 3)
    bad = fit_probe(noise[:400], y[:400], 3)
    acc_good, loss_good = probe_metrics(good, informative[400:], y[400:])
    acc_bad, loss_bad = probe_metrics(bad, noise[400:], y[400:])
    assert acc_good > 0.9 > 0.5 > acc_bad
    assert loss_good < loss_bad


def test_gains_chain_from_the_input_probe():
    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, 2, (400,), generator=gen)
    sep = y[:, None].float() * 4 + torch.randn(400, 2, generator=gen)
    feats = {INPUT: torch.randn(400, 2, generator=gen), "a": sep, "b": sep.clone()}
    fit = {k: v[:300] for k, v in feats.items()}
    held = {k: v[300:] for k, v in feats.items()}
    scores = score_features(fit, y[:300], held, y[300:], ["a", "b"], 2, metric="accuracy")
    a, b = scores
    assert a.previous == INPUT and b.previous == "a"
    assert a.gain > 0.3  # from chance to separable
    assert abs(b.gain) < 1e-6  # the same features again: nothing gained
    assert scores_from_json(scores_to_json(scores)) == scores


def test_gain_standard_errors_are_paired_over_the_held_out_samples():
    """Two probes scored on the same samples: the gain's se is that of the per-sample
    differences, so a copy of the previous features gains 0 +- 0, and the se shrinks
    as the held-out split grows (about 1 / sqrt(N))."""
    gen = torch.Generator().manual_seed(2)
    n = 4300
    y = torch.randint(0, 3, (n,), generator=gen)
    weak = torch.nn.functional.one_hot(y, 3).float() + torch.randn(n, 3, generator=gen)
    strong = weak + torch.nn.functional.one_hot(y, 3).float() * 2
    feats = {INPUT: torch.randn(n, 2, generator=gen), "a": weak, "b": strong, "c": strong}
    fit = {k: v[:300] for k, v in feats.items()}

    def scored(count: int):
        held = {k: v[300 : 300 + count] for k, v in feats.items()}
        return score_features(fit, y[:300], held, y[300 : 300 + count], ["a", "b", "c"], 3)

    small, large = scored(400), scored(4000)
    for a, b, c in (small, large):
        assert b.loss_gain > 4 * b.loss_gain_se > 0  # stronger features: a clear gain
        assert c.loss_gain == 0.0 and c.loss_gain_se == 0.0 and c.accuracy_gain_se == 0.0
        assert a.accuracy_gain_se > 0
    ratio = small[1].loss_gain_se / large[1].loss_gain_se
    assert 2.0 < ratio < 4.5  # sqrt(10) = 3.2
    old = scores_to_json(small).replace('"loss_gain_se"', '"unknown"')
    assert scores_from_json(old)[1].loss_gain_se is None  # a record from before: no se


def test_score_blocks_on_a_traced_model_streams_bounded_samples():
    torch.manual_seed(0)
    data = load_data("synthetic", batch_size=32, limit=200)
    spec = ModelSpec("resnet20", 1, 4, (16, 16))
    model = build_model(spec).eval()
    bg = discover(model, torch.zeros(1, 1, 16, 16))
    feats, labels = pooled_features(bg.gm, bg.blocks, data.train, max_samples=50)
    assert len(labels) == 50
    assert feats[INPUT].shape == (50, 1)
    assert feats["layer3.2"].shape == (50, 64)
    calls = []
    scores = score_blocks(
        model,
        data.train,
        data.val,
        4,
        max_fit=96,
        max_eval=20,
        progress=lambda what, done, total: calls.append(what),
    )
    assert [s.name for s in scores] == [b.name for b in bg.blocks]
    assert all(0.0 <= s.accuracy <= 1.0 and s.loss > 0 for s in scores)
    assert "probes" in calls


def test_a_dense_layer_is_probed_on_what_the_network_holds_after_it():
    """Its new channels beside its input: the concatenation the next layer reads."""
    from .models_for_tests import DenseNetLike

    torch.manual_seed(0)
    model = DenseNetLike(in_channels=1, num_classes=4, growth=8).eval()
    data = load_data("synthetic", batch_size=16, limit=64)
    bg = discover(model, torch.zeros(1, 1, 16, 16))
    dense = [b for b in bg.blocks if b.kind == "dense" and b.stage == 0]
    assert len(dense) == 3
    feats, _ = pooled_features(bg.gm, bg.blocks, data.train, max_samples=32)
    widths = [feats[b.name].shape[1] for b in dense]
    assert widths == [16 + 8, 16 + 16, 16 + 24]
    # layer k's input is exactly what layer k-1's probe saw
    for before, after in zip(dense, dense[1:]):
        held = feats[before.name]
        assert torch.allclose(feats[after.name][:, : held.shape[1]], held, atol=1e-6)

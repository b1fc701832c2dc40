"""Launch choices: the on-disk cache, its key, config pruning, the backend pick, and the
weight laid out once by FusedConv2d."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from kernels import FusedConv2d
from kernels.conv_bn_relu import (
    HAS_TRITON,
    conv_key,
    interpreting,
    laid_out_weight,
    lay_out_weight,
)
from kernels.tuning import (
    CACHE_VERSION,
    CONFIGS,
    Choice,
    ConvKey,
    TileConfig,
    TuneCache,
    cache_dir,
    pick,
    prune_configs,
    rule_choice,
)

KEY = ConvKey(
    "NVIDIA H200 sm132", "3.6.0", 1, 16, 32, 32, 16, 3, 3, (1, 1), (1, 1), (1, 1),
    "float16", "channels_last", "relu", True, "ieee",
)  # fmt: skip
CHOICE = Choice(
    CONFIGS[4], "torch", "triton", {"triton:graph": 4.9e-6, "torch:graph": 1.1e-5}, True
)


def test_cache_round_trip_between_instances(tmp_path) -> None:
    path = tmp_path / "sub" / "cache.json"
    TuneCache(path).put(KEY, CHOICE)
    again = TuneCache(path)  # a second process reads what the first wrote
    assert again.get(KEY) == CHOICE
    assert len(again) == 1
    body = json.loads(path.read_text())
    assert body["version"] == CACHE_VERSION and KEY.text() in body["entries"]
    assert not list(path.parent.glob(".conv_bn_relu.*"))  # no temporary file left behind


def test_cache_merges_writes_of_two_processes(tmp_path) -> None:
    path = tmp_path / "cache.json"
    a, b = TuneCache(path), TuneCache(path)
    assert a.get(KEY) is None and b.get(KEY) is None  # both loaded an empty file
    other = dataclasses.replace(KEY, n=16)
    a.put(KEY, CHOICE)
    b.put(other, CHOICE)
    assert TuneCache(path).get(KEY) == CHOICE and TuneCache(path).get(other) == CHOICE


def test_cache_ignores_a_broken_or_foreign_file(tmp_path) -> None:
    path = tmp_path / "cache.json"
    path.write_text("{not json")
    assert TuneCache(path).get(KEY) is None
    path.write_text(json.dumps({"version": 999, "entries": {KEY.text(): CHOICE.to_dict()}}))
    assert TuneCache(path).get(KEY) is None
    TuneCache(path).put(KEY, CHOICE)  # and overwrites it with a valid one
    assert TuneCache(path).get(KEY) == CHOICE


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PRUNERD_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("PRUNERD_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "prunerd")


@pytest.mark.parametrize(
    "field, value",
    [("layout", "nchw"), ("activation", "relu6"), ("activation", "none"), ("dtype", "float32"),
     ("device", "NVIDIA H200 sm66"), ("triton", "3.7.0"), ("bias", False), ("precision", "tf32"),
     ("stride", (2, 2)), ("k", 32)],
)  # fmt: skip
def test_key_separates_what_changes_the_winner(field: str, value: object) -> None:
    other = dataclasses.replace(KEY, **{field: value})
    assert other.text() != KEY.text()
    assert f"{field}={value}" in other.text()


def test_key_of_a_call_carries_layout_and_activation() -> None:
    x = torch.randn(2, 8, 6, 6)
    w, b = torch.randn(4, 8, 3, 3), torch.randn(4)

    def key(x: torch.Tensor, act: str | None, bias: torch.Tensor | None = b) -> ConvKey:
        return conv_key(x, w, bias, (1, 1), (1, 1), (1, 1), act, "ieee", "Test GPU sm8", "3.6.0")

    nchw = key(x, "relu")
    cl = key(x.contiguous(memory_format=torch.channels_last), "relu")
    assert (nchw.layout, cl.layout) == ("nchw", "channels_last")
    assert (key(x, "relu6").activation, key(x, None).activation) == ("relu6", "none")
    assert len({nchw, cl, key(x, "relu6"), key(x, None), key(x, "relu", None)}) == 5
    assert (nchw.n, nchw.c, nchw.h, nchw.w, nchw.k, nchw.kh) == (2, 8, 6, 6, 4, 3)
    assert nchw.device == "Test GPU sm8" and nchw.dtype == "float32" and nchw.bias
    # A 1x1 image is contiguous in both formats: that is NCHW, as the kernel lays out y.
    one = torch.randn(1, 8, 1, 1).contiguous(memory_format=torch.channels_last)
    assert key(one, "relu").layout == "nchw"


def test_prune_drops_tiles_larger_than_the_problem() -> None:
    small = prune_configs(CONFIGS, m=64, n=16, k=16)  # batch 1, 8x8, 16 -> 16 channels
    assert small and all(c.block_n == 16 for c in small)
    assert all(c.block_m <= 64 and c.block_k == 16 for c in small)
    big = prune_configs(CONFIGS, m=1 << 20, n=1024, k=1024)
    assert big == list(CONFIGS)
    mid = prune_configs(CONFIGS, m=1 << 20, n=32, k=16)
    assert {c.block_n for c in mid} == {16, 32} and {c.block_k for c in mid} == {16}
    tiny = [TileConfig(128, 128, 32, 3, 8)]
    assert prune_configs(tiny, 1, 1, 1) == tiny  # never empty


def test_pick_takes_the_faster_backend_per_mode() -> None:
    times = {
        "triton:eager": 20e-6,
        "torch:eager": 11e-6,
        "triton:graph": 5e-6,
        "torch:graph": 11e-6,
    }
    assert pick(times) == ("torch", "triton")
    assert pick({"triton:eager": 1e-6, "triton:graph": 1e-6}) == ("triton", "triton")
    assert pick({**times, "torch:graph": 5e-6}) == ("torch", "triton")  # a tie stays on Triton


def test_eager_pick_weighs_host_time_against_gpu_time() -> None:
    """Eager, Triton must save more GPU time than its launch path costs the host."""
    us = 2.0**-20  # about a microsecond, and sums of its multiples are exact
    base = {"triton:eager": 9 * us, "torch:eager": 10 * us, "triton:graph": 6 * us,
            "torch:graph": 10 * us}  # fmt: skip
    # Saves 4 us of GPU time, costs 3 us more host time: Triton, eager and graph.
    assert pick({**base, "triton:host": 8 * us, "torch:host": 5 * us}) == ("triton", "triton")
    # Costs 6 us more host time: cuDNN eager although Triton won back to back.
    assert pick({**base, "triton:host": 11 * us, "torch:host": 5 * us}) == ("torch", "triton")
    # A tie goes to cuDNN eager; Triton cheaper on the host and as fast on the GPU wins.
    assert pick({**base, "triton:host": 9 * us, "torch:host": 5 * us})[0] == "torch"
    even = {**base, "triton:graph": 10 * us}
    assert pick({**even, "triton:host": 4 * us, "torch:host": 5 * us})[0] == "triton"


def test_rule_choice_without_measurement() -> None:
    c = rule_choice(CONFIGS, m=64, n=16, k=16)
    assert not c.measured and c.times_s == {}
    assert (c.backend(capturing=False), c.backend(capturing=True)) == ("torch", "triton")
    assert c.config in prune_configs(CONFIGS, 64, 16, 16)
    with pytest.raises(ValueError, match="backend"):
        Choice(CONFIGS[0], "cudnn", "triton")


def test_lay_out_weight_is_cout_fastest_and_indexed_oihw() -> None:
    w = torch.randn(8, 4, 3, 3)
    laid = lay_out_weight(w)
    assert laid.stride(0) == 1 and torch.equal(laid, w)
    assert lay_out_weight(laid) is laid


needs_interpreter = pytest.mark.skipif(
    not (HAS_TRITON and interpreting()), reason="needs the Triton interpreter (no GPU present)"
)


@needs_interpreter
def test_fused_conv_lays_out_its_weight_once() -> None:
    torch.manual_seed(0)
    m = FusedConv2d(torch.randn(8, 4, 3, 3) / 6, torch.randn(8), padding=1, backend="triton")
    x = torch.randn(1, 4, 6, 6)
    with torch.inference_mode():
        y1 = m(x)
        first = laid_out_weight(m.weight, x.dtype)
        y2 = m(x)
    assert laid_out_weight(m.weight, x.dtype) is first  # no new copy on the second call
    assert first.stride(0) == 1 and torch.equal(first, m.weight)
    torch.testing.assert_close(y1, y2)
    ref = F.relu(F.conv2d(x.double(), m.weight.double(), m.bias.double(), padding=1)).float()
    torch.testing.assert_close(y1, ref, rtol=1e-4, atol=1e-4)

    # load_state_dict writes in place: the version counter moves, the layout follows.
    state = {k: v * 2 if k == "weight" else v for k, v in m.state_dict().items()}
    m.load_state_dict(state)
    with torch.inference_mode():
        y3 = m(x)
    assert laid_out_weight(m.weight, x.dtype) is not first
    ref = F.relu(F.conv2d(x.double(), m.weight.double(), m.bias.double(), padding=1)).float()
    torch.testing.assert_close(y3, ref, rtol=1e-4, atol=1e-4)

    # A new weight tensor (a new address) is laid out again too.
    m.weight = torch.nn.Parameter(torch.randn(8, 4, 3, 3) / 6)
    with torch.inference_mode():
        y4 = m(x)
    ref = F.relu(F.conv2d(x.double(), m.weight.double(), m.bias.double(), padding=1)).float()
    torch.testing.assert_close(y4, ref, rtol=1e-4, atol=1e-4)


@needs_interpreter
def test_auto_backend_runs_torch_on_cpu_tensors() -> None:
    m = FusedConv2d(torch.randn(8, 4, 3, 3), torch.randn(8), padding=1, backend="auto")
    x = torch.randn(1, 4, 6, 6)
    with torch.inference_mode():
        y = m(x)
    torch.testing.assert_close(y, F.relu(F.conv2d(x, m.weight, m.bias, padding=1)))


def test_laid_out_weight_follows_in_place_writes_and_skips_inference_tensors() -> None:
    w = torch.nn.Parameter(torch.randn(8, 4, 3, 3))
    first = laid_out_weight(w, torch.float32)
    assert laid_out_weight(w, torch.float32) is first
    with torch.no_grad():
        w.mul_(-1)  # as an optimizer step writes
    again = laid_out_weight(w, torch.float32)
    assert again is not first and torch.equal(again, w)
    half = laid_out_weight(w, torch.float16)
    assert half.dtype == torch.float16 and half.stride(0) == 1
    with torch.inference_mode():
        frozen = torch.randn(8, 4, 3, 3)
    laid = laid_out_weight(frozen, torch.float32)
    assert torch.equal(laid, frozen) and laid.stride(0) == 1


@pytest.mark.parametrize(
    "gpu_test, has_cuda, outcome",
    [(True, True, "failed"), (True, False, "skipped"), (False, True, "skipped")],
)
def test_a_skipped_gpu_test_fails_where_cuda_is_present(gpu_test, has_cuda, outcome) -> None:
    from tests.conftest import fail_skipped_gpu_test

    report = pytest.TestReport(
        "t.py::test", ("t.py", 1, "test"), {}, "skipped", ("t.py", 1, "Skipped: no GPU"), "call"
    )
    fail_skipped_gpu_test(report, gpu_test, has_cuda)
    assert report.outcome == outcome
    if outcome == "failed":
        assert "skipped on a machine with a CUDA device: Skipped: no GPU" in report.longrepr


def test_tuning_stats_on_cpu_measure_nothing() -> None:
    """Without a GPU the interpreter's fixed tile is used: no shape is timed, none chosen."""
    import torch

    from kernels import conv2d_triton, tuning_stats

    x, w = torch.randn(1, 4, 6, 6), torch.randn(8, 4, 3, 3)
    conv2d_triton(x, w, None, padding=1)
    stats = tuning_stats()
    assert stats.measured == 0 and stats.eager == {} and stats.graph == {}
    assert stats.cache_entries >= 0

"""The Triton implicit-GEMM kernel against an exact fp64 ``F.conv2d`` (+ activation).

Without a GPU the kernel runs under the Triton interpreter on CPU tensors
(conftest switches it on before anything imports Triton); with one, the
``gpu`` tests compile it for the GPU. Interpreter sizes stay tiny because the
interpreter executes every program instance in Python.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import conv2d_bias_relu
from kernels.conv_bn_relu import (
    HAS_TRITON,
    INTERPRET_CONFIG,
    autotune_configs,
    conv2d_triton,
    interpreting,
)
from kernels.tuning import CONFIGS, TileConfig

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

needs_interpreter = pytest.mark.skipif(
    not interpreting(),
    reason="runs under the Triton interpreter, which conftest switches on only without a GPU",
)
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none present")

# (rtol, atol) against an exact fp64 reference computed from the same (rounded) inputs,
# so no TF32 on the reference side whatever torch.backends allow. The kernel accumulates in
# fp32 with IEEE fp32 products (input_precision="ieee"): over at most 21 * 25 terms of
# unit-scale values its error is ~1e-6, so 1e-4 is loose; half types round the output to
# 11 (fp16) or 8 (bf16) mantissa bits: 2**-11 and 2**-8 relative, with headroom.
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 2e-2), torch.bfloat16: (3e-2, 8e-2)}
ACT = {None: lambda y: y, "relu": F.relu, "relu6": lambda y: y.clamp(0, 6)}


@st.composite
def conv_cases(draw: st.DrawFn) -> dict:
    k = draw(st.sampled_from([1, 3, 5]))
    dil = draw(st.sampled_from([1, 2]))
    pad = draw(st.integers(0, (k // 2) * dil))
    span = dil * (k - 1) + 1  # receptive field of one output pixel
    return dict(
        n=draw(st.integers(1, 2)),
        cin=draw(st.integers(1, 21)),  # crosses BLOCK_K=16 without being a multiple
        cout=draw(st.integers(1, 40)),  # crosses BLOCK_N=32
        h=draw(st.integers(max(1, span - 2 * pad), 9)),
        w=draw(st.integers(max(1, span - 2 * pad), 9)),
        k=k,
        stride=draw(st.sampled_from([1, 2])),
        pad=pad,
        dil=dil,
        channels_last=draw(st.booleans()),
        activation=draw(st.sampled_from([None, "relu", "relu6"])),
        bias=draw(st.booleans()),
    )


def _check(
    case: dict, dtype: torch.dtype, device: str = "cpu", config: TileConfig | None = None
) -> None:
    """Run one case through the Triton backend (with ``config``: that tile, no tuning)."""
    g = torch.Generator().manual_seed(case["n"] * 1000 + case["cin"] * 31 + case["cout"])
    x = torch.randn(case["n"], case["cin"], case["h"], case["w"], generator=g)
    fan_in = case["cin"] * case["k"] ** 2
    w = torch.randn(case["cout"], case["cin"], case["k"], case["k"], generator=g) / fan_in**0.5
    b = torch.randn(case["cout"], generator=g) if case["bias"] else None
    x, w = x.to(device, dtype), w.to(device, dtype)
    b = b.to(device, dtype) if b is not None else None
    if case["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    conv = (case["stride"], case["pad"], case["dil"])
    if config is None:
        y = conv2d_bias_relu(
            x, w, b, *conv, backend="triton", activation=case["activation"], relu=False
        )
    else:
        y = conv2d_triton(x, w, b, *conv, activation=case["activation"], config=config)
    ref = F.conv2d(x.double(), w.double(), b.double() if b is not None else None, *conv)
    ref = ACT[case["activation"]](ref).float()
    assert y.dtype == dtype and y.shape == ref.shape
    if not x.is_contiguous() and case["cout"] > 1 and y.shape[2] * y.shape[3] > 1:
        # Unambiguously channels_last in, so channels_last out.
        assert y.is_contiguous(memory_format=torch.channels_last)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(y.float(), ref, rtol=rtol, atol=atol)


@needs_interpreter
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=conv_cases())
def test_triton_matches_conv2d_fp32(case: dict) -> None:
    _check(case, torch.float32)


@needs_interpreter
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=conv_cases())
def test_triton_matches_conv2d_fp16(case: dict) -> None:
    _check(case, torch.float16)


@needs_interpreter
@pytest.mark.parametrize("channels_last", [False, True])
def test_triton_resnet_like_shapes(channels_last: bool) -> None:
    # Fixed cases so the common deploy shapes are always covered, whatever hypothesis draws.
    for k, stride, pad in ((3, 1, 1), (3, 2, 1), (1, 2, 0)):
        case = dict(n=2, cin=16, cout=32, h=8, w=8, k=k, stride=stride, pad=pad, dil=1,
                    channels_last=channels_last, activation="relu", bias=True)  # fmt: skip
        _check(case, torch.float32)


@needs_interpreter
@pytest.mark.parametrize("cfg", [c for c in CONFIGS if c.block_m * c.block_n <= 64 * 32])
def test_explicit_tiles_under_interpreter(cfg: TileConfig) -> None:
    # The tiles the GPU tunes over, run by the interpreter (small ones: it is slow).
    case = dict(n=1, cin=19, cout=35, h=5, w=6, k=3, stride=1, pad=1, dil=1,
                channels_last=True, activation="relu6", bias=True)  # fmt: skip
    _check(case, torch.float32, "cpu", cfg)


@needs_interpreter
def test_triton_wrapper_validation() -> None:
    x, w = torch.randn(1, 4, 5, 5), torch.randn(4, 2, 3, 3)
    with pytest.raises(ValueError, match="groups=1"):
        conv2d_bias_relu(x, w, None, backend="triton")
    with pytest.raises(TypeError, match="bfloat16"):
        conv2d_bias_relu(x.bfloat16(), w.repeat(1, 2, 1, 1).bfloat16(), None, backend="triton")
    # Grouped convs take the PyTorch path even when Triton is asked for (backend auto).
    y = conv2d_bias_relu(x, w, None, padding=1, groups=2)
    torch.testing.assert_close(y, F.relu(F.conv2d(x, w, None, 1, 1, 1, 2)))


@needs_interpreter
def test_fused_model_on_triton_backend() -> None:
    from kernels import fuse
    from profiler import load_model

    torch.manual_seed(0)
    model = load_model("resnet20", in_channels=3, num_classes=10)
    x = torch.randn(1, 3, 8, 8)
    fused = fuse(model, backend="triton")
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)


def test_configs_compile_on_ampere_and_hopper() -> None:
    # Powers of two everywhere, and dot K >= 16 so fp16/bf16 tiles are legal.
    for cfg in [*autotune_configs(), type("C", (), {"kwargs": INTERPRET_CONFIG})()]:
        for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K"):
            v = cfg.kwargs[key]
            assert v >= 16 and v & (v - 1) == 0, (key, v)


@pytest.mark.gpu
@gpu
@settings(max_examples=15, deadline=None)
@given(case=conv_cases(), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_triton_on_gpu(case: dict, dtype: torch.dtype) -> None:
    # One fixed tile: each drawn case compiles once instead of tuning every config.
    assert not interpreting(), "conftest keeps the interpreter off when a GPU is present"
    _check(case, dtype, "cuda", CONFIGS[4])


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_every_config_on_gpu(dtype: torch.dtype) -> None:
    case = dict(n=2, cin=21, cout=40, h=9, w=7, k=3, stride=1, pad=1, dil=1,
                channels_last=True, activation="relu", bias=True)  # fmt: skip
    for cfg in CONFIGS:
        _check(case, dtype, "cuda", cfg)


@pytest.mark.gpu
@gpu
def test_auto_backend_measures_once_and_keeps_the_choice(tmp_path, monkeypatch) -> None:
    import kernels.conv_bn_relu as cbr
    from kernels.tuning import TuneCache, pick

    monkeypatch.setenv("PRUNERD_CACHE", str(tmp_path))
    monkeypatch.setattr(cbr, "_CHOSEN", {})
    monkeypatch.setattr(cbr, "_SEEN", {})
    x = torch.randn(2, 16, 16, 16, device="cuda", dtype=torch.float16)
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(32, 16, 3, 3, device="cuda", dtype=torch.float16) / 12
    ref = F.relu(F.conv2d(x.double(), w.double(), None, 1, 1)).float()
    with torch.inference_mode():
        y = conv2d_bias_relu(x, w, None, padding=1)
    torch.testing.assert_close(y.float(), ref, rtol=1e-2, atol=2e-2)
    (entry,) = TuneCache(tmp_path / "conv_bn_relu.json")._read().values()
    timed = {f"{b}:{mode}" for b in ("triton", "torch") for mode in ("graph", "eager", "host")}
    assert entry.measured and timed <= set(entry.times_s)
    assert all(0 < entry.times_s[k] < 1e-2 for k in timed)
    assert (entry.eager, entry.graph) == pick(entry.times_s)
    assert "layout=channels_last" in next(iter(TuneCache(tmp_path / "conv_bn_relu.json")._read()))
    # Captured into a CUDA graph, the graph-mode choice runs and gives the same result.
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode():
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            yg = conv2d_bias_relu(x, w, None, padding=1)
        graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(yg.float(), ref, rtol=1e-2, atol=2e-2)


@pytest.mark.gpu
@gpu
def test_fused_conv_launches_one_kernel_and_no_weight_copy() -> None:
    from kernels import FusedConv2d

    m = FusedConv2d(torch.randn(32, 16, 3, 3) / 12, torch.randn(32), padding=1, backend="triton")
    m = m.to("cuda", torch.float16)
    x = torch.randn(1, 16, 16, 16, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        m(x)  # tunes, compiles and lays the weight out
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            m(x)
            torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) == 1 and "_conv_kernel" in kernels[0], kernels

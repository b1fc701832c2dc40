"""Conv2d with a folded-BN bias and a ReLU/ReLU6 epilogue, in one launch.

Two backends behind :func:`conv2d_bias_relu`:

- ``triton``: an implicit-GEMM Triton kernel (CUDA tensors; CPU tensors only
  under the Triton interpreter, ``TRITON_INTERPRET=1``);
- ``torch``: ``F.conv2d`` with the folded bias followed by an in-place
  activation; this is the CPU path and the fallback for grouped/depthwise convs.

Triton itself is imported on first use, not when this module is imported:
Triton decides at its own import whether its language functions run compiled
or interpreted (``TRITON_INTERPRET``), so importing it early from here (the
profiler imports ``kernels``) would fix that choice before a test could set it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from .fold import fold_conv_bn
from .tuning import (
    CACHE_FILE,
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

# triton is a Linux-only dependency; the torch path works without it.
HAS_TRITON = importlib.util.find_spec("triton") is not None
triton: Any = None  # bound by _import_triton(); the kernel body resolves ``tl`` at compile time
tl: Any = None

ACTIVATIONS = (None, "relu", "relu6")
BACKENDS = ("auto", "triton", "torch")
_ACT_CODE = {None: 0, "relu": 1, "relu6": 2}

# The tile the kernel runs with under the interpreter: tuning needs a GPU, so the
# interpreter gets one fixed config. Larger tiles mean fewer interpreted
# programs, which is what makes the interpreter fast.
INTERPRET_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 16}
INTERPRET_TILE = {"block_m": 64, "block_n": 32, "block_k": 16, "num_stages": 1, "num_warps": 4}


def _pair(v: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(i) for i in v)
    if len(t) == 1:
        return (t[0], t[0])
    if len(t) != 2:
        raise ValueError(f"expected an int or a pair, got {v!r}")
    return t  # type: ignore[return-value]


def interpreting() -> bool:
    """True when Triton kernels run under the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _import_triton() -> None:
    global triton, tl
    if triton is None:
        if not HAS_TRITON:
            raise RuntimeError("backend='triton' needs the triton package, which is not installed")
        import triton as _triton
        import triton.language as _tl

        triton, tl = _triton, _tl


def _conv_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    N, C, H, W, K, OH, OW,
    sxn, sxc, sxh, sxw,
    swk, swc, swh, sww,
    syn, syk, syh, syw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr,
    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Implicit-GEMM convolution, one (BLOCK_M x BLOCK_N) output tile per program.

    GEMM view: rows are output pixels (M = N*OH*OW, index -> n, oh, ow),
    columns are output channels (K here, the conv's Cout), and the
    reduction runs over KH*KW*C. The reduction loops over the kernel window
    (kh, kw) outside and input channels in BLOCK_K chunks inside, so the
    A tile is x[n, c:c+BLOCK_K, ih, iw] for BLOCK_M pixels (masked where the
    window falls into padding) and the B tile is w[k, c:c+BLOCK_K, kh, kw].
    Every address comes from strides, so NCHW and channels_last tensors
    both work unchanged. Accumulates in fp32; the epilogue adds the folded
    BN bias, applies ReLU (ACT=1) or ReLU6 (ACT=2) and stores in y's dtype.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    M = N * OH * OW

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < K

    ow = offs_m % OW
    oh = (offs_m // OW) % OH
    n = offs_m // (OW * OH)
    x_base = x_ptr + n * sxn  # [BLOCK_M] pointers to each pixel's image
    w_base = w_ptr + offs_n * swk  # [BLOCK_N] pointers to each output filter

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kh in range(KH):
        ih = oh * stride_h - pad_h + kh * dil_h
        ok_h = (ih >= 0) & (ih < H)
        for kw in range(KW):
            iw = ow * stride_w - pad_w + kw * dil_w
            ok_pix = mask_m & ok_h & (iw >= 0) & (iw < W)
            a_row = x_base + ih * sxh + iw * sxw
            b_col = w_base + kh * swh + kw * sww
            for c0 in range(0, C, BLOCK_K):
                cc = c0 + offs_c
                ok_c = cc < C
                a = tl.load(
                    a_row[:, None] + cc[None, :] * sxc,
                    mask=ok_pix[:, None] & ok_c[None, :],
                    other=0.0,
                )
                b = tl.load(
                    b_col[None, :] + cc[:, None] * swc,
                    mask=ok_c[:, None] & mask_n[None, :],
                    other=0.0,
                )
                acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    if ACT == 1:
        acc = tl.maximum(acc, 0.0)
    elif ACT == 2:
        acc = tl.minimum(tl.maximum(acc, 0.0), 6.0)

    y_row = y_ptr + n * syn + oh * syh + ow * syw
    y_ptrs = y_row[:, None] + offs_n[None, :] * syk
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def autotune_configs() -> list[Any]:
    """The tile configs as ``triton.Config`` objects (for tools that take them)."""
    _import_triton()
    return [
        triton.Config(
            {"BLOCK_M": c.block_m, "BLOCK_N": c.block_n, "BLOCK_K": c.block_k},
            num_stages=c.num_stages,
            num_warps=c.num_warps,
        )
        for c in CONFIGS
    ]


_KERNELS: dict[str, Any] = {}


def _kernel(interpret: bool) -> Any:
    """The jitted kernel; built on first use so TRITON_INTERPRET is read at call time."""
    mode = "interpret" if interpret else "compiled"
    if mode not in _KERNELS:
        _KERNELS[mode] = triton.jit(_conv_kernel)
    return _KERNELS[mode]


def _out_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def lay_out_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (K, C, KH, KW) stored Cout-fastest ((KH, KW, C, K) in memory), still indexed OIHW.

    B tiles read BLOCK_N output channels side by side, so with Cout fastest
    those loads are contiguous. A weight already laid out so is returned as is.
    """
    if weight.dim() != 4 or weight.stride(0) == 1:  # not a conv weight: the wrapper says why
        return weight
    return weight.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)


# Weight -> (its state when laid out, the laid-out copy); entries die with their weight.
_LAID_OUT: WeakIdKeyDictionary = WeakIdKeyDictionary()


def laid_out_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` in ``dtype`` and the kernel's layout (:func:`lay_out_weight`), copied once.

    The copy is kept while ``weight`` lives and made again only when
    ``weight`` changed: its version counter moves on every in-place write
    (``load_state_dict``, an optimizer step), and ``.to()`` makes a new tensor.
    Writes through ``weight.data`` bypass the version counter and are not seen.
    Inference tensors have no version counter: they are laid out on every call.
    """
    if weight.is_inference():
        return lay_out_weight(weight.detach().to(dtype))
    state = (weight._version, weight.data_ptr(), dtype)
    hit = _LAID_OUT.get(weight)
    if hit is not None and hit[0] == state:
        return hit[1]
    with torch.no_grad():
        laid = lay_out_weight(weight.detach().to(dtype))
    _LAID_OUT[weight] = (state, laid)
    return laid


def _layout(x: torch.Tensor) -> str:
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return "channels_last" if cl else "nchw"


def conv_key(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    activation: str | None,
    precision: str,
    device: str,
    triton_version: str,
) -> ConvKey:
    """The tuning key of one call: shapes, conv geometry, dtype, x's layout, activation."""
    N, C, H, W = x.shape
    K, _, KH, KW = weight.shape
    return ConvKey(
        device, triton_version, N, C, H, W, K, KH, KW, tuple(stride), tuple(padding),
        tuple(dilation), str(x.dtype).removeprefix("torch."), _layout(x),
        activation or "none", bias is not None, precision,
    )  # fmt: skip


_CACHES: dict[Path, TuneCache] = {}
_CHOSEN: dict[ConvKey, Choice] = {}
_SEEN: dict[tuple, Choice] = {}  # the same choices by the call's raw arguments
_MEASURED: list[ConvKey] = []  # shapes this process had to time (not found in the cache file)


@dataclass(frozen=True)
class TuningStats:
    """Launch choices this process holds: shapes it had to time itself (``measured``), how
    many shapes run on each backend eager and under a CUDA graph, and the cache file's size."""

    measured: int
    eager: dict[str, int]
    graph: dict[str, int]
    cache_entries: int


def tuning_stats() -> TuningStats:
    eager: dict[str, int] = {}
    graph: dict[str, int] = {}
    for c in _CHOSEN.values():
        eager[c.eager] = eager.get(c.eager, 0) + 1
        graph[c.graph] = graph.get(c.graph, 0) + 1
    return TuningStats(len(_MEASURED), eager, graph, len(_tune_cache()))


def _tune_cache() -> TuneCache:
    """The cache file's object for the current ``$PRUNERD_CACHE`` (read once per path)."""
    path = cache_dir() / CACHE_FILE
    if path not in _CACHES:
        _CACHES[path] = TuneCache(path)
    return _CACHES[path]


@functools.cache
def _device_name(index: int) -> str:
    props = torch.cuda.get_device_properties(index)
    return f"{props.name} sm{props.multi_processor_count}"


@dataclass
class _Call:
    """One validated Triton call: launch arguments, output, and its tuning key."""

    args: tuple
    meta: dict[str, Any]
    y: torch.Tensor
    m: int
    k: int
    c: int
    key: ConvKey | None
    interpret: bool
    inputs: tuple  # the arguments of _prepare, to set the call up again

    def launch(self, cfg: TileConfig) -> torch.Tensor:
        meta = cfg.meta()
        grid = (triton.cdiv(self.m, cfg.block_m), triton.cdiv(self.k, cfg.block_n))
        if self.interpret:  # the interpreter takes no num_warps/num_stages
            meta = {k: v for k, v in meta.items() if k.startswith("BLOCK")}
            _kernel(True)[grid](*self.args, **self.meta, **meta)
            return self.y
        # Triton launches on the current device and stream: make that the tensors' device.
        index = self.y.device.index
        if index is not None and index != torch.cuda.current_device():
            with torch.cuda.device(index):
                _kernel(False)[grid](*self.args, **self.meta, **meta)
        else:
            _kernel(False)[grid](*self.args, **self.meta, **meta)
        return self.y


def _check_call(x: torch.Tensor, weight: torch.Tensor, activation: str | None) -> bool:
    """Refuse what the Triton kernel cannot run, naming the way out; True under the interpreter."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(
            f"expected 4-D x and weight, got {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    if weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"groups=1 only: weight has {weight.shape[1]} input channels, x has {x.shape[1]} "
            "(grouped convs use the torch backend)"
        )
    _import_triton()
    interpret = interpreting()
    if x.device.type != "cuda" and not interpret:
        raise RuntimeError(
            "the Triton kernel needs CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 "
            "before the first Triton call, or use backend='torch'"
        )
    if x.dtype == torch.bfloat16 and interpret:
        raise TypeError("the Triton interpreter has no bfloat16; bf16 runs on GPU only")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"unsupported dtype {x.dtype}")
    return interpret


def _prepare(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int | tuple[int, int],
    padding: int | tuple[int, int],
    dilation: int | tuple[int, int],
    activation: str | None,
    input_precision: str,
    keyed: bool = True,
) -> _Call:
    """Validate a Triton call, allocate its output (x's layout) and bind the kernel arguments.

    ``keyed=False`` skips building the tuning key (for a call whose choice is known).
    """
    interpret = _check_call(x, weight, activation)
    N, C, H, W = x.shape
    K, _, KH, KW = weight.shape
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    OH, OW = _out_size(H, KH, sh, ph, dh), _out_size(W, KW, sw, pw, dw)
    if OH <= 0 or OW <= 0:
        raise ValueError(
            f"output would be empty: input {H}x{W}, kernel {KH}x{KW}, padding {padding}"
        )
    weight = lay_out_weight(weight.to(x.dtype))
    layout = _layout(x)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    y = torch.empty((N, K, OH, OW), device=x.device, dtype=x.dtype, memory_format=fmt)
    # Offsets are int32 inside the kernel; refuse what would overflow them.
    for t in (x, weight, y):
        if t.numel() >= 2**31:
            raise ValueError("tensors with 2**31 or more elements are not supported")
    b = bias.to(x.dtype).contiguous() if bias is not None else y  # dummy pointer without bias
    precision = input_precision if x.dtype == torch.float32 else "ieee"
    args = (
        x, weight, b, y,
        N, C, H, W, K, OH, OW,
        *x.stride(), *weight.stride(), *y.stride(),
        sh, sw, ph, pw, dh, dw,
    )  # fmt: skip
    meta = dict(
        KH=KH,
        KW=KW,
        ACT=_ACT_CODE[activation],
        HAS_BIAS=bias is not None,
        INPUT_PRECISION=precision,
    )
    key = None
    if keyed and not interpret:
        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        key = conv_key(
            x, weight, bias, (sh, sw), (ph, pw), (dh, dw), activation, precision,
            _device_name(index), triton.__version__,
        )  # fmt: skip
    inputs = (x, weight, bias, stride, padding, dilation, activation, input_precision, False)
    return _Call(args, meta, y, N * OH * OW, K, C, key, interpret, inputs)


def _measure_choice(call: _Call, torch_fn: Callable[[], object]) -> Choice:
    """Time every config that suits the shape from a CUDA graph, then the best one and
    the torch path eager, from a graph and on the host's side; :func:`~kernels.tuning.pick`
    says which backend each mode takes."""
    from .gpu_timing import eager_seconds, graph_seconds, host_seconds

    best: tuple[float, TileConfig] | None = None
    for cfg in prune_configs(CONFIGS, call.m, call.k, call.c):
        try:
            t = graph_seconds(functools.partial(call.launch, cfg))
        except Exception as e:  # e.g. a tile that needs more shared memory than this GPU has
            if "out of resource" not in str(e).lower() and "OutOfResources" not in type(e).__name__:
                raise
            continue
        if best is None or t < best[0]:
            best = (t, cfg)
    if best is None:
        raise RuntimeError(f"no Triton config launches for {call.key}")

    def triton_eager() -> torch.Tensor:  # eager calls pay the Python set-up, not just the launch
        return _prepare(*call.inputs).launch(best[1])

    times = {
        "triton:graph": best[0],
        "triton:eager": eager_seconds(triton_eager),
        "triton:host": host_seconds(triton_eager),
        "torch:graph": graph_seconds(torch_fn),
        "torch:eager": eager_seconds(torch_fn),
        "torch:host": host_seconds(torch_fn),
    }
    eager, graph = pick(times)
    return Choice(best[1], eager, graph, times)


def _choice(call: _Call, torch_fn: Callable[[], object]) -> Choice:
    """The launch choice for ``call``: from memory, the cache file, a measurement, or the rule."""
    if call.interpret or call.key is None:
        return Choice(TileConfig(**INTERPRET_TILE), "triton", "triton", {}, measured=False)
    if (c := _CHOSEN.get(call.key)) is not None:
        return c
    cache = _tune_cache()
    if (c := cache.get(call.key)) is None:
        if torch.cuda.is_current_stream_capturing():
            # Nothing can be timed inside a capture: use the rule, measure on a later eager call.
            return rule_choice(CONFIGS, call.m, call.k, call.c)
        with torch.cuda.device(call.y.device):  # timing streams and graphs on the conv's GPU
            c = _measure_choice(call, torch_fn)
        _MEASURED.append(call.key)
        cache.put(call.key, c)
    _CHOSEN[call.key] = c
    return c


def conv2d_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    activation: str | None = "relu",
    input_precision: str = "ieee",
    config: TileConfig | None = None,
) -> torch.Tensor:
    """Run the Triton kernel: x (N, C, H, W) * weight (K, C, KH, KW) + bias (K,) -> (N, K, OH, OW).

    The output has x's dtype and memory format (channels_last in, channels_last
    out). ``input_precision`` is ``"ieee"`` (exact fp32, comparable with
    PyTorch) or ``"tf32"`` (faster fp32 on Ampere+); half inputs ignore it.
    On a GPU the tile config comes from the tuning cache (tuned on the first
    call of a new shape) unless ``config`` names one. Pass a weight from :func:`lay_out_weight` to save the
    copy that lays it out on every call. Forward only (no autograd).
    """
    call = _prepare(x, weight, bias, stride, padding, dilation, activation, input_precision)
    if call.y.numel() == 0:
        return call.y

    def torch_path() -> torch.Tensor:  # timed with the tiles, so a cached choice is complete
        return conv2d_torch(x, weight, bias, stride, padding, dilation, 1, activation)

    return call.launch(config if config is not None else _choice(call, torch_path).config)


def conv2d_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    activation: str | None = "relu",
) -> torch.Tensor:
    """PyTorch path: one ``F.conv2d`` with the folded bias, then the activation in place.

    In place is safe: nothing else holds the fresh conv output, and the conv's
    backward does not need its output, so autograd still works on this path.
    """
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if activation == "relu":
        y = torch.relu_(y)
    elif activation == "relu6":
        y = y.clamp_(0.0, 6.0)
    elif activation is not None:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return y


def conv2d_bias_relu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    relu: bool = True,
    backend: str = "auto",
    *,
    groups: int = 1,
    activation: str | None = None,
) -> torch.Tensor:
    """Fused ``act(conv2d(x, weight) + bias)``: x (N, C, H, W), weight (K, C/groups, KH, KW), bias (K,).

    ``activation`` ("relu", "relu6") overrides ``relu`` when given; with
    ``activation=None`` the ``relu`` flag decides between ReLU and none.
    ``backend="auto"`` on CUDA tensors takes, per shape, the backend measured
    faster on this GPU (see :mod:`kernels.tuning`): one choice for eager
    calls, another for calls captured into a CUDA graph; on CPU tensors it
    takes PyTorch. Auto also takes PyTorch when autograd is recording for x or
    weight (the Triton kernel is forward only; run inference under
    ``torch.inference_mode()`` or ``no_grad``), and for grouped and depthwise
    convs (``groups > 1``). When Triton runs, ``weight`` is laid out for it
    once and kept until ``weight`` changes (see :func:`laid_out_weight`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    act = activation if activation is not None else ("relu" if relu else None)
    if act not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    auto = backend == "auto" and x.is_cuda and HAS_TRITON and not needs_grad and groups == 1
    if not (auto or (backend == "triton" and groups == 1)):
        return conv2d_torch(x, weight, bias, stride, padding, dilation, groups, act)
    capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
    # A call seen before skips the tuning key (and, when cuDNN won, all Triton set-up):
    # host time is what decides small eager convs.
    geometry = (_pair(stride), _pair(padding), _pair(dilation))
    seen = (x.shape, x.stride(), x.dtype, x.device, weight.shape, geometry, act, bias is None)
    known = _SEEN.get(seen)
    if known is not None and auto and known.backend(capturing) == "torch":
        return conv2d_torch(x, weight, bias, stride, padding, dilation, 1, act)
    laid = laid_out_weight(weight, x.dtype)
    if known is not None:
        return _prepare(x, laid, bias, stride, padding, dilation, act, "ieee", False).launch(
            known.config
        )
    call = _prepare(x, laid, bias, stride, padding, dilation, act, "ieee")
    if call.y.numel() == 0:
        return call.y

    def torch_path() -> torch.Tensor:
        return conv2d_torch(x, weight, bias, stride, padding, dilation, 1, act)

    choice = _choice(call, torch_path)
    if choice.measured:
        _SEEN[seen] = choice
    if auto and choice.backend(capturing) == "torch":
        return torch_path()
    return call.launch(choice.config)


# A leaf for torch.fx: tracing code that calls this records one call_function node
# instead of tracing into the backend dispatch.
torch.fx.wrap("conv2d_bias_relu")


class FusedConv2d(nn.Module):
    """Conv2d with BN folded into ``weight``/``bias`` and an optional activation.

    ``weight`` is OIHW (Cout, Cin/groups, KH, KW), ``bias`` is (Cout,).
    ``prunerd_leaf`` makes the profiler's fx tracer keep this module as one
    node, and FLOPs are counted from ``weight``.
    """

    prunerd_leaf = True

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        activation: str | None = "relu",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = int(groups)
        self.activation = activation
        self.backend = backend

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def kernel_size(self) -> tuple[int, int]:
        return (self.weight.shape[2], self.weight.shape[3])

    @classmethod
    def from_conv_bn(
        cls,
        conv: nn.Conv2d,
        bn: nn.BatchNorm2d | None,
        activation: str | None = "relu",
        backend: str = "auto",
    ) -> FusedConv2d:
        """Fold ``bn`` (eval-mode statistics) into ``conv``; ``bn=None`` keeps the conv's own bias."""
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("only zero padding given as numbers can be fused")
        if bn is not None:
            weight, bias = fold_conv_bn(conv, bn)
        else:
            weight = conv.weight.detach()
            bias = (
                conv.bias.detach() if conv.bias is not None else weight.new_zeros(weight.shape[0])
            )
        return cls(
            weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups, activation, backend
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d_bias_relu(
            x,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            False,
            self.backend,
            groups=self.groups,
            activation=self.activation,
        )

    def extra_repr(self) -> str:
        k = self.kernel_size
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={k}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"activation={self.activation}, backend={self.backend!r}"
        )

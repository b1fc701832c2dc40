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

import importlib.util
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .fold import fold_conv_bn

# triton is a Linux-only dependency; the torch path works without it.
HAS_TRITON = importlib.util.find_spec("triton") is not None
triton: Any = None  # bound by _import_triton(); the kernel body resolves ``tl`` at compile time
tl: Any = None

ACTIVATIONS = (None, "relu", "relu6")
BACKENDS = ("auto", "triton", "torch")
_ACT_CODE = {None: 0, "relu": 1, "relu6": 2}

# Block sizes used when the kernel runs under the interpreter: the autotuner
# needs a GPU driver, so the interpreter gets one fixed config. Larger tiles
# mean fewer interpreted programs, which is what makes the interpreter fast.
INTERPRET_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 16}


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
    """Configs for Ampere/Hopper: power-of-two tiles, BLOCK_K >= 16 so half-type dots compile.

    (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps):
    """
    _import_triton()
    table = [
        (128, 128, 32, 3, 8),
        (128, 64, 32, 4, 4),
        (64, 128, 32, 4, 4),
        (128, 32, 32, 4, 4),
        (64, 64, 32, 4, 4),
        (64, 32, 32, 5, 2),
        (32, 64, 32, 5, 2),
        (128, 64, 64, 3, 8),
        (64, 64, 16, 4, 4),
        (32, 32, 16, 4, 2),
    ]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_stages=s, num_warps=w)
        for m, n, k, s, w in table
    ]


_KERNELS: dict[str, Any] = {}


def _kernel(interpret: bool) -> Any:
    """The jitted kernel; built on first use so TRITON_INTERPRET is read at call time."""
    mode = "interpret" if interpret else "compiled"
    if mode not in _KERNELS:
        jitted = triton.jit(_conv_kernel)
        if not interpret:
            # Tuning key: shapes that change which tile wins; dtype is keyed by the launcher.
            jitted = triton.autotune(
                configs=autotune_configs(), key=["N", "C", "H", "W", "K", "OH", "OW", "KH", "KW"]
            )(jitted)
        _KERNELS[mode] = jitted
    return _KERNELS[mode]


def _out_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def conv2d_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    activation: str | None = "relu",
    input_precision: str = "ieee",
) -> torch.Tensor:
    """Run the Triton kernel: x (N, C, H, W) * weight (K, C, KH, KW) + bias (K,) -> (N, K, OH, OW).

    The output has x's dtype and memory format (channels_last in, channels_last
    out). ``input_precision`` is ``"ieee"`` (exact fp32, comparable with
    PyTorch) or ``"tf32"`` (faster fp32 on Ampere+); half inputs ignore it.
    Forward only (no autograd): this is a deploy-time kernel.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(
            f"expected 4-D x and weight, got {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    N, C, H, W = x.shape
    K, Cw, KH, KW = weight.shape
    if Cw != C:
        raise ValueError(
            f"groups=1 only: weight has {Cw} input channels, x has {C} (grouped convs use the torch backend)"
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
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    OH, OW = _out_size(H, KH, sh, ph, dh), _out_size(W, KW, sw, pw, dw)
    if OH <= 0 or OW <= 0:
        raise ValueError(
            f"output would be empty: input {H}x{W}, kernel {KH}x{KW}, padding {padding}"
        )
    weight = weight.to(x.dtype)
    if weight.stride(0) != 1:
        # B tiles read BLOCK_N output channels side by side: store Cout fastest
        # ((KH, KW, C, K) in memory) so those loads are contiguous; the view keeps OIHW indexing.
        weight = weight.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)
    fmt = (
        torch.channels_last
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        else torch.contiguous_format
    )
    y = torch.empty((N, K, OH, OW), device=x.device, dtype=x.dtype, memory_format=fmt)
    # Offsets are int32 inside the kernel; refuse what would overflow them.
    for t in (x, weight, y):
        if t.numel() >= 2**31:
            raise ValueError("tensors with 2**31 or more elements are not supported")
    if y.numel() == 0:
        return y
    has_bias = bias is not None
    b = bias.to(x.dtype).contiguous() if has_bias else y  # dummy pointer when there is no bias

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
        HAS_BIAS=has_bias,
        INPUT_PRECISION=input_precision if x.dtype == torch.float32 else "ieee",
    )
    M = N * OH * OW
    kernel = _kernel(interpret)
    if interpret:
        cfg = INTERPRET_CONFIG
        grid = (triton.cdiv(M, cfg["BLOCK_M"]), triton.cdiv(K, cfg["BLOCK_N"]))
        kernel[grid](*args, **meta, **cfg)
    else:

        def grid(m: dict[str, int]) -> tuple[int, int]:
            return (triton.cdiv(M, m["BLOCK_M"]), triton.cdiv(K, m["BLOCK_N"]))

        kernel[grid](*args, **meta)
    return y


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
    ``backend="auto"`` runs Triton on CUDA tensors and PyTorch elsewhere; it
    also takes the PyTorch path when autograd is recording for x or weight,
    because the Triton kernel is forward only (run inference under
    ``torch.inference_mode()`` or ``no_grad`` to get the kernel). Grouped and
    depthwise convs (``groups > 1``) always take the PyTorch path.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    act = activation if activation is not None else ("relu" if relu else None)
    if act not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    auto_triton = backend == "auto" and x.is_cuda and HAS_TRITON and not needs_grad
    use_triton = groups == 1 and (backend == "triton" or auto_triton)
    if use_triton:
        return conv2d_triton(x, weight, bias, stride, padding, dilation, act)
    return conv2d_torch(x, weight, bias, stride, padding, dilation, groups, act)


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

"""Adapters fit to the blocks they replace, per pixel, on calibration images.

An adapter is a 1x1 convolution: with a bias column, ``z = x W`` maps a pixel's
block input x (C_in + 1) to the block's output y (C_out). Plain least squares
solves ``A W = B`` with ``A = X^T X`` and ``B = X^T Y`` summed over every pixel.

An adapter that ends in its block's ReLU only has to match y where y > 0: where
the block gave 0, any z <= 0 is exact. Plain least squares pulls z towards those
zeros from both sides, and after the ReLU only the errors above them remain, a
positive bias the layers after it amplify (a vgg16 at 77.4% on Fashion-MNIST without
its three adapter blocks, no fine-tuning, three seeds: 60.8% with plain adapters, 52.0%
with the same adapters and a ReLU, 66.0% with this fit and a ReLU;
bench/results/adapter_activation.md).
So the fit alternates: a clipped value's target is what the adapter already
gives there when that is on the clipped side (``min(z, 0)`` where y == 0; ReLU6
also ``max(z, 6)`` where y == 6), and W is solved again. Each step lowers the
error after the activation. ``A`` and ``B`` stay exact; the steps' correction
``X^T (T - Y)`` is estimated from a random sample of pixels kept in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.fx as fx
from torch import nn

from profiler import Block, module_device, new_adapter

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]

CLIPPED_STEPS = 10
SAMPLE_BYTES = 32 * 2**20  # per block: the pixels the clipped steps read
SAMPLE_ROWS = (4096, 65536)  # at least, at most


class _Pairs(fx.Interpreter):
    """Per block: the normal equations over every pixel, and for blocks whose adapter ends
    in an activation, a uniform sample of pixels (input with its bias column, output)."""

    def __init__(self, gm: fx.GraphModule, blocks: Sequence[Block], max_samples: int) -> None:
        super().__init__(gm)
        self.by_input: dict[str, list[Block]] = {}
        self.by_output: dict[str, list[Block]] = {}
        for b in blocks:
            self.by_input.setdefault(b.input_node, []).append(b)
            self.by_output.setdefault(b.output_node, []).append(b)
        self.inputs: dict[str, torch.Tensor] = {}
        self.xtx: dict[str, torch.Tensor] = {}
        self.xty: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        self.keep = {b.name: _keep_fraction(b, max_samples) for b in blocks if b.adapter_activation}
        self.sample: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.generator = torch.Generator().manual_seed(0)

    def run_node(self, n: fx.Node) -> object:
        value = super().run_node(n)
        for b in self.by_input.get(n.name, ()):
            # (B, C, H, W) -> (B*H*W, C+1) with a bias column; copied before any in-place op.
            x = _pixels(value)
            self.inputs[b.name] = torch.cat([x, x.new_ones(len(x), 1)], 1)
        for b in self.by_output.get(n.name, ()):
            self._add(b.name, self.inputs.pop(b.name), _pixels(value))
        return value

    def _add(self, name: str, x: torch.Tensor, y: torch.Tensor) -> None:
        self.xtx[name] = self.xtx.get(name, 0) + x.T @ x
        self.xty[name] = self.xty.get(name, 0) + x.T @ y
        self.rows[name] = self.rows.get(name, 0) + len(x)
        if name in self.keep:
            kept = (torch.rand(len(x), generator=self.generator) < self.keep[name]).to(x.device)
            self.sample.setdefault(name, []).append((x[kept].float(), y[kept].float()))


def _pixels(value: torch.Tensor) -> torch.Tensor:
    return value.detach().double().permute(0, 2, 3, 1).reshape(-1, value.shape[1])


def _keep_fraction(b: Block, max_samples: int) -> float:
    """The fraction of ``b``'s pixels the sample keeps: at most what SAMPLE_BYTES holds."""
    width = b.input_shape[1] + 1 + b.output_shape[1]
    rows = min(max(SAMPLE_BYTES // (4 * width), SAMPLE_ROWS[0]), SAMPLE_ROWS[1])
    pixels = max_samples * b.output_shape[2] * b.output_shape[3]
    return min(1.0, rows / max(pixels, 1))


@torch.no_grad()
def fit_adapters(
    gm: fx.GraphModule,
    blocks: Sequence[Block],
    batches: Batches,
    max_samples: int = 512,
    ridge: float = 1e-4,
    clipped_steps: int = CLIPPED_STEPS,
) -> dict[str, nn.Conv2d]:
    """1x1 convolutions mapping each adapter block's input to its output, per pixel: least
    squares, then ``clipped_steps`` steps of the clipped fit where the adapter ends in an
    activation (see the module docstring).

    Streams at most ``max_samples`` images of ``batches`` through the unpruned
    ``gm`` once. ``ridge`` (relative to the mean diagonal) keeps the solve well posed.
    Blocks not seen (no batches) keep :func:`~profiler.new_adapter`'s initial weights.
    """
    blocks = [b for b in blocks if b.replacement == "adapter"]
    if not blocks:
        return {}
    was_training = gm.training
    gm.eval()
    device = module_device(gm)
    pairs = _Pairs(gm, blocks, max_samples)
    seen = 0
    try:
        for x, _ in batches:
            if seen >= max_samples:
                break
            x = x[: max_samples - seen]
            pairs.run(x.to(device))
            seen += len(x)
    finally:
        gm.train(was_training)
    out: dict[str, nn.Conv2d] = {}
    for b in blocks:
        conv = new_adapter(b)
        if b.name in pairs.xtx:
            w = _solve(pairs, b, ridge, clipped_steps).cpu()  # (C_in+1, C_out)
            conv.weight.copy_(w[:-1].T.reshape(conv.weight.shape).float())
            conv.bias.copy_(w[-1].float())
        out[b.name] = conv
    return out


def _solve(pairs: _Pairs, b: Block, ridge: float, steps: int) -> torch.Tensor:
    """W (C_in+1, C_out): least squares, then the clipped steps on the block's sample."""
    solve = _solver(pairs.xtx[b.name], ridge)
    w = solve(pairs.xty[b.name])
    sample = pairs.sample.get(b.name, [])
    x = torch.cat([s[0] for s in sample]) if sample else None
    if x is None or not len(x):
        return w
    y = torch.cat([s[1] for s in sample])
    scale = pairs.rows[b.name] / len(x)  # the sample's sums stand for every pixel's
    for _ in range(steps):  # the correction in float32 (half the time), the solve in float64
        excess = x.T @ _clipped_excess(x @ w.float(), y, b)
        w = solve(pairs.xty[b.name] + scale * excess.double())
    return w


def _solver(a: torch.Tensor, ridge: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``rhs -> (a + ridge * mean(diag a) * I)^-1 rhs``, factorised once."""
    a = a + ridge * a.diagonal().mean() * torch.eye(len(a), dtype=a.dtype, device=a.device)
    factor, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0:  # not positive definite in floating point: solve it plainly
        return lambda rhs: torch.linalg.solve(a, rhs)
    return lambda rhs: torch.cholesky_solve(rhs, factor)


def _clipped_excess(z: torch.Tensor, y: torch.Tensor, b: Block) -> torch.Tensor:
    """Target minus output, per pixel: nonzero only where the block's activation clipped y
    and the adapter's z is already on the clipped side (no error there after the activation)."""
    excess = torch.where(y <= 0, z.clamp(max=0), torch.zeros_like(z))
    if b.adapter_activation == "relu6":
        excess = torch.where(y >= 6, (z - 6).clamp(min=0), excess)
    return excess

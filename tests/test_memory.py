"""profiler.memory: what a profile keeps and needs at once, and the refusal of a batch
that cannot fit, before it is made."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from profiler import ActivationEstimate, BatchTooLarge, estimate_activations
from profiler.graph import propagate_shapes, trace
from profiler.memory import bytes_of, check_fits

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
    e = ActivationEstimate(kept=600, live=400)
    check_fits(e, 10, "m", available=10_000)  # exactly fits
    with pytest.raises(BatchTooLarge) as refused:
        check_fits(e, 11, "m", available=10_000)
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

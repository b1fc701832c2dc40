"""What the method comparisons (head_to_head.py, dbp_table.py) share.

Not a script: bench/ is on ``sys.path`` when a bench script runs, so they
``import compare_methods``. Measured speed-ups (baseline and pruned model
timed interleaved), MACs and parameter ratios, Torch-Pruning's own pruners
with their pruning ratio bisected to a MACs target, the "at equal accuracy"
comparison of block against filter pruning, and the run's machine and load.
"""

from __future__ import annotations

import copy
import datetime
import os
import platform
import subprocess
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from profiler import device_info, example_input, measure_pair, model_cost
from pruner import PrunePlan, apply_plan

# Torch-Pruning importances a filter row can use: the method name is "tp-" + one of these.
TP_IMPORTANCES = ("magnitude", "taylor", "bn-scale")


def utc_now() -> str:
    return f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"


def uptime() -> str:
    """``uptime``'s line (load averages), or the load averages alone where it is missing."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def machine(device: str = "cpu") -> str:
    info = device_info(device)
    return (
        f"{info.name}, {info.threads} threads, torch {torch.__version__}, "
        f"heap policy {info.details.get('allocator', '?')}, {platform.platform()}"
    )


def cost_ratios(model: torch.nn.Module, teacher: torch.nn.Module, spec) -> tuple[float, float]:
    """MACs and parameter ratios of ``model`` to ``teacher`` (torch's FLOP counter)."""
    macs = model_cost(model, spec).macs / model_cost(teacher, spec).macs
    params = sum(p.numel() for p in model.parameters()) / sum(
        p.numel() for p in teacher.parameters()
    )
    return macs, params


def speedups(
    base: torch.nn.Module,
    pruned: torch.nn.Module,
    spec,
    batches: Iterable[int],
    budget_s: float,
    threads: int | None = None,
    device: str = "cpu",
) -> dict[int, dict[str, float]]:
    """Per batch size: median latency (s) of the baseline and the pruned model, timed
    interleaved on the same seeded input, and the speed-up (baseline / pruned)."""
    out = {}
    for b in batches:
        base_s, pruned_s = measure_pair(
            base, pruned, spec, batch_size=b, device=device, timing_budget_s=budget_s,
            threads=threads,
        )  # fmt: skip
        out[b] = {"base_s": base_s, "pruned_s": pruned_s, "speedup": base_s / pruned_s}
    return out


def _tp_importance(name: str):
    import torch_pruning as tp

    if name == "magnitude":
        return tp.importance.MagnitudeImportance(p=1)
    if name == "taylor":
        return tp.importance.TaylorImportance()
    if name == "bn-scale":
        return tp.importance.BNScaleImportance()
    raise ValueError(f"Torch-Pruning importance must be one of {TP_IMPORTANCES}, got {name!r}")


def _accumulate_grads(model: torch.nn.Module, batches: Iterable[Any], count: int) -> int:
    """Cross-entropy gradients of ``model`` (eval mode: BN running statistics) summed over the
    first ``count`` batches; the number of samples they held."""
    model.eval()
    model.zero_grad(set_to_none=True)
    seen = 0
    for i, (x, y) in enumerate(batches):
        if i >= count:
            break
        torch.nn.functional.cross_entropy(model(x), y).backward()
        seen += len(y)
    return seen


def tp_prune(
    teacher: torch.nn.Module,
    spec,
    target_macs: float,
    importance: str = "magnitude",
    grad_batches: Iterable[Any] | None = None,
    grad_count: int = 8,
    steps: int = 14,
) -> tuple[torch.nn.Module, float, float]:
    """Torch-Pruning's pruner with one of its importances, its global pruning ratio bisected so
    MACs land at ``target_macs``: (model, MACs ratio reached, pruning ratio).

    The configuration of Torch-Pruning's own ResNet-56 benchmark: global ranking, the
    classifier ignored, no channel rounding (``round_to=8`` on 16-channel layers rounds a
    10% ratio to half the channels, so MACs jump and no ratio lands on a target). ``taylor``
    ranks by |w * dL/dw| with cross-entropy gradients summed over the first ``grad_count``
    batches of ``grad_batches`` (taken once, on the unpruned model); ``bn-scale`` by |BN
    gamma| (one shot, without Network Slimming's sparsity training).
    """
    import torch_pruning as tp

    x = example_input(spec)
    base_macs = model_cost(teacher, spec).macs
    template = apply_plan(teacher, PrunePlan(spec))  # a GraphModule, as the pruner rebuilds
    if importance == "taylor":
        if grad_batches is None:
            raise ValueError("Taylor importance needs grad_batches")
        _accumulate_grads(template, grad_batches, grad_count)

    def prune(ratio: float) -> tuple[torch.nn.Module, float]:
        model = copy.deepcopy(template)
        for p, src in zip(model.parameters(), template.parameters()):
            if src.grad is not None:  # deepcopy leaves gradients behind
                p.grad = src.grad.clone()
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        pruner = tp.pruner.MagnitudePruner(  # BasePruner: the importance decides
            model, x, importance=_tp_importance(importance),
            pruning_ratio=ratio, ignored_layers=[head], global_pruning=True,
        )  # fmt: skip
        pruner.step()
        model.zero_grad(set_to_none=True)
        return model, model_cost(model, spec).macs / base_macs

    lo, hi = 0.0, 0.95
    best = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        model, r = prune(mid)
        if best is None or abs(r - target_macs) < abs(best[1] - target_macs):
            best = (model, r, mid)
        if r > target_macs:
            lo = mid
        else:
            hi = mid
    assert best is not None
    template.zero_grad(set_to_none=True)
    return best


def at_equal_accuracy(
    rows: Sequence[dict],
    key: str,
    filters: Sequence[str],
    block: str = "dbp",
    within: float = 0.003,
) -> list[dict]:
    """For each filter-pruning row, the fastest ``block`` row no less accurate.

    "No less accurate" allows ``within`` (0.3 points) below the filter row's
    accuracy; ``ratio`` is that block row's ``key`` (a speed-up) over the filter row's
    (nan when no block row is as accurate).
    """
    blocks = [r for r in rows if r["method"] == block]
    out = []
    for f in (r for r in rows if r["method"] in filters):
        ok = [d for d in blocks if d["accuracy"] >= f["accuracy"] - within]
        best = max(ok, key=lambda d: d[key], default=None)
        out.append(
            {"filter": f, "dbp": best, "ratio": best[key] / f[key] if best else float("nan")}
        )
    return out


def pyplot():
    """matplotlib's pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

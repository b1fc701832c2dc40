"""Rebuild pruned models from (spec, plan, state_dict), and export them.

A pruned model is never pickled: blocks are removed as the plan names them,
then channel groups are thinned to the plan's widths, then the state_dict
fills the weights.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.fx as fx
from torch import nn

from profiler import (
    Checkpoint,
    ModelSpec,
    build_model,
    direct_lookups,
    discover,
    example_input,
    load_model,
    model_of_checkpoint,
    read_checkpoint,
)
from profiler.files import write_with

from .depth import SurgeryError, fit_adapters, remove_blocks
from .plan import PrunePlan
from .width import thin

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def apply_plan(
    model: nn.Module,
    plan: PrunePlan,
    calibration: Batches | None = None,
    max_samples: int = 512,
) -> fx.GraphModule:
    """A pruned copy of ``model`` (unpruned, built from ``plan.spec``) as a GraphModule.

    Blocks are removed first, then channel groups are thinned to the plan's
    widths (first channels kept: the shapes a state_dict of the pruned model fits).

    The caller's model is not modified and shares no parameters with the result.
    Adapters are initialised by least squares on ``calibration`` when given
    (else randomly; :func:`load_pruned` overwrites them from the state_dict).
    """
    bg = discover(copy.deepcopy(model).eval(), example_input(plan.spec))
    by_name = {b.name: b for b in bg.blocks}
    chosen = []
    for r in plan.removed:
        b = by_name.get(r.name)
        if b is None:
            raise SurgeryError(
                f"plan removes block {r.name!r}, which model {plan.spec.name!r} does not have; "
                f"its blocks are: {sorted(by_name)}"
            )
        if not b.removable:
            raise SurgeryError(f"plan removes block {r.name!r}, which is not removable: {b.reason}")
        if b.replacement != r.replacement:
            raise SurgeryError(
                f"plan replaces block {r.name!r} by {r.replacement!r}, but the model's block "
                f"is replaced by {b.replacement!r}"
            )
        chosen.append(dataclasses.replace(b, adapter_activation=r.adapter_activation))
    adapters = {}
    if calibration is not None:
        adapters = fit_adapters(bg.gm, chosen, calibration, max_samples)
    gm = remove_blocks(bg.gm, chosen, adapters)
    if plan.channels:  # the width pass ran on the depth-pruned graph: same module paths
        thin(gm, plan.channels, example_input(plan.spec))
    return direct_lookups(gm)


def load_pruned(checkpoint: str | Path) -> fx.GraphModule:
    """Rebuild a pruned model from a checkpoint holding (spec, plan JSON, state_dict)."""
    ckpt = read_checkpoint(checkpoint)
    if not ckpt.plan_json:
        raise SurgeryError(
            f"checkpoint {str(checkpoint)!r} holds no plan; load it with profiler.load_model"
        )
    return _rebuilt(ckpt, checkpoint)


def _rebuilt(ckpt: Checkpoint, checkpoint: str | Path) -> fx.GraphModule:
    """The pruned model of a checkpoint already read (it has a plan), with its weights."""
    plan = _plan_of(ckpt.plan_json, checkpoint)
    # The model built is the one the checkpoint names (which a daemon checked against what a
    # request may load), never another the plan names: that would import any callable.
    if plan.spec != ckpt.spec:
        raise SurgeryError(
            f"checkpoint {str(checkpoint)!r}: its plan is for {plan.spec}, but it holds "
            f"{ckpt.spec}; the file was changed after `prunerd prune` wrote it"
        )
    gm = apply_plan(build_model(plan.spec), plan)
    try:
        gm.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as e:
        raise SurgeryError(
            f"checkpoint {str(checkpoint)!r}: weights do not match the pruned {plan.spec.name!r}: {e}"
        ) from e
    return gm.eval()


def _plan_of(text: str, checkpoint: str | Path) -> PrunePlan:
    """The checkpoint's plan; a ``SurgeryError`` naming the file when it is not one."""
    try:
        return PrunePlan.from_json(text)
    except (ValueError, TypeError, AttributeError) as e:
        raise SurgeryError(
            f"checkpoint {str(checkpoint)!r}: its pruning plan cannot be read ({e}); the file "
            "was damaged or not written by `prunerd prune`: prune the baseline again"
        ) from e


def load_checkpoint_model(checkpoint: str | Path) -> nn.Module:
    """The eval-mode model a checkpoint holds: rebuilt from its plan when it is a pruned one
    (``prunerd prune``'s ``pruned.pt``), else built from its spec with its weights."""
    ckpt = read_checkpoint(checkpoint)  # read once: the model is built from this copy
    if ckpt.plan_json:
        return _rebuilt(ckpt, checkpoint)
    return model_of_checkpoint("", ckpt, checkpoint)


def load_to_profile(spec: ModelSpec, checkpoint: str | Path | None) -> tuple[ModelSpec, nn.Module]:
    """The model to time and the spec that names it in the profile: a pruned checkpoint is
    rebuilt from its plan and named ``MODEL@CHECKPOINT``, since its blocks and latency are
    not the architecture's; any other model keeps its name."""
    if checkpoint is None:
        return spec, load_model(spec)
    ckpt = read_checkpoint(checkpoint)
    if ckpt.plan_json:
        named = dataclasses.replace(spec, name=f"{spec.name}@{checkpoint}")
        return named, _rebuilt(ckpt, checkpoint)
    return spec, model_of_checkpoint(spec, ckpt, checkpoint)


def export_pruned(model: nn.Module, spec: ModelSpec, path: str | Path, batch_size: int = 1) -> Path:
    """Export ``model`` with ``torch.export`` at a fixed input (batch_size, C, H, W) and save it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu().eval()  # a program that loads on any machine
    ep = torch.export.export(model, (torch.randn(spec.input_shape(batch_size)),))
    write_with(path, lambda f: torch.export.save(ep, f))  # never through a planted link
    return path

"""Submodules that a traced model's generated code reaches without ``nn.Module.__getattr__``.

fx's generated forward names each layer by its path (``getattr(self.features,
"3").block...``), and each step of that path goes through
``nn.Module.__getattr__``, a Python-level search of ``_parameters``, ``_buffers``
and ``_modules``, on every call. For small models at batch 1 on a CPU this is
time the eager model does not spend: 8-9% of torchvision's mobilenet_v3_small
and regnet_y_400mf at 224x224 (``bench/results/real_models.md``). That made the
traced graph, the profiler's reference, slower than the model it was traced
from, and a pruned graph slower than it had to be.

:func:`direct_lookups` stores each child module in its parent's instance
dictionary as well, where ordinary attribute lookup finds it before
``__getattr__`` is consulted. Registration is unchanged (``_modules``,
``state_dict``, ``named_modules``); ``nn.Module.__setattr__`` drops the stored
entry when a child is reassigned, so a replaced layer is never shadowed.
Deleting a child with ``del`` leaves the stored entry: call
:func:`direct_lookups` again after deleting submodules (``remove_blocks`` does).
``copy.deepcopy`` of a GraphModule rebuilds its module tree without the entries:
call it again on the copy.
"""

from __future__ import annotations

from typing import TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


def direct_lookups(module: M) -> M:
    """``module``, with every child reachable as a plain instance attribute; returned."""
    for mod in module.modules():
        stale = [k for k, v in vars(mod).items() if isinstance(v, nn.Module)]
        for name in stale:
            if mod._modules.get(name) is not vars(mod)[name]:
                del mod.__dict__[name]  # deleted since the last call, or replaced
        for name, child in mod._modules.items():
            if child is not None:
                object.__setattr__(mod, name, child)
    return module

"""The built-in models' names, without importing torch.

The daemon checks every request's model against them; importing the zoo itself would
load torch into the daemon, which runs no model (its job workers do).
"""

from __future__ import annotations

BUILTIN_MODELS = ("mobilenetv2", "resnet20", "resnet56", "vgg16")


def builtin_models() -> list[str]:
    """The built-in model names, sorted."""
    return sorted(BUILTIN_MODELS)

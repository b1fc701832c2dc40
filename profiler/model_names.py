"""What a model's name says, without importing torch: which names are built in, which name
a ``torch.export`` program file, and the input a model takes when nothing says otherwise.

The daemon checks every request against these; importing the zoo or the loaders would
load torch into the daemon, which runs no model (its job workers do).
"""

from __future__ import annotations

BUILTIN_MODELS = ("mobilenetv2", "resnet20", "resnet56", "vgg16")
PROGRAM_SUFFIXES = (".pt2", ".pt2e")  # torch.export program files

# A model that says nothing of its input or classes (a built-in, an imported callable).
DEFAULT_IN_CHANNELS = 3
DEFAULT_NUM_CLASSES = 10
DEFAULT_INPUT_SIZE = (32, 32)


def builtin_models() -> list[str]:
    """The built-in model names, sorted."""
    return sorted(BUILTIN_MODELS)


def is_program(name: object) -> bool:
    """Whether a model name (or path) names a ``torch.export`` program file."""
    return str(name).endswith(PROGRAM_SUFFIXES)

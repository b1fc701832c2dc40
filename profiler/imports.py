"""``package.module:name`` -> the callable it names: one rule for models and datasets.

The name after the colon is a single identifier defined in that module (or in one of
its submodules, as ``torchvision.models:resnet18`` is defined in
``torchvision.models.resnet``). A dotted attribute path is refused: with the module
``profiler.zoo`` allowed, ``profiler.zoo:torch.os.getpid`` would otherwise walk from
the allowed module into any module it imported. So is a name the module merely
imported from elsewhere (``from os import system`` makes ``mod:system`` resolvable,
not defined there) and a private or dunder name (``mod:__class__``).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

# The same form service.protocol accepts from a request (kept in step by tests).
IMPORT_SPEC_RE = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z][A-Za-z0-9_]*"
)


def defined_in(obj: Any, module_name: str) -> bool:
    """Whether ``obj`` says it was defined in ``module_name`` or below it."""
    owner = getattr(obj, "__module__", None)
    return isinstance(owner, str) and (owner == module_name or owner.startswith(module_name + "."))


def resolve_callable(spec: str, what: str) -> Callable[..., Any]:
    """The callable ``spec`` names; ValueError naming ``what`` (model, dataset) otherwise."""
    if not IMPORT_SPEC_RE.fullmatch(spec):
        raise ValueError(
            f"{what} {spec!r} is not of the form 'package.module:name' (one public name "
            "defined in that module: no dotted attribute path, no leading underscore)"
        )
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{what} {spec!r}: cannot import module {module_name!r} ({e})") from e
    obj = getattr(module, name, None)
    if obj is None:
        raise ValueError(f"{what} {spec!r}: module {module_name!r} has no attribute {name!r}")
    if not defined_in(obj, module_name):
        owner = getattr(obj, "__module__", None)
        raise ValueError(
            f"{what} {spec!r}: {name!r} is not defined in {module_name!r} (it comes from "
            f"{owner!r}); name it where it is defined"
        )
    if not callable(obj):
        raise ValueError(f"{what} {spec!r}: {name!r} is not callable")
    return obj

"""``module:name`` runs one public name defined in an allowed module: the rule models and datasets share."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from profiler import ModelSpec, build_model
from profiler.imports import IMPORT_SPEC_RE, resolve_callable
from profiler.models import ModelSpecError
from pruner.data import load_callable
from service import protocol as p

WALKS = (
    "profiler.zoo:torch.os.getpid",  # attribute traversal out of the allowed module
    "profiler.zoo:torch.os.abort",
    "profiler.zoo:nn.Module.__subclasses__",
    "profiler.zoo:__class__",  # private and dunder names
    "profiler.zoo:_private",
)


@pytest.mark.parametrize("spec", WALKS)
def test_attribute_paths_and_private_names_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="one public name"):
        resolve_callable(spec, "model")
    with pytest.raises(ModelSpecError):
        build_model(ModelSpec(spec))
    with pytest.raises(ValueError):
        load_callable(spec)


def test_a_name_only_imported_into_the_module_is_refused() -> None:
    # profiler.zoo does `from collections.abc import Callable`: reachable, not defined there.
    with pytest.raises(ValueError, match="not defined in 'profiler.zoo'.*collections.abc"):
        resolve_callable("profiler.zoo:Callable", "model")
    with pytest.raises(ValueError, match="not defined in"):
        load_callable("profiler.zoo:Callable")
    with pytest.raises(ValueError, match="not callable|not defined"):
        resolve_callable("profiler.zoo:torch", "model")  # a module: no __module__ of its own


def test_names_defined_in_the_module_or_below_it_resolve() -> None:
    assert resolve_callable("profiler.zoo:resnet20", "model").__name__ == "resnet20"
    # Re-exported by the package, defined in a submodule of it: the package's own name.
    assert resolve_callable("profiler:build_model", "model") is build_model
    model = build_model(ModelSpec("profiler.zoo:resnet20", in_channels=1, num_classes=3))
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_exact_allow_list_entries_allow_only_that_name() -> None:
    policy = p.ModelPolicy(frozenset(), allow_imports=("profiler.zoo:resnet20",))

    def model(name: str) -> str:
        doc = {"v": 1, "op": "submit", "kind": "profile", "params": {"model": name}}
        try:
            return p.parse_request(doc, policy).params.model
        except p.ProtocolError as e:
            return e.code

    assert model("profiler.zoo:resnet20") == "profiler.zoo:resnet20"
    assert model("profiler.zoo:resnet56") == "not_allowed"
    assert model("profiler.zoo:resnet20.__globals__") == "not_allowed"
    prefix = p.ModelPolicy(frozenset(), allow_imports=("profiler.zoo",))
    doc = {"v": 1, "op": "submit", "kind": "profile", "params": {"model": "profiler.zoo:resnet56"}}
    assert p.parse_request(doc, prefix).params.model == "profiler.zoo:resnet56"


@settings(max_examples=3000, deadline=None)
@given(
    st.text(alphabet="abzAZ_09.:_ \n", max_size=24)
    | st.sampled_from(WALKS + ("a.b:c", "a:b\n", ":x", "a:", "a..b:c", "a:b.c"))
)
def test_the_daemon_and_the_loader_agree_on_the_form(spec: str) -> None:
    assert bool(p._IMPORT_RE.fullmatch(spec)) == bool(IMPORT_SPEC_RE.fullmatch(spec))

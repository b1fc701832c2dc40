"""A ``.pt2`` file is inspected before it is loaded: whatever would unpickle or run code is refused.

Each hostile archive is a real ``torch.export.save`` archive with one thing changed, the
way an attacker who can place a file in a model directory would change it. The payload
writes a marker file; the tests assert the refusal and that the marker never appears.
"""

from __future__ import annotations

import io
import json
import pickle
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from profiler import ModelSpec, build_model
from profiler.exported import UnsafeExportError, check_export
from profiler.models import ModelSpecError

from .service_helpers import DaemonProcess

Entries = dict[str, bytes]


class Net(nn.Module):
    """A conv (weights), a lifted tensor constant (constants) and a plain static graph."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + torch.tensor(0.5)


class Payload:
    """Unpickling this creates ``marker``: proof that the pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def plain_archive(path: Path) -> Path:
    ep = torch.export.export(Net().eval(), (torch.randn(1, 1, 8, 8),))
    torch.export.save(ep, str(path))
    return path


def rewrite(src: Path, dst: Path, change: Callable[[Entries], None]) -> Path:
    with zipfile.ZipFile(src) as zin:
        entries = {name: zin.read(name) for name in zin.namelist()}
    change(entries)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for name, data in entries.items():
            zout.writestr(name, data)
    return dst


def _named(entries: Entries, fragment: str) -> str:
    return next(n for n in entries if fragment in n)


def _pickled_payload(config: str, fqn: str, marker: Path) -> Callable[[Entries], None]:
    """The entry of ``fqn`` becomes a pickle, flagged ``use_pickle`` as torch itself writes it."""

    def change(entries: Entries) -> None:
        name = _named(entries, config)
        doc = json.loads(entries[name])
        meta = doc["config"][fqn]
        meta["use_pickle"] = True
        entries[name] = json.dumps(doc).encode()
        entries[name.rsplit("/", 1)[0] + "/" + meta["path_name"]] = pickle.dumps(Payload(marker))

    return change


def _sample_inputs(marker: Path) -> Callable[[Entries], None]:
    def change(entries: Entries) -> None:
        buf = io.BytesIO()
        torch.save(Payload(marker), buf)
        entries[_named(entries, "/data/sample_inputs/")] = buf.getvalue()

    return change


def _program(edit: Callable[[dict], None]) -> Callable[[Entries], None]:
    def change(entries: Entries) -> None:
        name = _named(entries, "/models/")
        doc = json.loads(entries[name])
        edit(doc)
        entries[name] = json.dumps(doc).encode()

    return change


def _guards(marker: Path) -> Callable[[Entries], None]:
    def edit(doc: dict) -> None:
        doc["guards_code"] = [f"open({str(marker)!r}, 'w') is not None"]

    return _program(edit)


def _target(marker: Path) -> Callable[[Entries], None]:
    def edit(doc: dict) -> None:
        doc["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"

    return _program(edit)


def _operator_argument(marker: Path) -> Callable[[Entries], None]:
    def edit(doc: dict) -> None:
        node = doc["graph_module"]["graph"]["nodes"][0]
        node["inputs"].append({"name": "fn", "arg": {"as_operator": "torch.os.system"}})

    return _program(edit)


def _expression(marker: Path) -> Callable[[Entries], None]:
    def edit(doc: dict) -> None:
        doc["range_constraints"] = {f"__import__('os').mknod({str(marker)!r})": {}}

    return _program(edit)


def _extra_entry(rel: str) -> Callable[[Path], Callable[[Entries], None]]:
    def attack(marker: Path) -> Callable[[Entries], None]:
        def change(entries: Entries) -> None:
            top = next(iter(entries)).split("/")[0]
            entries[f"{top}/{rel}"] = pickle.dumps(Payload(marker))

        return change

    return attack


ATTACKS: dict[str, tuple[Callable[[Path], Callable[[Entries], None]], str]] = {
    "pickled weight": (
        lambda m: _pickled_payload("_weights_config.json", "conv.weight", m),
        "use_pickle",
    ),
    "pickled constant": (
        lambda m: _pickled_payload("_constants_config.json", "lifted_tensor_0", m),
        "use_pickle",
    ),
    "custom object": (_extra_entry("data/constants/custom_obj_0"), "custom object"),
    "opaque object": (_extra_entry("data/constants/opaque_obj_0"), "custom object"),
    "legacy weights pickle": (_extra_entry("data/weights/model.pt"), "pickle"),
    "sample inputs": (_sample_inputs, "sample inputs"),
    "guard code": (_guards, "guard code"),
    "node target": (_target, "not an operator"),
    "operator argument": (_operator_argument, "not an operator"),
    "symbolic expression": (_expression, "symbolic shapes"),
}


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return plain_archive(tmp_path_factory.mktemp("pt2") / "plain.pt2")


def test_plain_archive_loads(plain: Path) -> None:
    model = build_model(ModelSpec(str(plain), in_channels=1, num_classes=2, input_size=(8, 8)))
    x = torch.randn(1, 1, 8, 8)
    assert torch.allclose(model(x), torch.export.load(str(plain)).module()(x))


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_hostile_archive_is_refused_and_never_runs(
    plain: Path, tmp_path: Path, attack: str
) -> None:
    make, reason = ATTACKS[attack]
    marker = tmp_path / "MARKER"
    path = rewrite(plain, tmp_path / "model.pt2", make(marker))
    with pytest.raises(ModelSpecError, match="refused") as e:
        build_model(ModelSpec(str(path), in_channels=1, num_classes=2, input_size=(8, 8)))
    assert reason in str(e.value)
    assert not marker.exists()


def test_the_pickled_weight_really_is_hostile(plain: Path, tmp_path: Path) -> None:
    """The control: torch.export.load itself runs the pickle the test above refuses."""
    marker = tmp_path / "MARKER"
    path = rewrite(plain, tmp_path / "model.pt2", ATTACKS["pickled weight"][0](marker))
    with pytest.raises(Exception):  # noqa: B017 - torch fails after the pickle already ran
        torch.export.load(str(path))
    assert marker.exists()


def test_compressed_entries_are_refused(plain: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(plain) as zin:
        entries = {name: zin.read(name) for name in zin.namelist()}
    path = tmp_path / "deflated.pt2"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for name, data in entries.items():
            zout.writestr(name, data)
    with pytest.raises(UnsafeExportError, match="compressed"):
        check_export(path.read_bytes(), str(path))


def test_not_an_archive_is_refused(tmp_path: Path) -> None:
    for data in (b"", b"PK\x03\x04junk", pickle.dumps(Payload(tmp_path / "MARKER"))):
        with pytest.raises(UnsafeExportError):
            check_export(data, "x.pt2")
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize(("attack", "said"), [("pickled weight", "use_pickle"), ("twice", "twice")])
def test_daemon_job_refuses_a_pickled_weight(
    plain: Path, tmp_path: Path, attack: str, said: str
) -> None:
    """The attack as it reached the worker: a hostile .pt2 in a --model-dir, named by a client
    (its weights config flagging a pickle, or that config written twice, the flagged copy
    first: that one ran its payload in a worker)."""
    models, marker = tmp_path / "models", tmp_path / "MARKER"
    models.mkdir(mode=0o755)
    if attack == "twice":
        _twice(plain, models / "net.pt2", marker)
    else:
        rewrite(plain, models / "net.pt2", ATTACKS[attack][0](marker))
    d = DaemonProcess(tmp_path / "state", "--model-dir", str(models)).start()
    try:
        with d.client() as c:
            job = c.submit("profile", model="net.pt2", in_channels=1, input_size=[8, 8])
            final = c.wait(job["id"], 120)
        assert final["status"] == "failed" and said in final["error"]["message"]
    finally:
        assert d.stop() == 0
    assert not marker.exists()


def _twice(plain: Path, path: Path, marker: Path) -> Path:
    """``plain`` with its weights config written twice: first a copy that flags a weight as
    a pickle (which torch's reader takes), then the clean one (which zipfile takes)."""
    with zipfile.ZipFile(plain) as zin:
        entries = {name: zin.read(name) for name in zin.namelist()}
    config = _named(entries, "_weights_config.json")
    doc = json.loads(entries[config])
    doc["config"]["conv.weight"].update(use_pickle=True, path_name="weight_999")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name it writes
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
            zout.writestr(config, json.dumps(doc))
            for name, data in entries.items():
                zout.writestr(name, data)
            zout.writestr(config.rsplit("/", 1)[0] + "/weight_999", pickle.dumps(Payload(marker)))
    return path


def test_an_entry_written_twice_is_refused_and_never_runs(plain: Path, tmp_path: Path) -> None:
    """zipfile reads the last of two entries with one name, torch's reader the first: a
    check of the clean copy let torch unpickle the other (found by probing the daemon)."""
    marker = tmp_path / "MARKER"
    path = _twice(plain, tmp_path / "model.pt2", marker)
    with pytest.raises(ModelSpecError, match="twice"):
        build_model(ModelSpec(str(path), in_channels=1, num_classes=2, input_size=(8, 8)))
    assert not marker.exists()
    with pytest.raises(Exception):  # noqa: B017 - the control: torch runs the first copy
        torch.export.load(str(path))
    assert marker.exists()

"""Files: outputs go to new directories, writes never follow links, paths stay inside the roots,
model files no one else can write, secrets private from their first byte."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from profiler import ModelSpec, ModelSpecError, read_checkpoint, save_checkpoint
from profiler.files import new_file, writable_dir, writable_file, write_text
from service import protocol as p
from service.client import Client, RequestError
from service.commands import keys

from .service_helpers import DaemonProcess
from .test_export_safety import Payload

BUILTINS = frozenset({"resnet20"})


def planted_link(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """``tmp_path/out/name`` is a symlink to a file outside: what an attacker plants."""
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / name).symlink_to(outside)
    return out / name, outside


# --------------------------------------------------------------------------- writers


def test_writes_replace_a_planted_link_never_write_through_it(tmp_path: Path) -> None:
    link, outside = planted_link(tmp_path, "report.json")
    write_text(link, '{"ok": true}')
    assert outside.read_text() == "precious"
    assert not link.is_symlink() and json.loads(link.read_text()) == {"ok": True}


def test_exclusive_write_refuses_any_existing_name(tmp_path: Path) -> None:
    link, outside = planted_link(tmp_path, "pruned.pt")
    with pytest.raises(FileExistsError), new_file(link, overwrite=False) as f:
        f.write(b"x")
    assert link.is_symlink() and outside.read_text() == "precious"
    assert [f.name for f in link.parent.iterdir()] == ["pruned.pt"]  # no temp file left


def test_output_paths_are_checked_before_the_work_and_leave_nothing(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "out"
    assert writable_dir(deep) == deep and not (tmp_path / "a").exists()  # checked, not made
    assert writable_file(deep / "model.pt") == deep / "model.pt"
    assert list(tmp_path.iterdir()) == []
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=r"output directory .*taken': a file, not a directory"):
        writable_dir(a_file)
    with pytest.raises(ValueError, match=r"a file \('.*taken' in its path\)"):
        writable_dir(a_file / "sub")
    with pytest.raises(ValueError, match=r"checkpoint .* is a directory; name the file"):
        writable_file(tmp_path, "checkpoint")
    if Path("/proc/self").is_dir():  # a directory that takes no files, even for root
        with pytest.raises(ValueError, match=r"cannot write into the output directory '/proc'"):
            writable_dir("/proc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_a_file_that_is_no_checkpoint_is_refused_by_name(tmp_path: Path) -> None:
    """Whatever a checkpoint path holds, the error names it and what is wrong; no traceback,
    no code run, and no advice to load with ``weights_only=False``."""
    marker = tmp_path / "MARKER"
    ok_state = {"w": torch.zeros(1)}
    spec_json = ModelSpec("resnet20", 1, 10, (8, 8)).to_json()
    files = {
        "text.pt": b"garbage\n",
        "empty.pt": b"",
        "pickle.pt": pickle.dumps({"x": Payload(marker)}),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    payloads = {
        "no-spec.pt": {"format": "prunerd-checkpoint", "state_dict": ok_state},
        "bad-state.pt": {"format": "prunerd-checkpoint", "state_dict": [1], "spec": spec_json},
        "bad-spec.pt": {"format": "prunerd-checkpoint", "state_dict": ok_state, "spec": "{"},
        "bad-meta.pt": {
            "format": "prunerd-checkpoint",
            "state_dict": ok_state,
            "spec": spec_json,
            "meta": "[1]",
        },
        "other.pt": {"weights": ok_state},
    }
    for name, payload in payloads.items():
        torch.save(payload, tmp_path / name)
    torch.save({"x": Payload(marker)}, tmp_path / "torch-pickle.pt")
    for name in [*files, *payloads, "torch-pickle.pt"]:
        with pytest.raises(ModelSpecError) as e:
            read_checkpoint(tmp_path / name)
        message = str(e.value)
        assert name in message and "weights_only" not in message, message
        assert len(message) < 300, message
    assert not marker.exists()


def test_checkpoint_is_not_written_through_a_link(tmp_path: Path) -> None:
    link, outside = planted_link(tmp_path, "pruned.pt")
    save_checkpoint(link, ModelSpec("tiny", 1, 2, (4, 4)), nn.Linear(2, 2))
    assert outside.read_text() == "precious"
    assert set(torch.load(link, weights_only=True)) >= {"spec", "state_dict"}


# --------------------------------------------------------------------------- what a request may name


def prune_doc(root: Path, **params: object) -> dict:
    base = {"model": "resnet20", "budget_ratio": 0.5, "checkpoint": str(root / "ckpt.pt")}
    return {"v": 1, "op": "submit", "kind": "prune", "params": {**base, **params}}


def refusal(doc: dict, policy: p.ModelPolicy) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as e:
        p.parse_request(doc, policy)
    return e.value


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    (root / "ckpt.pt").write_bytes(b"x")
    return root


def test_output_must_be_new(root: Path, tmp_path: Path) -> None:
    policy = p.ModelPolicy(BUILTINS, path_roots=(root,))
    ok = p.parse_request(prune_doc(root, output="job-1"), policy)
    assert ok.params.output == str(root / "job-1")
    for taken in ("data", "ckpt.pt"):
        e = refusal(prune_doc(root, output=taken), policy)
        assert (e.code, e.field) == ("conflict", "params.output"), taken
    (root / "dangling").symlink_to(tmp_path / "nowhere")  # mkdir would follow it out of the root
    assert refusal(prune_doc(root, output="dangling"), policy).code == "not_allowed"


def test_data_root_is_confined_to_the_path_roots(root: Path, tmp_path: Path) -> None:
    policy = p.ModelPolicy(BUILTINS, path_roots=(root,))
    ok = p.parse_request(prune_doc(root, options={"data_root": "data"}), policy)
    assert ok.params.options["data_root"] == str(root / "data")
    for bad, code in (("/etc", "not_allowed"), ("../", "not_allowed"), ("nothing", "not_found")):
        e = refusal(prune_doc(root, options={"data_root": bad}), policy)
        assert (e.code, e.field) == (code, "params.options.data_root"), bad
    assert refusal(prune_doc(root, options={"data_root": 3}), policy).code == "bad_request"


def test_model_files_others_can_write_are_refused(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "team").mkdir(parents=True)
    for name in ("a.pt2", "team/b.pt2"):
        (models / name).write_bytes(b"x")
    policy = p.ModelPolicy(BUILTINS, model_dirs=(models,))

    def model(name: str) -> str:
        doc = {"v": 1, "op": "submit", "kind": "profile", "params": {"model": name}}
        try:
            return p.parse_request(doc, policy).params.model
        except p.ProtocolError as e:
            assert (e.code, e.field) == ("not_allowed", "params.model")
            return e.message

    assert model("team/b.pt2") == str(models / "team" / "b.pt2")
    (models / "team").chmod(0o775)  # group-writable: anyone in the group could swap b.pt2
    assert "writable by its group" in model("team/b.pt2")
    assert model("a.pt2") == str(models / "a.pt2")
    (models / "team").chmod(0o755)
    (models / "a.pt2").chmod(0o646)
    assert "writable" in model("a.pt2")
    (models / "a.pt2").chmod(0o644)
    os.chown(models / "team" / "b.pt2", 12345, -1)  # another user's file
    assert "belongs to uid 12345" in model("team/b.pt2")
    models.chmod(0o777)
    assert "writable" in model("a.pt2")


# --------------------------------------------------------------------------- against a daemon


@pytest.fixture
def daemon(tmp_path: Path, root: Path):
    d = DaemonProcess(tmp_path / "state", "--path-root", str(root)).start()
    yield d
    d.kill()


def test_outputs_go_to_new_directories_the_daemon_creates(
    daemon: DaemonProcess, root: Path, tmp_path: Path
) -> None:
    link, outside = planted_link(root, "report.json")  # root/out/report.json -> root/outside.txt
    with daemon.client() as c:
        with pytest.raises(RequestError) as e:
            c.submit("prune", **prune_doc(root, output="out")["params"])
        assert (e.value.code, e.value.field) == ("conflict", "params.output")
        job = c.submit("prune", **prune_doc(root, output="new")["params"])
        c.cancel(job["id"])
        assert (root / "new").is_dir() and (root / "new").stat().st_mode & 0o777 == 0o750
        with pytest.raises(RequestError) as e:  # taken at submit: no second job writes there
            c.submit("prune", **prune_doc(root, output="new")["params"])
        assert e.value.code == "conflict"
        with pytest.raises(RequestError) as e:
            c.submit("prune", **prune_doc(root, options={"data_root": "/etc"})["params"])
        assert e.value.code == "not_allowed"
    assert outside.read_text() == "precious"
    assert daemon.stop() == 0


# --------------------------------------------------------------------------- keys


def make_keys(directory: Path, force: bool = False) -> None:
    keys.handler(argparse.Namespace(name="alice", dir=directory, force=force, json=True))


def test_secret_key_is_private_from_its_first_byte(tmp_path: Path, capsys) -> None:
    directory = tmp_path / "keys"
    make_keys(directory)
    secret = directory / "alice.key_secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert (directory / "alice.key").stat().st_mode & 0o777 == 0o644
    assert directory.stat().st_mode & 0o777 == 0o700
    with pytest.raises(RuntimeError, match="--force"):
        make_keys(directory)
    # --force with a link planted at the secret's name: the link goes, its target stays.
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    secret.unlink()
    secret.symlink_to(outside)
    make_keys(directory, force=True)
    assert outside.read_text() == "precious"
    assert not secret.is_symlink() and secret.stat().st_mode & 0o777 == 0o600
    with Client(timeout_s=1, server_key=directory / "alice.key", client_key=secret):
        pass  # both files load as ZeroMQ certificates
    capsys.readouterr()


def test_state_dir_is_tightened_or_refused(tmp_path: Path) -> None:
    old = tmp_path / "old-state"
    old.mkdir(mode=0o755)
    old.chmod(0o755)  # as an older daemon left it
    d = DaemonProcess(old).start()
    try:
        assert old.stat().st_mode & 0o777 == 0o700
        assert (old / "jobs.sqlite").stat().st_mode & 0o777 == 0o600
    finally:
        assert d.stop() == 0
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: not the daemon's to chmod
    prunerd = Path(sys.executable).parent / "prunerd"
    result = subprocess.run(
        [str(prunerd), "serve", "--state-dir", str(shared), "--rpc-port", "0",
         "--events-port", "0", "--ingest-port", "0", "--metrics-port", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "writable by others" in result.stderr
    assert shared.stat().st_mode & 0o7777 == 0o1777

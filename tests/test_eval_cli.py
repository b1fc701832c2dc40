"""`prunerd eval` through the installed console script, and shipped (pretrained) weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import profiler
import profiler.pretrained as pretrained
from profiler.pretrained import PretrainedEntry, PretrainedError, add_to_manifest

PRUNERD = shutil.which("prunerd")
needs_script = pytest.mark.skipif(
    PRUNERD is None, reason="the prunerd console script is not installed"
)


def prunerd(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two shared cores: one thread each
    proc = subprocess.run([PRUNERD, *args], capture_output=True, text=True, timeout=300, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny resnet20 trained on digits by the CLI, and its --json report."""
    out = tmp_path_factory.mktemp("eval") / "r20-digits.pt"
    argv = ["train", "resnet20", "--data", "digits", "--epochs", "2", "--batch-size", "64"]
    proc = prunerd(*argv, "--threads", "1", "--out", str(out), "--json")
    return out, json.loads(proc.stdout)


@needs_script
def test_eval_json_matches_the_training_report(digits_checkpoint) -> None:
    ckpt, trained = digits_checkpoint
    result = json.loads(prunerd("eval", "resnet20", "--checkpoint", str(ckpt), "--json").stdout)
    assert result["n"] == trained["test"]["n"] == 359  # the full digits test split
    assert result["accuracy"] == pytest.approx(trained["test"]["accuracy"])
    assert result["loss"] == pytest.approx(trained["test"]["loss"], rel=1e-5)
    assert result["dataset"] == "digits" and result["split"] == "test"
    assert 0.1 < result["accuracy"] <= 1.0 and result["loss"] > 0


@needs_script
def test_eval_limit_and_text_output(digits_checkpoint) -> None:
    ckpt, _ = digits_checkpoint
    result = json.loads(
        prunerd("eval", "resnet20", "--checkpoint", str(ckpt), "--limit", "50", "--json").stdout
    )
    assert result["n"] == 50
    text = prunerd("eval", "resnet20", "--checkpoint", str(ckpt), "--data", "digits").stdout
    assert "resnet20 on the digits test split: accuracy" in text and "n=359" in text


@needs_script
def test_eval_errors_and_help(digits_checkpoint, tmp_path: Path) -> None:
    ckpt, _ = digits_checkpoint
    help_text = prunerd("eval", "--help").stdout
    assert "--checkpoint CKPT" in help_text and "--pretrained DATASET" in help_text
    assert "--json" in help_text and "--limit" in help_text
    wrong = prunerd("eval", "resnet56", "--checkpoint", str(ckpt), check=False)
    assert wrong.returncode == 2 and "holds 'resnet20', not 'resnet56'" in wrong.stderr
    shape = prunerd(
        "eval", "resnet20", "--checkpoint", str(ckpt), "--data", "synthetic", check=False
    )
    assert shape.returncode == 2 and "with 10 outputs, but dataset 'synthetic' has" in shape.stderr
    neither = prunerd("eval", "resnet20", check=False)
    assert neither.returncode == 2 and "--checkpoint" in neither.stderr


@needs_script
def test_missing_pretrained_names_what_exists_and_how_to_train() -> None:
    proc = prunerd("eval", "vgg16", "--pretrained", "digits", check=False)
    assert proc.returncode == 2
    assert "no pretrained 'vgg16' for dataset 'digits' is shipped (shipped:" in proc.stderr
    assert "prunerd train vgg16 --data digits --out vgg16-digits.pt" in proc.stderr
    # a dataset prunerd has no loader for: no `--data cifar10` suggestion that would fail too
    unknown = prunerd("eval", "resnet20", "--pretrained", "cifar10", check=False)
    assert unknown.returncode == 2 and "--data cifar10" not in unknown.stderr
    assert "'cifar10' is not a dataset prunerd knows (digits, fashion-mnist" in unknown.stderr
    assert "shipped weights: resnet20 on fashion-mnist" in unknown.stderr


@needs_script
def test_load_model_pretrained_error_and_shipped_weights(
    digits_checkpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
    with pytest.raises(PretrainedError, match=r"shipped: none yet\).*prunerd train resnet20"):
        profiler.load_model("resnet20", pretrained="digits")
    ckpt, trained = digits_checkpoint
    shutil.copy(ckpt, tmp_path / "resnet20-digits.pt")
    entry = PretrainedEntry(
        model="resnet20",
        dataset="digits",
        file="resnet20-digits.pt",
        test_accuracy=trained["test"]["accuracy"],
        test_loss=trained["test"]["loss"],
        test_n=trained["test"]["n"],
        epochs=2,
        seed=0,
        seconds=trained["fit"]["seconds"],
        command="prunerd train resnet20 --data digits --epochs 2",
        machine="test",
        date="2026-01-01",
    )
    add_to_manifest(entry)
    assert pretrained.shipped() == [entry]
    model = profiler.load_model("resnet20", pretrained="digits")
    reference = profiler.load_model("resnet20", checkpoint=ckpt)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(PretrainedError, match="shipped: resnet20 on digits"):
        profiler.load_model("resnet56", pretrained="digits")
    with pytest.raises(ValueError, match="checkpoint or pretrained, not both"):
        profiler.load_model("resnet20", checkpoint=ckpt, pretrained="digits")
    # A manifest entry whose file is gone is not offered.
    (tmp_path / "resnet20-digits.pt").unlink()
    assert pretrained.shipped() == []


def test_every_command_that_names_a_model_takes_pretrained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.cli import build_parser
    from service.commands.weights import resolve_weights

    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
    (tmp_path / "resnet20-fashion-mnist.pt").write_bytes(b"")  # shipped() checks presence only
    entry = PretrainedEntry("resnet20", "fashion-mnist", "resnet20-fashion-mnist.pt", 0.9, 0.3,
                            10000, 40, 0, 1.0, "prunerd train ...", "test", "2026-01-01")  # fmt: skip
    add_to_manifest(entry)
    parser = build_parser()
    for argv in (
        ["eval", "resnet20", "--pretrained", "fashion-mnist"],
        ["profile", "resnet20", "--pretrained", "fashion-mnist"],
        ["prune", "resnet20", "--pretrained", "fashion-mnist", "--data", "fashion-mnist",
         "--budget", "0.5", "--out", str(tmp_path / "out")],
    ):  # fmt: skip
        args = parser.parse_args(argv)
        resolve_weights(args)
        assert args.checkpoint == tmp_path / "resnet20-fashion-mnist.pt", argv[0]
        args = parser.parse_args([*argv[:2], "--pretrained", "digits", *argv[4:]])
        with pytest.raises(PretrainedError, match="shipped: resnet20 on fashion-mnist"):
            resolve_weights(args)
    with pytest.raises(SystemExit):  # one or the other, never both
        parser.parse_args(["eval", "resnet20", "--pretrained", "x", "--checkpoint", "y"])


def test_a_directory_given_as_the_checkpoint_names_the_file_in_it(tmp_path: Path) -> None:
    """A prune's output directory given where its checkpoint belongs was 'does not exist'."""
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    done = prunerd("eval", "resnet20", "--checkpoint", str(tmp_path), check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    said = f"checkpoint {str(tmp_path)!r} is a directory; name the checkpoint file, e.g. "
    assert said + repr(str(tmp_path / "checkpoint.pt")) in done.stderr


def test_a_pipe_given_as_the_checkpoint_is_refused_unread(tmp_path: Path) -> None:
    """A named pipe (or /dev/null) is no checkpoint: said so at once, never read (a pipe
    nobody writes would block the command), not 'does not exist'."""
    pipe = tmp_path / "weights.pt"
    os.mkfifo(pipe)
    for path in (pipe, Path("/dev/null")):
        done = prunerd("eval", "resnet20", "--checkpoint", str(path), check=False)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert f"checkpoint {str(path)!r} is not a regular file" in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch that sees no GPU")
def test_asking_for_a_gpu_that_torch_does_not_see_is_said_in_words(tmp_path: Path) -> None:
    """train and eval ended in "AssertionError: Torch not compiled with CUDA enabled";
    profile and prune already said it in words."""
    for cmd in (["train", "resnet20", "--data", "digits", "--epochs", "1",
                 "--out", str(tmp_path / "m.pt")],
                ["eval", "resnet20", "--pretrained", "fashion-mnist", "--limit", "10"]):  # fmt: skip
        done = prunerd(*cmd, "--device", "cuda", check=False)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert "asked for a GPU but torch sees none; use --device cpu" in done.stderr
    assert not (tmp_path / "m.pt").exists()

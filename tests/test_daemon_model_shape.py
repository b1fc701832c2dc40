"""The input a daemon job's model takes, when the request leaves it unset: a ``.pt2``
program's exported input and a checkpoint's stored spec decide, and the daemon's bounds
hold them where they are known (submit for the request's fields, the worker for the
model's). Real daemons on loopback, started and asked by the installed ``prunerd``."""

from __future__ import annotations

from pathlib import Path

import pytest

from profiler import ModelSpec, build_model, save_checkpoint
from service.client import Client, RequestError

from .cli_helpers import PRUNERD, ok, run
from .service_helpers import DaemonProcess, wait_for
from .test_export_safety import plain_archive


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a program exported at 1x8x8 and a resnet20 checkpoint at 1x8x8."""
    folder = tmp_path_factory.mktemp("models")
    plain_archive(folder / "net.pt2")
    spec = ModelSpec("resnet20", 1, 10, (8, 8))
    save_checkpoint(folder / "r20.pt", spec, build_model(spec))
    return folder


def _daemon(tmp_path: Path, models: Path, side: int) -> DaemonProcess:
    roots = ("--model-dir", str(models), "--path-root", str(models))
    bound = ("--max-input-side", str(side))
    return DaemonProcess(tmp_path / "state", *roots, *bound, command=(PRUNERD, "serve")).start()


def _submit(d: DaemonProcess, *args: str) -> object:
    """``prunerd submit profile ARGS --wait`` against the daemon, as a user runs it."""
    conn = ("--connect", d.info["rpc"])
    return run(PRUNERD, "submit", "profile", *args, "--wait", *conn, timeout=180)


def _profiled_input(c: Client, **params: object) -> list[int]:
    """The (N, C, H, W) input the job's profile was timed at."""
    job = c.submit("profile", **params)
    final = c.wait(job["id"], 180)
    assert final["status"] == "done", final
    return c.result(job["id"])["result"]["input_shape"]


def test_an_unset_shape_comes_from_the_model(tmp_path: Path, models: Path) -> None:
    """A .pt2 runs at the input it was exported with (it ran at 3x32x32 and failed a guard),
    and a checkpoint at 8x8 passes a 16-pixel bound (it was refused at submit as 32x32)."""
    d = _daemon(tmp_path, models, 16)
    try:
        # The command that failed a guard at 3x32x32: no shape flags, the program's own.
        ok(_submit(d, str(models / "net.pt2")))
        with d.client() as c:
            assert _profiled_input(c, model=str(models / "net.pt2")) == [1, 1, 8, 8]
            ckpt = str(models / "r20.pt")
            assert _profiled_input(c, model="resnet20", checkpoint=ckpt) == [1, 1, 8, 8]
            # A built-in with nothing set is 3x32x32, held to the bound at submit.
            with pytest.raises(RequestError) as e:
                c.submit("profile", model="resnet20")
            assert e.value.code == "too_large" and e.value.field == "params.input_size"
            assert "params.input_size=[32, 32]" in str(e.value)
    finally:
        assert d.stop() == 0


def test_a_programs_own_input_is_held_to_the_bounds(tmp_path: Path, models: Path) -> None:
    """Past the bound: refused at submit when the request says so, failed by the worker
    (before the model is built) naming the program when only the program says so."""
    d = _daemon(tmp_path, models, 6)
    program = str(models / "net.pt2")
    try:
        with d.client() as c:
            with pytest.raises(RequestError) as e:
                c.submit("profile", model=program, in_channels=1, input_size=[8, 8])
            assert e.value.code == "too_large"
            job = c.submit("profile", model=program)
            final = c.wait(job["id"], 120)
            assert final["status"] == "failed", final
            said = final["error"]["message"]
            assert f"the model in program {program!r} takes 1x8x8 inputs" in said
            assert "max_input_side (6)" in said
        failed = _submit(d, program)  # as a user sees it: the job failed, said why
        assert failed.returncode == 1 and "takes 1x8x8 inputs" in failed.stdout + failed.stderr
        with d.client() as c:
            assert wait_for(lambda: c.ping()["running"] == 0, 30)  # and the daemon serves on
    finally:
        assert d.stop() == 0

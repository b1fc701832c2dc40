"""torch.distributed on CPU: two processes (gloo) through the installed `prunerd`, as users run it.

One process and two train and prune alike (the same seed removes the same blocks; accuracy
within noise), checkpoints and resume files move between process counts, and a rank killed
mid-run fails the run with no process left behind. Both ways of starting the processes are
used: ``prunerd ... --nproc-per-node 2`` and ``torchrun ... $(which prunerd) ...``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from pruner import distributed
from pruner.data import load_data
from pruner.train_config import state_path_for
from pruner.train_state import load_state

from .cli_helpers import BIN, PRUNERD, ok, run
from .service_helpers import children, pid_alive

TORCHRUN = str(BIN / "torchrun") if (BIN / "torchrun").is_file() else shutil.which("torchrun")
# Full digits (1437 training images), so that accuracy has settled after a few epochs.
TRAIN = ["resnet20", "--data", "digits", "--threads", "1", "--seed", "0"]
EPOCHS = ["--epochs", "6"]
TWO = ["--nproc-per-node", "2"]
NOISE = 0.03  # test accuracy of resnet20 on digits after 6 epochs: ~0.985 +- 0.005 over seeds


def torchrun(*args: str) -> list[str]:
    return [TORCHRUN, "--standalone", "--nproc-per-node", "2", PRUNERD, *args]


# --------------------------------------------------------------------------- in this process


def test_sharded_batches_are_the_one_process_batches_split():
    """Rank r takes samples r, r + N, ... of each batch, with the same augmentation and draws."""
    data = load_data("synthetic", size=8, count=203, batch_size=32, seed=3)
    batches = data.train
    batches.augment_pad, batches.augment_flip = 1, True
    start = batches.rng_state()
    whole = list(batches)
    after = batches.rng_state()
    for world in (2, 3):
        shares = []
        for r in range(world):
            batches.set_rng_state(start)
            view = batches.sharded(r, world)
            assert len(view) == len(batches)
            shares.append(list(view))
            assert torch.equal(batches.rng_state(), after)  # the same draws, whatever the rank
        for k, (x, y) in enumerate(whole):
            sizes = {len(share[k][1]) for share in shares}
            assert sizes == {-(-len(y) // world)}  # the last batch padded to a multiple of N
            for r, share in enumerate(shares):
                n = len(range(r, len(y), world))
                assert torch.equal(share[k][0][:n], x[r::world])
                assert torch.equal(share[k][1][:n], y[r::world])
    assert distributed.rank_batch_size(batches.sharded(0, 3)) == 11
    assert distributed.rank_batch_size(batches) == 32
    with pytest.raises(ValueError, match="batch size 32 cannot be shared by 33"):
        batches.sharded(0, 33)


def test_without_a_process_group_everything_is_one_process():
    data = load_data("synthetic", size=8, count=64, batch_size=16)
    assert not distributed.active() and distributed.is_main() and distributed.world_size() == 1
    assert distributed.shard(data.train) is data.train
    assert distributed.split(data.test) is data.test
    assert distributed.from_main(lambda: 42) == 42
    loss = torch.tensor(1.5)
    assert distributed.sum_over_ranks(loss, 3)[0] is loss
    assert distributed.map_in_turns(["a", "b"], str.upper) == {"a": "A", "b": "B"}
    model = torch.nn.Linear(2, 2)
    with distributed.parallel(model) as net:
        assert net is model


# --------------------------------------------------------------------------- two processes


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def one(work: Path) -> dict:
    out = work / "one.pt"
    return json.loads(
        ok(run(PRUNERD, "train", *TRAIN, *EPOCHS, "--out", str(out), "--json")).stdout
    )


@pytest.fixture(scope="module")
def two(work: Path) -> dict:
    out, tmp = work / "two.pt", work / "tmp-two"
    tmp.mkdir()
    argv = [PRUNERD, "train", *TRAIN, *EPOCHS, *TWO, "--out", str(out), "--json"]
    result = ok(run(*argv, env={"TMPDIR": str(tmp)}))
    return json.loads(result.stdout)  # rank 0 alone prints


def test_two_processes_leave_no_agent_logs_behind(work: Path, two: dict) -> None:
    assert two["checkpoint"] and not list((work / "tmp-two").glob("torchelastic_*"))


def test_two_processes_train_as_one(one: dict, two: dict) -> None:
    """The same global batches and schedule: the same number of steps, accuracy within noise."""
    for r in (one, two):
        assert [e["epoch"] for e in r["fit"]["history"]] == list(range(1, 7))
        assert r["test"]["n"] == 359 and r["test"]["accuracy"] > 0.9
    assert abs(one["test"]["accuracy"] - two["test"]["accuracy"]) <= NOISE
    assert two["extra"]["config"] == one["extra"]["config"] | {"out": two["checkpoint"]}


def test_a_two_process_checkpoint_loads_in_one_process(two: dict) -> None:
    """The checkpoint holds the plain model: one process evaluates it to the same figures."""
    ckpt = two["checkpoint"]
    assert not state_path_for(ckpt).exists()  # written, so no resume file is left
    got = json.loads(ok(run(PRUNERD, "eval", "resnet20", "--checkpoint", ckpt, "--json")).stdout)
    assert got["n"] == two["test"]["n"] and got["accuracy"] == two["test"]["accuracy"]
    assert got["loss"] == pytest.approx(two["test"]["loss"], rel=1e-5)


def test_two_processes_remove_the_same_blocks(work: Path, one: dict) -> None:
    """Same seed, same table: the same selection, and accuracy after fine-tuning within noise.

    The block latencies come from a table filled beforehand, as both runs would read it on a
    machine that profiles cleanly; later rounds depend on end-to-end latency measured on a
    shared machine, so the first round's selection is what must agree.
    """
    table = str(work / "lut.sqlite")
    ckpt = one["checkpoint"]
    ok(run(PRUNERD, "profile", "resnet20", "--checkpoint", ckpt, "--threads", "1",
           "--table", table, "--store-failed", "--timing-budget-s", "0.3", "--quiet"))  # fmt: skip
    args = ["resnet20", "--checkpoint", ckpt, "--data", "digits", "--budget", "0.8",
            "--epochs", "1", "--threads", "1", "--timing-budget-s", "0.3", "--table", table, "--json"]  # fmt: skip
    alone = json.loads(ok(run(PRUNERD, "prune", *args, "--out", str(work / "p1"))).stdout)
    pair = json.loads(ok(run(*torchrun("prune", *args, "--out", str(work / "p2")))).stdout)
    assert alone["rounds"][0]["removed"] and pair["rounds"][0]["removed"]
    assert pair["rounds"][0]["removed"] == alone["rounds"][0]["removed"]
    # The default criterion: each rank scores its share of the blocks, every rank gets all.
    rises = [[r["loss_rise"] for r in x["depth"]["removals"]] for x in (alone, pair)]
    assert rises[0] and rises[1] == pytest.approx(rises[0], abs=1e-5)
    a, b = (r["rounds"][0]["accuracy_after_finetune"] for r in (alone, pair))
    assert abs(a - b) <= 2 * NOISE
    for name in ("report.json", "plan.json", "pruned.pt"):
        assert (work / "p2" / name).is_file()


# --------------------------------------------------------------------------- killed runs


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    with log.open("wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


def _kill_a_rank(out: Path, log: Path, epochs: int) -> tuple[subprocess.Popen, list[int]]:
    """A two-process run, one of its ranks SIGKILLed once the first epoch is saved."""
    cmd = [PRUNERD, "train", *TRAIN, "--epochs", str(epochs), *TWO, "--out", str(out)]
    launcher = _start(cmd, log)
    _wait_for(state_path_for(out), launcher, log)
    workers = children(launcher.pid)
    assert len(workers) == 2, workers
    os.kill(max(workers), signal.SIGKILL)
    return launcher, workers


def test_a_killed_rank_fails_the_run_cleanly(work: Path) -> None:
    log = work / "killed.log"
    launcher, workers = _kill_a_rank(work / "killed.pt", log, epochs=30)
    try:
        code = launcher.wait(timeout=90)
    finally:
        if launcher.poll() is None:
            for pid in [*workers, launcher.pid]:
                os.kill(pid, signal.SIGKILL)
    assert code == 128 + signal.SIGKILL, log.read_text()[-3000:]
    assert f"rank 1 (pid {max(workers)}) was killed by SIGKILL" in log.read_text()
    deadline = time.monotonic() + 30
    while any(map(pid_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(pid_alive, workers)), [p for p in workers if pid_alive(p)]
    assert not (work / "killed.pt").exists()


def test_a_two_process_run_resumes_in_one_process(work: Path) -> None:
    out = work / "resumed1.pt"
    launcher, _ = _kill_a_rank(out, work / "resumed1.log", epochs=6)
    assert launcher.wait(timeout=90) != 0
    saved = load_state(state_path_for(out))
    assert 1 <= saved.epoch < 6
    result = ok(run(PRUNERD, "train", *TRAIN, *EPOCHS, "--out", str(out), "--resume", "--json"))
    r = json.loads(result.stdout)
    assert [e["epoch"] for e in r["fit"]["history"]] == list(range(1, 7))
    assert r["fit"]["history"][: saved.epoch] == saved.history  # continued from the file
    assert r["test"]["accuracy"] > 0.9
    assert out.is_file() and not state_path_for(out).exists()


def test_a_one_process_run_resumes_in_two(work: Path) -> None:
    out = work / "resumed2.pt"
    log = work / "resumed2.log"
    alone = _start([PRUNERD, "train", *TRAIN, *EPOCHS, "--out", str(out)], log)
    _wait_for(state_path_for(out), alone, log)
    alone.kill()
    alone.wait(timeout=30)
    saved = load_state(state_path_for(out))
    assert 1 <= saved.epoch < 6
    result = ok(run(*torchrun("train", *TRAIN, *EPOCHS, "--out", str(out), "--resume", "--json")))
    r = json.loads(result.stdout)
    assert [e["epoch"] for e in r["fit"]["history"]] == list(range(1, 7))
    assert r["fit"]["history"][: saved.epoch] == saved.history  # continued from the file
    assert r["test"]["accuracy"] > 0.9

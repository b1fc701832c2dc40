"""The `prunerd` console script as installed, one subprocess per command, as a user runs it.

train, profile, prune and quickstart run on digits with tiny limits; serve, submit, jobs,
watch, cancel and keys run against a daemon the script itself started on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from pruner import PruneReport
from service.commands.prune import summary_lines

from .cli_helpers import PRUNERD, ok, run
from .service_helpers import wait_for

TRAIN = ["--data", "digits", "--out", "m.pt", "--epochs", "1"]  # relative: in the test's cwd
QUICK_TIMING = ["--timing-budget-s", "0.3", "--no-table"]  # timing budget per measurement, no LUT


def prunerd(
    *args: str, timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return run(PRUNERD, *args, timeout=timeout, cwd=cwd)


def test_the_script_is_installed() -> None:
    assert Path(PRUNERD).is_file() and os.access(PRUNERD, os.X_OK)
    out = ok(prunerd("--help")).stdout
    for command in ("train", "profile", "prune", "quickstart", "serve", "submit", "jobs"):
        assert command in out
    assert prunerd("no-such-command").returncode == 2


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def baseline(work: Path) -> Path:
    ckpt = work / "base.pt"
    result = ok(
        prunerd("train", "resnet20", "--data", "digits", "--epochs", "1", "--limit", "200",
                "--out", str(ckpt), "--json")
    )  # fmt: skip
    assert json.loads(result.stdout)  # the result, as JSON on stdout
    assert ckpt.is_file()
    return ckpt


def test_piped_training_logs_one_whole_line_per_epoch(work: Path) -> None:
    """Piped, the bar's last frame came out after the epoch lines, cut to 80 columns with
    `…`, and an epoch line over 80 columns wrapped; now only the lines, each whole."""
    done = ok(prunerd("train", "resnet20", "--data", "digits", "--epochs", "2", "--limit", "100",
                      "--val-fraction", "0.2", "--out", str(work / "logged.pt")))  # fmt: skip
    lines = done.stderr.splitlines()
    epochs = [ln for ln in lines if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in epochs] == ["1/2", "2/2"], done.stderr
    assert all(re.search(r"val acc [0-9.]+ loss [0-9.]+ lr \S+ [0-9.]+ s$", ln) for ln in epochs)
    assert "━" not in done.stderr and "…" not in done.stderr and len(lines) == 2


def test_profile(work: Path, baseline: Path) -> None:
    out = work / "profile.json"
    result = ok(prunerd("profile", "resnet20", "--checkpoint", str(baseline), *QUICK_TIMING,
                        "--json", str(out)))  # fmt: skip
    profile = json.loads(out.read_text())
    assert profile["blocks"] and profile["end_to_end_s"] > 0
    # Piped, progress is one plain line per phase on stderr, never a redrawn bar.
    phases = [ln for ln in result.stderr.splitlines() if ln.startswith("profiling resnet20: ")]
    assert len(phases) >= 2 and "\r" not in result.stderr
    assert "layer3.2" in result.stdout  # the table, on stdout


@pytest.mark.slow
def test_prune_and_profile_its_export(work: Path, baseline: Path) -> None:
    out = work / "pruned"
    result = ok(
        prunerd("prune", "resnet20", "--checkpoint", str(baseline), "--data", "digits",
                "--method", "dbp", "--budget", "0.9", "--epochs", "1", "--limit", "200",
                *QUICK_TIMING, "--calibration-samples", "150", "--heldout-samples", "40",
                "--out", str(out), "--json")
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert report["removed_blocks"] and (out / "pruned.pt").is_file()
    config = report["config"]
    assert (config["calibration_samples"], config["heldout_samples"]) == (150, 40)
    # Every probe gain comes with its standard error over the 40 held-out images.
    scores = report["depth"]["scores"]
    assert scores and all(s["loss_gain_se"] >= 0 for s in scores)
    # The exported program passes the .pt2 inspection and profiles like any model, at the
    # input it was exported with (it took --in-channels 1 --input-size 8x8 to say so).
    ok(prunerd("profile", str(out / "pruned.pt2"), *QUICK_TIMING, "--quiet",
               "--json", str(work / "pruned-profile.json")))  # fmt: skip
    exported = json.loads((work / "pruned-profile.json").read_text())
    assert exported["input_shape"] == [1, 1, 8, 8]
    # Fusion swaps modules, and a program has none: refused, where it was timed unfused and
    # labelled fused.
    fused = prunerd("profile", str(out / "pruned.pt2"), "--fused", *QUICK_TIMING, "--quiet")
    assert fused.returncode == 2 and "has no Conv-BN chain to fuse (a torch.export" in (
        fused.stderr
    )
    # The pruned checkpoint profiles too ("load it with pruner.load_pruned" before): the blocks
    # it kept, checkable on another device without Python.
    ok(prunerd("profile", "resnet20", "--checkpoint", str(out / "pruned.pt"), *QUICK_TIMING,
               "--quiet", "--json", str(work / "pruned-ckpt.json")))  # fmt: skip
    timed = json.loads((work / "pruned-ckpt.json").read_text())
    kept = {b["name"] for b in timed["blocks"]}
    assert kept and not kept & set(report["removed_blocks"])
    assert timed["model"] == f"resnet20@{out / 'pruned.pt'}"  # not the architecture's name
    # The program given where a checkpoint goes is named for what it is, with the way out.
    mixed = prunerd("eval", "resnet20", "--checkpoint", str(out / "pruned.pt2"))
    assert mixed.returncode == 2 and "is a torch.export program, not a checkpoint" in mixed.stderr
    assert f"the checkpoint of the same model is {str(out / 'pruned.pt')!r}" in mixed.stderr
    # Named as the model, with no weights: argparse said only "one of the arguments
    # --checkpoint --pretrained is required"; now the command to run instead.
    bare = prunerd("eval", str(out / "pruned.pt2"), "--data", "digits")
    assert bare.returncode == 2 and "is a torch.export program; eval reads a checkpoint" in (
        bare.stderr
    )
    assert f"`prunerd eval resnet20 --checkpoint {out / 'pruned.pt'}`" in bare.stderr
    # Pruned again: refused (a plan applies to the whole architecture), naming the baseline
    # to prune instead (it said "load it with pruner.load_checkpoint_model").
    again = prunerd("prune", "resnet20", "--checkpoint", str(out / "pruned.pt"), "--data",
                    "digits", "--budget", "0.5", "--out", str(work / "again"))  # fmt: skip
    assert again.returncode == 2 and not (work / "again").exists()
    assert f"prune the checkpoint it was pruned from, {str(baseline)!r}, again" in again.stderr
    unweighted = prunerd("prune", "resnet20", "--data", "digits", "--out", str(work / "none"))
    assert unweighted.returncode == 2 and not (work / "none").exists()
    assert "prune needs MODEL's weights: give --checkpoint CKPT" in unweighted.stderr


def test_prune_by_removal_loss(work: Path, baseline: Path) -> None:
    """``--method removal``: every removable block scored by the held-out loss of the model
    without it, on the --heldout-samples images, and the least costly ones removed."""
    out = work / "removal"
    result = ok(
        prunerd("prune", "resnet20", "--checkpoint", str(baseline), "--data", "digits",
                "--method", "removal", "--budget", "0.8", "--epochs", "0", *QUICK_TIMING,
                "--heldout-samples", "60", "--out", str(out), "--json")
    )  # fmt: skip
    report = json.loads(result.stdout)
    depth = report["depth"]
    removals = {r["name"]: r for r in depth["removals"]}
    assert len(removals) >= 8 and not depth["scores"]  # no probes: another criterion
    assert all(r["samples"] == 60 and r["loss_rise_se"] >= 0 for r in removals.values())
    assert report["removed_blocks"] and set(report["removed_blocks"]) <= set(removals)
    gains = {c["name"]: c["gain"] for c in depth["candidates"]}
    assert all(gains[n] == pytest.approx(r["loss_rise"]) for n, r in removals.items())
    assert (out / "pruned.pt").is_file()


def test_iterative_removal_fine_tuned_after_the_last_round(work: Path, baseline: Path) -> None:
    """``--iterative --iterative-rounds 2 --finetune-last``: two rounds, the first only
    removes (its accuracy is the same before and after), the scores the report keeps are the
    second round's, taken on the pruned model; --finetune-last alone is refused by flag."""
    out = work / "iterative"
    args = ["prune", "resnet20", "--checkpoint", str(baseline), "--data", "digits",
            "--method", "removal", "--budget", "0.6", "--epochs", "1", *QUICK_TIMING,
            "--heldout-samples", "60", "--finetune-last", "--out", str(out), "--json"]  # fmt: skip
    refused = prunerd(*args)
    assert refused.returncode == 2 and not out.exists()
    assert "--finetune-last: fine-tuning only after the last round needs --iterative" in (
        refused.stderr
    )
    report = json.loads(ok(prunerd(*args, "--iterative", "--iterative-rounds", "2")).stdout)
    first = report["rounds"][0]
    assert len(report["rounds"]) >= 2 and first["removed"]
    assert first["accuracy_after_finetune"] == first["accuracy_before_finetune"]
    rescored = {r["name"] for r in report["depth"]["removals"]}
    assert rescored and not rescored & set(first["removed"])
    assert report["config"]["iterative_finetune"] is False


def test_prune_blocks_by_removal_then_filters(work: Path, baseline: Path) -> None:
    """``--method removal+hfp --depth-share 0.5``: the block pass scores by removal loss, the
    width pass thins what is left, one budget between them; the pruned model loads.

    The budget, 0.2, is below what removing every removable block measures (about 0.3 of
    resnet20 on digits), so the width pass always has work: at 0.6 the block pass, asked
    for about 0.66, often measured within 3% of 0.6 and the width pass rightly did nothing."""
    out = work / "removal-hfp"
    result = ok(
        prunerd("prune", "resnet20", "--checkpoint", str(baseline), "--data", "digits",
                "--method", "removal+hfp", "--budget", "0.2", "--depth-share", "0.5",
                "--max-fits", "2", "--epochs", "1", "--limit", "200", *QUICK_TIMING, "--heldout-samples", "60",
                "--out", str(out), "--json")
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert report["depth"]["removals"] and not report["depth"]["scores"]
    split = report["split"]
    assert split["depth"] * split["width"] == pytest.approx(0.2)
    width = report["width"]  # each width fit measured, at most --max-fits of them
    assert "latency" in width["targets"], report["warnings"]
    assert 1 <= width["fits"] <= 2 and len(width["fit_latencies_s"]) == width["fits"]
    assert 0 <= width["kept_fit"] < width["fits"]
    assert report["config"]["max_fits"] == 2
    summary = "\n".join(summary_lines(PruneReport.from_json(result.stdout)))
    assert f"widths fitted {width['fits']} time" in summary and "removed " in summary
    plan = json.loads((out / "plan.json").read_text())
    assert plan["method"] == "removal+hfp" and plan["removed"] and plan["channels"]
    evaluated = ok(prunerd("eval", "resnet20", "--checkpoint", str(out / "pruned.pt"),
                           "--data", "digits", "--limit", "100", "--json"))  # fmt: skip
    assert json.loads(evaluated.stdout)["n"] == 100


def test_blocks_to_a_budget_then_filters_to_a_size_claim_no_prediction(
    work: Path, baseline: Path
) -> None:
    """removal+hfp with the whole latency cut for the blocks and a MACs target for the
    filters: the width pass predicts no latency, and the summary printed "predicted 0.000 ms"."""
    result = ok(
        prunerd("prune", "resnet20", "--checkpoint", str(baseline), "--data", "digits",
                "--method", "removal+hfp", "--budget", "0.9", "--depth-share", "1",
                "--target-macs", "0.5",
                "--epochs", "0", "--limit", "200", *QUICK_TIMING, "--heldout-samples", "60",
                "--out", str(work / "removal-macs"))
    )  # fmt: skip
    assert "MACs x" in result.stdout and "speed-up" in result.stdout
    assert not re.search(r"^predicted ", result.stdout, re.M), (
        result.stdout
    )  # (a warning may say it)


def test_prune_to_size_targets_prints_them(work: Path, baseline: Path) -> None:
    """hfp to a MACs target, no latency budget: the table names the target, not a budget."""
    result = ok(
        prunerd("prune", "resnet20", "--checkpoint", str(baseline), "--data", "digits",
                "--method", "hfp", "--target-macs", "0.5", "--epochs", "0", "--limit", "200",
                *QUICK_TIMING, "--out", str(work / "macs"))
    )  # fmt: skip
    assert "hfp, target macs x0.500" in result.stdout
    assert "budget" not in result.stdout
    assert 0.49 <= float(re.search(r"MACs x([0-9.]+)", result.stdout)[1]) <= 0.5


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without GPU")
def test_prune_on_a_missing_gpu_says_so(work: Path, baseline: Path) -> None:
    result = prunerd("prune", "resnet20", "--checkpoint", str(baseline), "--data", "digits",
                     "--budget", "0.5", "--device", "cuda", "--cuda-graph",
                     "--out", str(work / "no-gpu"))  # fmt: skip
    assert result.returncode == 2
    assert "--device 'cuda' asked for a GPU but torch sees none; use --device cpu" in result.stderr
    assert not (work / "no-gpu").exists()


def test_output_paths_are_refused_before_the_work(work: Path, baseline: Path) -> None:
    taken = work / "a-file"  # where the outputs below would need a directory
    taken.write_text("not a directory")
    train = prunerd("train", "resnet20", "--data", "digits", "--epochs", "1", "--out", str(work))
    assert train.returncode == 2 and "is a directory; name the file" in train.stderr
    assert "epoch" not in train.stderr  # refused before training, not after it
    prune = prunerd("prune", "resnet20", "--checkpoint", str(baseline), "--data", "digits",
                    "--budget", "0.5", *QUICK_TIMING, "--out", str(taken / "out"))  # fmt: skip
    assert prune.returncode == 2 and "in its path), not a directory" in prune.stderr
    assert "pruning resnet20" not in prune.stderr  # nothing measured
    profile = prunerd("profile", "resnet20", *QUICK_TIMING, "--json", str(taken / "p.json"))
    assert profile.returncode == 2 and "directory of the --json file" in profile.stderr
    assert "profiling" not in profile.stderr
    assert taken.read_text() == "not a directory"


def test_links_pipes_and_devices_are_not_replaced_by_output_files(tmp_path: Path) -> None:
    """Every file is written whole and renamed onto its name: given a link (or /dev/stdout,
    a link), a pipe or a resume path taken by a directory, the run replaced the link with a
    regular file (as root, /dev/stdout itself), starved the pipe's reader, or failed after
    an epoch of training. Each is refused before any work, and left as it was."""
    real, link, pipe = tmp_path / "real.json", tmp_path / "link.json", tmp_path / "pipe.json"
    real.write_text("{}")
    link.symlink_to(real)
    os.mkfifo(pipe)
    for path, said in ((link, "is a symbolic link"), (pipe, "is not a regular file")):
        done = prunerd("profile", "resnet20", *QUICK_TIMING, "--json", str(path))
        assert done.returncode == 2 and said in done.stderr, done.stderr
        assert "profiling" not in done.stderr
    train = ["train", "resnet20", "--data", "digits", "--epochs", "1", "--limit", "50"]
    done = prunerd(*train, "--out", str(link), "--overwrite")
    assert done.returncode == 2 and "is a symbolic link" in done.stderr, done.stderr
    (tmp_path / "m.pt.state").mkdir()
    done = prunerd(*train, "--out", str(tmp_path / "m.pt"))
    assert done.returncode == 2 and "where this run keeps its resume file" in done.stderr
    assert "epoch" not in done.stderr
    assert link.is_symlink() and real.read_text() == "{}" and pipe.is_fifo()


def test_an_empty_held_out_split_is_refused_before_profiling(work: Path, baseline: Path) -> None:
    """--limit 1 leaves one training sample and none held out: the block scorers were told
    so only after the baseline profile; now at once, naming the methods that need none."""
    out = work / "empty-val"
    out.mkdir()
    (out / "report.json").write_text("{}")  # a run before: --overwrite lets this one go on
    prune = prunerd("prune", "resnet20", "--checkpoint", str(baseline), "--data", "digits",
                    "--limit", "1", "--method", "removal", "--budget", "0.5", *QUICK_TIMING,
                    "--out", str(out), "--overwrite")  # fmt: skip
    assert prune.returncode == 2 and "Traceback" not in prune.stderr, prune.stderr
    assert "method 'removal' scores blocks on the held-out split, which is empty" in prune.stderr
    assert "l1" in prune.stderr and "profiling" not in prune.stderr


def test_a_second_run_does_not_write_over_the_first(work: Path, baseline: Path) -> None:
    """The same train or prune command line run twice replaced the first checkpoint or
    pruned model without a word; now it is refused until --overwrite says so."""
    trained = baseline.read_bytes()
    again = ["train", "resnet20", "--data", "digits", "--epochs", "1", "--limit", "50"]
    refused = prunerd(*again, "--out", str(baseline))
    assert refused.returncode == 2, refused.stderr
    assert f"--out {str(baseline)!r} already exists; --overwrite replaces it" in refused.stderr
    finished = prunerd(*again, "--out", str(baseline), "--resume")
    assert finished.returncode == 2 and "is a finished run (no resume file" in finished.stderr
    assert baseline.read_bytes() == trained
    copy = work / "copy.pt"
    copy.write_bytes(trained)
    ok(prunerd(*again, "--out", str(copy), "--overwrite"))
    assert copy.read_bytes() != trained
    pruned = work / "pruned-before"
    pruned.mkdir()
    (pruned / "report.json").write_text("{}")
    prune = prunerd("prune", "resnet20", "--checkpoint", str(baseline), "--data", "digits",
                    "--budget", "0.5", "--out", str(pruned))  # fmt: skip
    assert prune.returncode == 2 and "already holds report.json; --overwrite" in prune.stderr
    assert (pruned / "report.json").read_text() == "{}"


@pytest.mark.slow
def test_quickstart(work: Path) -> None:
    out = work / "quickstart"
    printed = ok(
        prunerd("quickstart", "--model", "resnet20", "--data", "digits", "--train",
                "--epochs", "1", "--limit", "200", "--prune-epochs", "1", *QUICK_TIMING,
                "--cache-dir", str(work / "cache"), "--out", str(out))
    ).stdout  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["removed_blocks"] and report["profiled_latency_s"] > 0
    # The prediction is given against the profiled baseline it was made on.
    assert "of the profiled" in printed and "measured" in printed
    # It ends with what to run next; the printed command runs as printed.
    pruned = out / "pruned.pt"
    assert f"`prunerd profile resnet20 --checkpoint {pruned}`" in printed
    evaluate = re.search(r"`prunerd (eval [^`]+)`", printed)[1].split()
    assert "accuracy" in ok(prunerd(*evaluate)).stdout


# --------------------------------------------------------------------------- against a daemon


@pytest.fixture(scope="module")
def daemon(work: Path, baseline: Path):
    """`prunerd serve` on free loopback ports; yields the endpoints it wrote to daemon.json."""
    state = work / "state"
    log = (work / "serve.log").open("wb")
    proc = subprocess.Popen(
        [PRUNERD, "serve", "--host", "127.0.0.1", "--rpc-port", "0", "--events-port", "0",
         "--ingest-port", "0", "--metrics-port", "0", "--state-dir", str(state),
         "--path-root", str(work)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()

    def started() -> dict | None:
        assert proc.poll() is None, (work / "serve.log").read_text()
        try:
            info = json.loads((state / "daemon.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return info if info.get("pid") == proc.pid else None

    info = wait_for(started, timeout_s=60)
    # No --events: the client asks the daemon where its events are, as a user's would.
    yield {"proc": proc, "connect": ["--connect", info["rpc"]], "events": info["events"]}
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_submit_profile_waits_for_the_result(daemon: dict) -> None:
    # The command that answered "unknown field 'params.system_malloc'" before.
    result = ok(prunerd("submit", "profile", "resnet20", "--in-channels", "1",
                        "--input-size", "8x8", "--wait", *daemon["connect"]))  # fmt: skip
    assert "done" in result.stdout
    # Every event, not only the final status: with the daemon on port 0, the events port was
    # taken to be the request port + 1, nothing arrived, and the watch printed "done" alone.
    assert re.search(r"started +profile in pid \d+", result.stdout), result.stdout
    assert re.search(r"block +layer3\.2 +[0-9.]+ ms", result.stdout)
    # One progress line per timed piece was 400 lines; each phase's first and last remain.
    timing = re.findall(r"progress +timing (\d+)/(\d+)", result.stdout)
    assert timing[0][0] == "1" and timing[-1][0] == timing[-1][1] and len(timing) < 20
    # Then the table `prunerd profile` prints: a bare "done" was all a waiting user saw.
    table = result.stdout.split(" done\n", 1)[1]
    assert "│ layer3.2 │ residual" in table and "additivity error" in table
    # The global flag, given before the command, is for this process, not for the job.
    ok(prunerd("--system-malloc", "submit", "selftest", "--seconds", "0.2", "--steps", "2",
               "--wait", *daemon["connect"]))  # fmt: skip


def test_ctrl_c_on_a_waiting_submit_names_the_job_that_goes_on(daemon: dict) -> None:
    """Ctrl-C while `submit --wait` follows a job printed `interrupted`: the job runs on in
    the daemon, and now the user is told which, and how to follow or stop it."""
    waiting = subprocess.Popen(
        [PRUNERD, "submit", "selftest", "--seconds", "60", "--steps", "60", "--wait",
         *daemon["connect"]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A shell's background job (CI under nohup ... &) ignores SIGINT, and the ignoring is
        # inherited; a person's terminal delivers it, as here.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert waiting.stdout is not None
    started = wait_for(lambda: "started" in (line := waiting.stdout.readline()) and line, 60)
    waiting.send_signal(signal.SIGINT)
    out, err = waiting.communicate(timeout=30)
    job_id = started.split()[1]
    assert waiting.returncode == 130, err
    assert f"stopped waiting; job {job_id} goes on in the daemon" in err
    assert f"`prunerd cancel {job_id}` stops it" in err and "Traceback" not in err
    status = json.loads(ok(prunerd("jobs", "--json", *daemon["connect"])).stdout)
    assert {j["id"]: j["status"] for j in status["jobs"]}[job_id] == "running"
    ok(prunerd("cancel", job_id, *daemon["connect"]))


def test_jobs_watch_cancel(daemon: dict) -> None:
    job = json.loads(
        ok(prunerd("submit", "selftest", "--seconds", "60", "--steps", "60", "--json",
                   *daemon["connect"])).stdout
    )  # fmt: skip
    listed = json.loads(ok(prunerd("jobs", "--json", *daemon["connect"])).stdout)
    assert job["id"] in [j["id"] for j in listed["jobs"]]
    assert job["id"] in ok(prunerd("jobs", *daemon["connect"])).stdout  # the table
    cancelled = json.loads(ok(prunerd("cancel", job["id"], "--json", *daemon["connect"])).stdout)
    assert cancelled["job"]["id"] == job["id"]
    watched = prunerd("watch", job["id"], "--json", *daemon["connect"],
                      "--events", daemon["events"], timeout=120)  # fmt: skip
    assert watched.returncode == 1  # the job ended, but not "done"
    assert json.loads(watched.stdout.splitlines()[-1])["event"] == "cancelled"
    again = prunerd("cancel", job["id"], "--json", *daemon["connect"])
    assert again.returncode == 1 and json.loads(again.stderr)["error"]["code"] == "conflict"


def test_jobs_prints_no_terminal_escapes_from_a_jobs_paths(
    daemon: dict, work: Path, baseline: Path
) -> None:
    """A path any client can make (a prune's --out) printed raw by `prunerd jobs`: escape
    sequences set the reader's window title and cleared the screen. Written as escapes;
    and `prunerd jobs | head` ended in a BrokenPipeError traceback."""
    hostile = work / "x\x1b]0;PWNED\x07\x1b[2J\x1b[31mRED.pt"
    shutil.copy(baseline, hostile)
    ok(prunerd("submit", "profile", "resnet20", "--checkpoint", str(hostile), *daemon["connect"]))
    listed = ok(prunerd("jobs", *daemon["connect"])).stdout
    assert "\x1b" not in listed and "x\\x1b]0;PWNED\\x07\\x1b[2J" in listed
    piped = subprocess.run(
        f"{PRUNERD} jobs {' '.join(daemon['connect'])} | true",  # a reader gone at once
        shell=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert piped.returncode == 0 and "Traceback" not in piped.stderr, piped.stderr


def test_submit_prune_is_refused_an_existing_output(
    daemon: dict, work: Path, baseline: Path
) -> None:
    """`submit prune` end to end up to the daemon's checks (prune jobs themselves run in
    test_daemon_prune): options travel as JSON, and an existing output is refused."""
    (work / "taken").mkdir()
    # `prunerd prune`'s names for the budget, the data and the output
    args = ["submit", "prune", "resnet20", "--checkpoint", str(baseline), "--budget-ms", "900",
            "--data", "digits", "--option", "epochs=1", "--option", "limit=200", "--json",
            *daemon["connect"]]  # fmt: skip
    taken = prunerd(*args, "--out", str(work / "taken"))
    assert taken.returncode == 1
    error = json.loads(taken.stderr)["error"]
    assert (error["code"], error["field"]) == ("conflict", "params.output")
    job = json.loads(ok(prunerd(*args, "--out", str(work / "fresh"))).stdout)
    assert job["params"]["options"] == {"epochs": 1, "limit": 200}
    assert (job["params"]["budget_s"], job["params"]["dataset"]) == (0.9, "digits")
    assert (work / "fresh").is_dir()  # created by the daemon when it took the job
    ok(prunerd("cancel", job["id"], *daemon["connect"]))


def test_submit_prune_wait_shows_milestones_and_the_report(
    daemon: dict, work: Path, baseline: Path
) -> None:
    """A waiting user saw a bare `milestone` line per step and then `done`; now each says
    what happened, and the before/after table `prunerd prune` prints follows."""
    # 0.9: on a loaded machine the unremovable part of resnet20 at 8x8 measured 0.861 of it,
    # and a budget under that is refused before any milestone.
    done = prunerd("submit", "prune", "resnet20", "--checkpoint", str(baseline),
                   "--budget", "0.9", "--data", "digits", "--option", "epochs=1",
                   "--option", "limit=200", "--timing-budget-s", "0.2",
                   "--out", str(work / "waited"), "--wait", *daemon["connect"])  # fmt: skip
    said = done.stdout
    # 1: the job ended without meeting the budget (a timing on a loaded machine can miss it)
    assert done.returncode in (0, 1), f"{said[-2000:]}\n{done.stderr[-2000:]}"
    assert re.search(r"milestone +profiled: end to end [0-9.]+ ms, budget [0-9.]+ ms", said)
    assert re.search(r"milestone +selected: round 0: remove layer", said), said
    assert re.search(r"milestone +done: speed-up [0-9.]+x, budget (met|missed)", said)
    report = said.split(" done\n", 1)[1]
    assert "│ baseline " in report and "│ pruned " in report and "speed-up" in report
    # The job list names the checkpoint with the model, as the metrics label it.
    assert f"resnet20@{baseline}" in ok(prunerd("jobs", *daemon["connect"])).stdout


@pytest.mark.parametrize("command", [["submit", "prune", "resnet20"], ["prune", "resnet20"],
                                     ["quickstart"]])  # fmt: skip
def test_budget_s_is_refused_with_the_names_to_use(command: list[str]) -> None:
    """`--budget-s` was the latency budget of `submit prune` and the timing budget of
    `prunerd prune`, beside a latency budget in `--budget-ms`: refused before any work or
    connection wherever a latency budget is taken, naming both."""
    moved = prunerd(*command, "--budget-s", "0.002")
    assert moved.returncode == 2
    assert (
        "argument --budget-s: ambiguous: the latency budget is --budget-ms MS (or --budget "
        "FRACTION), the timing budget per measurement --timing-budget-s S"
    ) in moved.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["train", "resnet20", "--lr", "inf"], "--lr: must be finite and > 0, got inf"),
        (
            ["train", "resnet20", *TRAIN, "--weight-decay", "inf"],
            "weight_decay must be finite and >= 0",
        ),
        (["train", "resnet20", *TRAIN, "--warmup-epochs", "inf"], "warmup_epochs must be finite"),
        (["prune", "resnet20", "--budget-ms", "inf"], "--budget-ms: must be finite and > 0"),
        (["prune", "resnet20", "--budget", "0.5", "--lr", "nan"], "--lr: must be finite and > 0"),
        (["prune", "resnet20", "--timing-budget-s", "inf"], "must be finite and > 0, got inf"),
        (["profile", "resnet20", "--budget-s", "nan"], "must be finite and > 0, got nan"),
        (["profile", "resnet20", "--threads", "0"], "--threads: must be > 0, got 0"),
        (["profile", "resnet20", "--batch-size", "0"], "--batch-size: must be > 0, got 0"),
        (["quickstart", "--epochs", "-1"], "--epochs: must be > 0, got -1"),
        (["quickstart", "--prune-epochs", "-2"], "--prune-epochs: must be >= 0, got -2"),
        (["table", "clear", "--older-than-days", "nan"], "must be finite and >= 0, got nan"),
        (["table", "clear", "--older-than-days", "-5"], "must be finite and >= 0, got -5"),
        (["watch", "abc", "--timeout-job", "-1"], "--timeout-job: must be finite and > 0"),
        (["jobs", "--limit", "0"], "--limit: must be > 0, got 0"),
        (["submit", "selftest", "--seconds", "nan"], "--seconds: must be finite and >= 0, got nan"),
        (["submit", "prune", "resnet20", "--option", "lr=1e999"], "option lr must be a finite"),
    ],
)
def test_numbers_that_mean_nothing_are_refused_before_the_work(
    args: list[str], said: str, tmp_path: Path
) -> None:
    """NaN, infinity, zero or a negative count where none can work: exit 2 naming the flag
    and the value, before any training, timing or connection (`--lr inf` once trained a
    model to NaN weights and saved it; `--budget-ms inf` pruned nothing and reported it)."""
    done = prunerd(*args, cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and said in done.stderr, (args, done.stderr)
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_submit_prune_with_an_option_of_the_wrong_type(daemon: dict, baseline: Path) -> None:
    """`--option iterative=no` reaches the daemon as the string "no": refused when submitted,
    naming the option and the value, and the daemon serves the next job."""
    failed = prunerd("submit", "prune", "resnet20", "--checkpoint", str(baseline),
                     "--budget", "0.9", "--data", "digits", "--option", "iterative=no",
                     "--wait", *daemon["connect"], timeout=120)  # fmt: skip
    assert failed.returncode == 1, failed
    said = failed.stdout + failed.stderr
    assert "bad_request: params.options.iterative must be true or false, got 'no'" in said
    assert daemon["proc"].poll() is None
    ok(prunerd("submit", "selftest", "--seconds", "0.2", "--steps", "2", "--wait",
               *daemon["connect"]))  # fmt: skip


def test_client_flags_are_checked_before_any_connection(tmp_path: Path) -> None:
    """An endpoint, a timeout or a key name that cannot work: exit 2 at once, naming it
    (a URL scheme once came back as a ZMQError traceback, a bad port as a 10 s wait)."""
    for flags, said in [
        (["--connect", "http://localhost:5750"], "expected tcp://HOST:PORT"),
        (["--connect", "tcp://127.0.0.1:99999"], "a port in 1..65535"),
        (["--events", "127.0.0.1:5751"], "argument --events: expected tcp://HOST:PORT"),
        (["--timeout", "0"], "argument --timeout: must be finite and > 0, got 0.0"),
        (["--timeout", "nan"], "argument --timeout: must be finite and > 0, got nan"),
        (["--timeout", "inf"], "argument --timeout: must be finite and > 0, got inf"),
    ]:
        done = prunerd("jobs", *flags)
        assert done.returncode == 2 and said in done.stderr, (flags, done.stderr)
        assert "Traceback" not in done.stderr
    keys_dir = tmp_path / "keys"
    outside = prunerd("keys", "../evil", "--dir", str(keys_dir))
    assert outside.returncode == 2 and "no path: use --dir" in outside.stderr
    assert not (tmp_path / "evil.key").exists() and not keys_dir.exists()


def test_keys(work: Path) -> None:
    ok(prunerd("keys", "bob", "--dir", str(work / "keys")))
    assert (work / "keys" / "bob.key_secret").stat().st_mode & 0o777 == 0o600
    assert prunerd("keys", "bob", "--dir", str(work / "keys")).returncode == 2  # exists
    ok(prunerd("keys", "bob", "--dir", str(work / "keys"), "--force"))


def test_serve_stops_cleanly(daemon: dict) -> None:
    """Last of the daemon tests: SIGTERM ends `prunerd serve` with status 0."""
    daemon["proc"].send_signal(signal.SIGTERM)
    assert daemon["proc"].wait(60) == 0
    down = prunerd("jobs", "--timeout", "0.5", "--json", *daemon["connect"])
    assert down.returncode == 2 and json.loads(down.stderr)["error"]["code"] == "unavailable"


def test_training_that_diverges_stops_and_saves_nothing(tmp_path: Path) -> None:
    """At --lr 1e6 the loss is NaN within the first epoch: once trained on and saved as a
    checkpoint of NaN weights (test accuracy 0.08); now exit 2 naming the step and the lr,
    and no checkpoint."""
    done = prunerd("train", "resnet20", "--data", "digits", "--epochs", "1", "--lr", "1e6",
                   "--threads", "1", "--out", str(tmp_path / "m.pt"), timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "prunerd train: error: the training loss became nan by step" in done.stderr
    assert "lower the learning rate (--lr)" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize(
    ("toml", "said"),
    [
        ('max_workers = "3"', "setting max_workers must be an integer, got '3'"),
        ("[limits]\nmax_epochs = 1.5", "setting max_epochs must be an integer, got 1.5"),
        ('allow_imports = "torchvision"', "setting allow_imports must be a list of strings"),
        ("[budgets]\nresnet = true", "must be a table of deployment name = seconds"),
        ("worker_grace_s = nan", "worker_grace_s must be finite and >= 0, got nan"),
        ("ingest_slice_ms = inf", "ingest_slice_ms must be finite and > 0, got inf"),
        ("ingest_hwm = 0", "ingest_hwm must be finite and > 0, got 0"),
        ("[budgets]\nresnet = -1", "budget for deployment 'resnet' must be finite and > 0"),
        ("max_workers = ", "Invalid value (at line 1"),
        ("nope = 1", "unknown settings ['nope']"),
        ('worker_start = "fork"', "worker_start must be one of forkserver, spawn, got 'fork'"),
    ],
)
def test_serve_refuses_a_config_file_it_cannot_honour(toml: str, said: str, tmp_path: Path) -> None:
    """A settings file with a wrong type, a value no daemon can run with (a NaN grace period
    never escalates a stuck worker to SIGKILL) or bad TOML: exit 2 naming the file and the
    setting, before anything binds or is written (`"3"` once died in a TypeError traceback)."""
    config = tmp_path / "prunerd.toml"
    config.write_text(toml + "\n")
    state = tmp_path / "state"
    done = prunerd("serve", "--config", str(config), "--state-dir", str(state),
                   "--rpc-port", "0", "--events-port", "0", "--ingest-port", "0",
                   "--metrics-port", "0", timeout=30)  # fmt: skip
    assert done.returncode == 2, done
    assert said in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert f"config file {str(config)!r}: " in done.stderr
    assert not state.exists()


def _unusable_databases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Files in the place of a database, each with what the error must say about it."""
    damaged = tmp_path / "damaged.sqlite"
    damaged.write_bytes(b"\x8f\x01" * 2000)
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE users (name TEXT)")
    folder = tmp_path / "folder.sqlite"
    folder.mkdir()
    return {
        "damaged": (damaged, "not an SQLite database (damaged, or another kind of file)"),
        "foreign": (foreign, "an SQLite database of something else (tables: users)"),
        "folder": (folder, "is a directory, not a file"),
    }


@pytest.mark.parametrize("case", ["damaged", "foreign", "folder"])
def test_a_latency_table_that_is_not_one_is_named_and_left_alone(case: str, tmp_path: Path) -> None:
    """A damaged file, another program's database or a directory given as --table was an
    sqlite3 traceback (`file is not a database`); now exit 2 naming the file, and the file is
    neither changed nor replaced (it may be someone's only copy)."""
    path, said = _unusable_databases(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    data = path.read_bytes() if path.is_file() else None
    done = prunerd("table", "list", "--table", str(path), timeout=30)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"prunerd table: error: latency table {str(path)!r}" in done.stderr
    assert said in done.stderr and "--table" in done.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert data is None or path.read_bytes() == data


def test_looking_at_a_table_that_does_not_exist_creates_nothing(tmp_path: Path) -> None:
    """`table list` and `table clear` of a path never written once made an empty table and
    its folders there; now they say it does not exist and leave the disk as it was."""
    path = tmp_path / "not" / "yet" / "latency.sqlite"
    listed = prunerd("table", "list", "--table", str(path), timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert f"latency table {path}: does not exist yet" in listed.stdout
    as_json = prunerd("table", "--json", "--table", str(path), timeout=30)
    assert json.loads(as_json.stdout) == {"path": str(path), "exists": False, "devices": []}
    cleared = prunerd("table", "clear", "--all", "--table", str(path), timeout=30)
    assert cleared.returncode == 0 and "removed 0 measurements" in cleared.stdout
    named = prunerd("table", "clear", "--device", "abc", "--table", str(path), timeout=30)
    assert named.returncode == 2 and "does not exist" in named.stderr, named.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["damaged", "foreign", "folder"])
def test_serve_names_a_job_store_it_cannot_use(case: str, tmp_path: Path) -> None:
    """The same three in the place of the daemon's jobs.sqlite: exit 2 naming the store,
    nothing bound, the file untouched."""
    path, said = _unusable_databases(tmp_path)[case]
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    path.rename(state / "jobs.sqlite")
    done = prunerd("serve", "--state-dir", str(state), "--rpc-port", "0", "--events-port", "0",
                   "--ingest-port", "0", "--metrics-port", "0", timeout=30)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"job store {str(state / 'jobs.sqlite')!r}" in done.stderr
    assert said in done.stderr and "--state-dir" in done.stderr

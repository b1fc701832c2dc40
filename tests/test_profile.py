"""Profiles: what they contain, JSON round-trip, the latency table's reuse and invalidation, the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from profiler import (
    BlockProfile,
    LatencyTable,
    Measurement,
    ModelSpec,
    TimingOptions,
    device_info,
    load_model,
    measure,
    profile_model,
)
from service.cli import main

from .cli_helpers import QUICK_PROFILE

QUICK = TimingOptions(budget_s=0.2, min_rounds=3, max_rounds=20)
SPEC = ModelSpec("resnet20", input_size=(8, 8))


@pytest.fixture(scope="module")
def profile() -> BlockProfile:
    return profile_model(
        load_model(SPEC), SPEC, batch_size=2, device="cpu", options=QUICK, threads=1
    )


def test_profile_contents(profile: BlockProfile) -> None:
    assert (
        profile.model == "resnet20"
        and profile.batch_size == 2
        and profile.input_shape == (2, 3, 8, 8)
    )
    assert (
        profile.device.kind == "cpu" and profile.device.threads == 1 and profile.device.fingerprint
    )
    assert len(profile.blocks) == 10
    for b in profile.blocks:
        assert b.latency.timer == "perf_counter" and b.latency.runs >= 3
        assert 0 < b.latency.p10_s <= b.latency_s <= b.latency.p90_s
        if b.block.replacement == "identity":
            assert b.replacement_latency_s == 0.0
        elif b.block.replacement == "shortcut":
            assert 0 < b.replacement_latency_s < b.latency_s
        else:
            assert b.replacement_latency is None and not b.block.removable
    assert [s.name for s in profile.rest] == ["head"]
    assert profile.end_to_end_s > 0 and profile.rest_s > 0
    expected = (profile.blocks_s + profile.rest_s - profile.end_to_end_s) / profile.end_to_end_s
    assert profile.additivity_error == pytest.approx(expected)


def test_json_round_trip(profile: BlockProfile, tmp_path: Path) -> None:
    text = profile.to_json()
    again = BlockProfile.from_json(text)
    assert again == profile
    assert again.to_json() == text
    d = json.loads(text)
    for key in (
        "model",
        "batch_size",
        "device",
        "blocks",
        "rest_s",
        "end_to_end_s",
        "additivity_error",
    ):
        assert key in d
    for key in (
        "name",
        "kind",
        "latency_s",
        "p10_s",
        "p90_s",
        "flops",
        "params",
        "removable",
        "replacement",
        "replacement_latency_s",
    ):
        assert key in d["blocks"][0]
    with pytest.raises(ValueError, match="schema_version 99"):
        BlockProfile.from_dict({**d, "schema_version": 99})


def test_measurement_statistics_match_numpy() -> None:
    samples = tuple(float(v) for v in np.random.default_rng(0).lognormal(-7, 0.3, size=101))
    m = Measurement(samples)
    assert m.median_s == pytest.approx(np.median(samples))
    assert m.p10_s == pytest.approx(np.percentile(samples, 10))
    assert m.p90_s == pytest.approx(np.percentile(samples, 90))
    assert m.iqr_s == pytest.approx(np.percentile(samples, 75) - np.percentile(samples, 25))
    assert Measurement.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    with pytest.raises(ValueError, match="timer must be one of"):
        Measurement((1.0,), timer="sundial")


def test_timer_measures_real_time() -> None:
    """A piece of work that sleeps 2 ms measures at least 2 ms, and not wildly more."""
    m = measure(
        [lambda: time.sleep(0.002)], "cpu", TimingOptions(budget_s=0.1, min_rounds=5, max_rounds=5)
    )[0]
    assert m.runs == 5 and m.number == 1
    assert 0.002 <= m.median_s < 0.02


def test_short_work_is_timed_in_blocks() -> None:
    m = measure([lambda: None], "cpu", QUICK)[0]
    assert m.number > 1 and m.median_s < 1e-5


def test_table_reuse_and_invalidation(tmp_path: Path) -> None:
    table = LatencyTable(tmp_path / "lut.sqlite")
    model = load_model(SPEC)
    first = profile_model(
        model, SPEC, device="cpu", options=QUICK, threads=1, table=table, store_failed=True
    )
    assert first.from_table == 0
    timed = len(table)
    # 10 blocks + 2 shortcut replacements + head + whole graph + eager model; identity costs nothing.
    assert timed == 15
    second = profile_model(
        model, SPEC, device="cpu", options=QUICK, threads=1, table=table, store_failed=True
    )
    assert second.from_table == timed
    assert [b.latency for b in second.blocks] == [b.latency for b in first.blocks]
    assert second.end_to_end == first.end_to_end
    # Asked to re-measure: everything is timed again and replaced.
    third = profile_model(
        model,
        SPEC,
        device="cpu",
        options=QUICK,
        threads=1,
        table=table,
        remeasure=True,
        store_failed=True,
    )
    assert third.from_table == 0 and third.end_to_end != first.end_to_end
    # A different thread count is a different device fingerprint: nothing reused.
    other = profile_model(
        model, SPEC, device="cpu", options=QUICK, threads=2, table=table, store_failed=True
    )
    assert other.from_table == 0 and other.device.fingerprint != first.device.fingerprint
    # Same blocks at another batch size are different pieces.
    batch = profile_model(
        model,
        SPEC,
        batch_size=2,
        device="cpu",
        options=QUICK,
        threads=1,
        table=table,
        store_failed=True,
    )
    assert batch.from_table == 0
    # Forgetting one device leaves the others.
    removed = table.invalidate(fingerprint=first.device.fingerprint)
    assert removed == 2 * timed
    assert (
        profile_model(
            model, SPEC, device="cpu", options=QUICK, threads=2, table=table, store_failed=True
        ).from_table
        == timed
    )
    assert {d.fingerprint for d in table.devices()} == {
        first.device.fingerprint,
        other.device.fingerprint,
    }
    table.close()


def test_table_shared_blocks_between_models(tmp_path: Path) -> None:
    """resnet56's stages hold the same unit shapes as resnet20's: its profile reuses them."""
    table = LatencyTable(tmp_path / "lut.sqlite")
    profile_model(
        load_model(SPEC),
        SPEC,
        device="cpu",
        options=QUICK,
        threads=1,
        table=table,
        store_failed=True,
    )
    spec56 = ModelSpec("resnet56", input_size=(8, 8))
    p56 = profile_model(
        load_model(spec56),
        spec56,
        device="cpu",
        options=QUICK,
        threads=1,
        table=table,
        store_failed=True,
    )
    # Stem, the first units of stages 2 and 3 (and their shortcuts), the repeated units, the head.
    assert p56.from_table >= 8


def test_cpu_fingerprint_and_no_gpu_is_fine() -> None:
    info = device_info("cpu", threads=1)
    assert info.kind == "cpu" and info.name and len(info.fingerprint) == 16
    assert device_info("cpu", threads=1).fingerprint == info.fingerprint
    assert device_info("cpu", threads=2).fingerprint != info.fingerprint


def test_profile_restores_thread_count() -> None:
    before = torch.get_num_threads()
    profile_model(load_model(SPEC), SPEC, device="cpu", options=QUICK, threads=1)
    assert torch.get_num_threads() == before


def test_bad_arguments_are_clear() -> None:
    model = load_model(SPEC)
    with pytest.raises(ValueError, match="--batch-size must be >= 1, got 0"):
        profile_model(model, SPEC, batch_size=0, device="cpu")
    with pytest.raises(ValueError, match="--device must be cpu or cuda"):
        profile_model(model, SPEC, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="use --device cpu"):
            profile_model(model, SPEC, device="cuda")


def test_cli_profile_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.json"
    argv = list(QUICK_PROFILE)
    # --store-failed: what is tested is the table's reuse, whatever the machine's load.
    argv += ["--table", str(tmp_path / "t.sqlite"), "--json", str(out), "--store-failed"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "layer3.2" in printed and "additivity error" in printed
    d = json.loads(out.read_text())
    assert d["model"] == "resnet20" and d["batch_size"] == 1 and d["device"]["kind"] == "cpu"
    assert len(d["blocks"]) == 10 and all(b["latency_s"] > 0 for b in d["blocks"])
    # Second run comes from the table.
    assert main([*argv, "--quiet"]) == 0
    assert json.loads(out.read_text())["from_table"] == 15


def test_cli_profile_from_checkpoint(tmp_path: Path) -> None:
    from profiler import save_checkpoint

    spec = ModelSpec("resnet20", in_channels=1, num_classes=4, input_size=(8, 8))
    ckpt = save_checkpoint(tmp_path / "m.pt", spec, load_model(spec))
    out = tmp_path / "p.json"
    argv = [
        "profile",
        "resnet20",
        "--checkpoint",
        str(ckpt),
        "--no-table",
        "--threads",
        "1",
        "--timing-budget-s",
        "0.2",
    ]
    assert main([*argv, "--quiet", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["blocks"][0]["block"]["input_shape"] == [1, 1, 8, 8]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["profile", "resnet21"], "not a built-in"),
        (
            ["profile", "resnet20", "--in-channels", "1", "--checkpoint", "/nonexistent.pt"],
            "does not exist",
        ),
        (["profile", "tests.models_for_tests:untraceable"], "'gate' (Gate)"),
    ],
)
def test_cli_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--no-table", "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_cli_bad_input_size(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["profile", "resnet20", "--input-size", "big"])
    assert "input size must be H,W" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
def test_cuda_events_profile() -> None:
    opts = TimingOptions(budget_s=0.5, min_rounds=5)
    p = profile_model(load_model(SPEC), SPEC, device="cuda", options=opts)
    assert p.device.kind == "cuda" and p.blocks[0].latency.timer == "cuda_events"
    graphed = profile_model(
        load_model(SPEC),
        SPEC,
        device="cuda",
        options=TimingOptions(budget_s=0.5, min_rounds=5, cuda_graph=True),
    )
    assert graphed.end_to_end_s > 0
    cold = profile_model(
        load_model(SPEC),
        SPEC,
        device="cuda",
        options=TimingOptions(budget_s=0.5, min_rounds=5, l2_flush=True),
    )
    assert all(b.latency.number == 1 for b in cold.blocks)


def test_fused_profile_finds_the_same_blocks() -> None:
    plain = profile_model(load_model(SPEC), SPEC, device="cpu", options=QUICK, threads=1)
    fused = profile_model(
        load_model(SPEC), SPEC, device="cpu", options=QUICK, threads=1, fused=True
    )
    assert fused.fused and not plain.fused
    assert [b.block.name for b in fused.blocks] == [b.block.name for b in plain.blocks]
    assert [b.block.replacement for b in fused.blocks] == [
        b.block.replacement for b in plain.blocks
    ]
    # Folding BN into the conv keeps the multiply-adds and drops the BN parameters.
    for f, p in zip(fused.blocks, plain.blocks):
        assert f.block.macs == p.block.macs and f.block.params < p.block.params
        assert f.block.signature != p.block.signature


def test_cli_table_list_and_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "t.sqlite"
    argv = [
        *QUICK_PROFILE,
        "--table",
        str(table),
        "--quiet",
        "--store-failed",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["table", "--table", str(table), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    (device,) = listing["devices"]
    assert device["measurements"] == 15 and device["threads"] == 1
    assert main(["table", "clear", "--table", str(table)]) == 2
    assert "needs --device" in capsys.readouterr().err
    # a clear's filter on a listing, and a fingerprint the table does not hold: said, not ignored
    assert main(["table", "list", "--table", str(table), "--device", "x"]) == 2
    assert "--device selects what `prunerd table clear` removes" in capsys.readouterr().err
    assert main(["table", "clear", "--table", str(table), "--device", "nope"]) == 2
    assert f"fingerprints there: {device['fingerprint']}" in capsys.readouterr().err
    assert main(["table", "clear", "--table", str(table), "--device", device["fingerprint"]]) == 0
    assert "removed 15" in capsys.readouterr().out


def test_table_from_an_older_layout_starts_afresh(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "lut.sqlite"
    with LatencyTable(path) as table:
        table.put("fp", "sig", Measurement((0.001,)))
        assert table.get("fp", "sig") is not None
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value='1' WHERE key='version'")
    with LatencyTable(path) as table:
        assert table.get("fp", "sig") is None and len(table) == 0

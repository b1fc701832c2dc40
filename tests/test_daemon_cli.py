"""The `prunerd` client commands and CurveZMQ, against a real daemon."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from service.client import Client, DaemonUnavailable
from service.commands import cancel, jobs, keys, serve, submit, watch

from .service_helpers import DaemonProcess


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run one of this package's commands in-process (the same parser `prunerd` builds)."""
    parser = argparse.ArgumentParser(prog="prunerd")
    sub = parser.add_subparsers(dest="command")
    for module in (serve, submit, jobs, watch, cancel, keys):
        module.register(sub)
    args = parser.parse_args(argv)
    status = args.func(args)
    out = capsys.readouterr()
    return status, out.out, out.err


def test_cli_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = DaemonProcess(tmp_path / "state").start()
    try:
        conn = ["--connect", d.info["rpc"], "--events", d.info["events"]]
        status, out, _ = run(
            ["submit", "selftest", "--seconds", "0.3", "--steps", "3", "--wait", *conn], capsys
        )
        assert status == 0 and "done" in out and "selftest 3/3" in out
        status, out, _ = run(
            # 0 s: as the daemon allows (the command line refused it as "must be > 0").
            ["submit", "selftest", "--seconds", "0", "--steps", "1", "--json", *conn],
            capsys,
        )
        job_id = json.loads(out)["id"]
        status, out, _ = run(["watch", job_id, "--json", *conn], capsys)
        lines = [json.loads(line) for line in out.splitlines()]
        assert status == 0 and lines[-1]["event"] == "done"
        status, out, _ = run(["jobs", "--json", *conn], capsys)
        assert status == 0 and len(json.loads(out)["jobs"]) == 2
        status, out, _ = run(["jobs", *conn], capsys)
        assert out.splitlines()[0].startswith("ID") and job_id in out
        status, out, err = run(["cancel", job_id, "--json", *conn], capsys)
        assert status == 1 and json.loads(err)["error"]["code"] == "conflict"
        status, out, err = run(["submit", "profile", "os:system", *conn], capsys)
        assert status == 1 and "not_allowed" in err
    finally:
        assert d.stop() == 0
    status, out, err = run(
        ["jobs", "--connect", d.info["rpc"], "--timeout", "0.5", "--json"], capsys
    )
    assert status == 2 and json.loads(err)["error"]["code"] == "unavailable"


def test_curve_allows_only_listed_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keydir, allowed = tmp_path / "keys", tmp_path / "authorized"
    for name in ("server", "alice", "mallory"):
        assert run(["keys", name, "--dir", str(keydir)], capsys)[0] == 0
    assert oct((keydir / "alice.key_secret").stat().st_mode & 0o777) == "0o600"
    allowed.mkdir()
    (allowed / "alice.key").write_bytes((keydir / "alice.key").read_bytes())
    d = DaemonProcess(
        tmp_path / "state",
        "--server-secret-key",
        str(keydir / "server.key_secret"),
        "--authorized-keys-dir",
        str(allowed),
    ).start()
    try:
        server = keydir / "server.key"
        with Client(
            d.info["rpc"], d.info["events"], 10, server, keydir / "alice.key_secret"
        ) as alice:
            assert alice.ping()["protocol"] == 1
            job = alice.submit("selftest", seconds=0.1, steps=1)
            assert alice.wait(job["id"], 60)["status"] == "done"
        with (
            Client(
                d.info["rpc"], d.info["events"], 1.0, server, keydir / "mallory.key_secret"
            ) as mallory,
            pytest.raises(DaemonUnavailable),
        ):
            mallory.ping()
        with (
            Client(d.info["rpc"], d.info["events"], 1.0) as plain,
            pytest.raises(DaemonUnavailable),
        ):
            plain.ping()
    finally:
        assert d.stop() == 0


def test_progress_lines_keep_each_phases_first_and_last() -> None:
    """A phase that ends short of its total (a profile served partly from the latency table
    stops at 35/400) still shows its last line, once the next event says it has ended; a
    burst inside one second shows its first line only, and nothing is shown twice."""
    from service.client import ProgressFilter
    from service.protocol import Event

    def progress(what: str, done: int, total: int) -> Event:
        return Event("j", "progress", 0.0, {"what": what, "done": done, "total": total})

    shown = ProgressFilter(interval_s=60.0)
    fed = [progress("timing", i, 400) for i in range(1, 36)]
    fed += [progress("measuring", 0, 1), Event("j", "failed", 0.0, {"error": None})]
    lines = [e for event in fed for e in shown.feed(event)]
    said = [(e.event, e.data.get("what"), e.data.get("done")) for e in lines]
    assert said == [
        ("progress", "timing", 1),
        ("progress", "timing", 35),
        ("progress", "measuring", 0),
        ("failed", None, None),
    ]

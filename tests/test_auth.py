"""Auth that fits a fleet, against a real daemon on 127.0.0.1: key classes, SIGHUP reload, bad and
missing key files, /metrics basic auth, the refusal of an open non-loopback bind, shipped configs."""

from __future__ import annotations

import base64
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tomllib
from zmq.auth import create_certificates, load_certificate

from service.client import Client, DaemonUnavailable, RequestError
from service.config import load_settings
from service.monitor import Monitor
from tests.cli_helpers import PRUNERD, run
from tests.service_helpers import DaemonProcess, wait_for

ROOT = Path(__file__).resolve().parent.parent


def make_keys(root: Path) -> Path:
    for d in ("operators", "monitors"):
        (root / d).mkdir(parents=True)
    for name in ("server", "alice", "bob", "mon"):
        create_certificates(root, name)
    shutil.copy(root / "alice.key", root / "operators")
    shutil.copy(root / "mon.key", root / "monitors")
    return root


def curve_args(keys: Path) -> list[str]:
    return [
        "--server-secret-key",
        str(keys / "server.key_secret"),
        "--authorized-keys-dir",
        str(keys / "operators"),
        "--monitor-keys-dir",
        str(keys / "monitors"),
    ]


def client(d: DaemonProcess, keys: Path, name: str, timeout_s: float = 10.0) -> Client:
    return Client(
        d.info["rpc"], d.info["events"], timeout_s, keys / "server.key", keys / f"{name}.key_secret"
    )


def samples_counted(d: DaemonProcess, deployment: str) -> float:
    text = urllib.request.urlopen(d.info["metrics"], timeout=30).read().decode()
    m = re.search(
        rf'^prunerd_inference_latency_seconds_count\{{deployment="{deployment}"\}} (\S+)$',
        text,
        re.M,
    )
    return float(m.group(1)) if m else 0.0


def reloaded(d: DaemonProcess, times: int) -> bool:
    """The daemon has reloaded its keys after its ``times``-th SIGHUP."""
    after = d.log().split("received SIGHUP")
    return len(after) > times and "authorised keys:" in after[times]


def test_key_classes_reload_and_bad_files(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    (keys / "operators" / "broken.key").write_text("not a certificate\n")
    d = DaemonProcess(tmp_path / "state", *curve_args(keys)).start()
    try:
        assert "skipping key file" in d.log() and "broken.key" in d.log()
        with client(d, keys, "alice") as alice:
            assert alice.ping()["protocol"] == 1  # the bad file locked nobody out
            # A monitor key may send samples...
            public, secret = load_certificate(keys / "mon.key_secret")
            m = Monitor(
                "edge",
                d.info["ingest"],
                batch_size=1,
                curve_server_key=load_certificate(keys / "server.key")[0],
                curve_keypair=(public, secret),
            )
            m.observe(0.001)
            wait_for(lambda: samples_counted(d, "edge"), 30)
            m.close()
            # ...and nothing else: the request socket refuses it at the handshake.
            with client(d, keys, "mon", 1.0) as mon, pytest.raises(DaemonUnavailable):
                mon.ping()
            with client(d, keys, "bob", 1.0) as bob, pytest.raises(DaemonUnavailable):
                bob.ping()
            # Keys change on SIGHUP, without a restart: bob in, alice out.
            shutil.copy(keys / "bob.key", keys / "operators")
            (keys / "operators" / "alice.key").unlink()
            d.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: reloaded(d, 1), 30)
            with client(d, keys, "bob") as bob:
                assert bob.ping()["protocol"] == 1
            # alice's open connection is refused from now on, with a reason.
            with pytest.raises(RequestError) as e:
                alice.ping()
            assert e.value.code == "not_allowed" and "no longer authorised" in e.value.message
        # A vanished directory on reload keeps the keys loaded before.
        shutil.rmtree(keys / "operators")
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "keeping the keys loaded before" in d.log(), 30)
        with client(d, keys, "bob") as bob:
            assert bob.ping()["protocol"] == 1
    finally:
        assert d.stop() == 0


def test_a_refused_key_gets_an_answer_not_a_hang(tmp_path: Path) -> None:
    # Once the daemon has refused the handshake there is no peer to queue a request for:
    # the client must give up within its timeout, whenever it asks. bob is unknown; mon is
    # a monitor's key, refused for requests (before the fix, mon's ping never returned).
    keys = make_keys(tmp_path / "keys")
    d = DaemonProcess(tmp_path / "state", *curve_args(keys)).start()
    try:
        for name, wait_s in (("bob", 0.0), ("mon", 0.0), ("bob", 0.5), ("mon", 0.5)):
            with client(d, keys, name, 1.0) as refused:
                time.sleep(wait_s)
                t0 = time.monotonic()
                with pytest.raises(DaemonUnavailable, match="accept this client's key"):
                    refused.ping()
                assert time.monotonic() - t0 < 5.0, (name, wait_s)
        # The installed script, as a user with a monitor's key runs it: a clear error, at once.
        refused = run(PRUNERD, "jobs", "--connect", d.info["rpc"], "--timeout", "1",
                      "--server-key", str(keys / "server.key"),
                      "--client-key", str(keys / "mon.key_secret"), timeout=30)  # fmt: skip
        assert refused.returncode != 0 and "accept this client's key" in refused.stderr
        with client(d, keys, "alice") as alice:
            assert alice.ping()["protocol"] == 1  # the daemon still serves its operators
    finally:
        assert d.stop() == 0


def serve_fails(tmp_path: Path, *args: str) -> str:
    """Run `serve` with ``args``; it must exit non-zero at once; returns its output."""
    cmd = [sys.executable, "-m", "service.commands.serve", "--state-dir", str(tmp_path / "s")]
    for name in ("rpc", "events", "ingest", "metrics"):
        cmd += [f"--{name}-port", "0"]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_missing_keys_dir_is_a_startup_error(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    out = serve_fails(
        tmp_path,
        "--server-secret-key",
        str(keys / "server.key_secret"),
        "--authorized-keys-dir",
        str(tmp_path / "nowhere"),
    )
    assert "nowhere" in out and "does not exist" in out


def test_open_non_loopback_bind_is_refused(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is never bound: the refusal comes before any socket.
    out = serve_fails(tmp_path, "--host", "192.0.2.1")
    assert "not loopback" in out and "--insecure" in out
    out = serve_fails(tmp_path, "--metrics-host", "192.0.2.1")
    assert "metrics_auth_file" in out
    assert load_settings(host="192.0.2.1", insecure=True).insecure


def test_metrics_basic_auth(tmp_path: Path) -> None:
    auth = tmp_path / "metrics.auth"
    auth.write_text("prom:s3cret\n")
    d = DaemonProcess(tmp_path / "state", "--metrics-auth-file", str(auth)).start()
    try:
        url = d.info["metrics"]
        assert url.startswith("http://127.0.0.1:")  # loopback by default
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url, timeout=30)
        assert e.value.code == 401
        wrong = urllib.request.Request(
            url, headers={"Authorization": "Basic " + base64.b64encode(b"prom:nope").decode()}
        )
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(wrong, timeout=30)
        right = urllib.request.Request(
            url, headers={"Authorization": "Basic " + base64.b64encode(b"prom:s3cret").decode()}
        )
        assert b"prunerd_ingest_samples_total" in urllib.request.urlopen(right, timeout=30).read()
    finally:
        d.stop()


def _configmap_toml() -> str:
    text = (ROOT / "docker" / "k8s" / "daemonset.yaml").read_text()
    block = text.split("prunerd.toml: |\n", 1)[1].split("\n---", 1)[0]
    return "\n".join(line[4:] for line in block.splitlines())


@pytest.mark.parametrize("source", ["docker/prunerd.toml", "docker/k8s/daemonset.yaml"])
def test_shipped_configs_have_curve_on(source: str, tmp_path: Path) -> None:
    text = _configmap_toml() if source.endswith(".yaml") else (ROOT / source).read_text()
    doc = tomllib.loads(text)
    assert doc["host"] == "0.0.0.0" and not doc.get("insecure", False)
    path = tmp_path / "prunerd.toml"
    path.write_text(text)
    settings = load_settings(path)  # validates: a non-loopback bind needs CURVE
    assert settings.curve and settings.monitor_keys_dir is not None
    assert settings.metrics_auth_file is not None

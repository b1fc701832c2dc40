"""Quotas and bounds against a real daemon on 127.0.0.1: queues, cancel rights, paging, request
bounds, ingest under a flood, deployment slots, and connection floods that must not fail a job."""

from __future__ import annotations

import json
import re
import resource
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from zmq.auth import create_certificates

from service import protocol as p
from service.client import Client, RequestError
from service.monitor import Monitor
from tests.service_helpers import DaemonProcess, wait_for

LONG_JOB = {"seconds": 300.0, "steps": 300}


def metric(d: DaemonProcess, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(d.info["metrics"], timeout=30).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}" + (rf"\{{{re.escape(want)}\}}" if want else "") + r" (\S+)$"
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else 0.0


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        kb = next(line for line in f if line.startswith("VmRSS:")).split()[1]
    return int(kb) * 1024


def wait_status(c: Client, job_id: str, *statuses: str) -> dict:
    return wait_for(lambda: (j := c.status(job_id)["job"])["status"] in statuses and j, 120)


# --------------------------------------------------------------------------- CURVE: two clients


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("keys")
    (root / "operators").mkdir()
    for name in ("server", "alice", "bob"):
        create_certificates(root, name)
    for name in ("alice", "bob"):
        (root / "operators" / f"{name}.key").write_bytes((root / f"{name}.key").read_bytes())
    return root


@pytest.fixture(scope="module")
def curve_daemon(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(
        tmp_path_factory.mktemp("curve") / "state",
        "--server-secret-key",
        str(keys / "server.key_secret"),
        "--authorized-keys-dir",
        str(keys / "operators"),
        "--max-queued-per-client",
        "2",
        "--max-queued-total",
        "3",
    ).start()
    yield d
    d.stop()


def as_client(d: DaemonProcess, keys: Path, name: str) -> Client:
    return Client(
        d.info["rpc"], d.info["events"], 30, keys / "server.key", keys / f"{name}.key_secret"
    )


def test_queue_quotas_per_client_and_total(curve_daemon: DaemonProcess, keys: Path) -> None:
    with (
        as_client(curve_daemon, keys, "alice") as alice,
        as_client(curve_daemon, keys, "bob") as bob,
    ):
        blocker = alice.submit("selftest", **LONG_JOB)  # runs: only queued jobs count
        wait_status(alice, blocker["id"], "running")
        a1, _a2 = (alice.submit("selftest", seconds=0.0, steps=1) for _ in range(2))
        with pytest.raises(RequestError) as e:
            alice.submit("selftest", seconds=0.0, steps=1)
        assert e.value.code == "quota" and "max_queued_per_client" in e.value.message
        bob.submit("selftest", seconds=0.0, steps=1)  # bob has a quota of his own
        with pytest.raises(RequestError) as e:
            bob.submit("selftest", seconds=0.0, steps=1)
        assert e.value.code == "quota" and "max_queued_total" in e.value.message
        # Cancel only your own jobs.
        with pytest.raises(RequestError) as e:
            bob.cancel(a1["id"])
        assert e.value.code == "not_allowed"
        assert alice.cancel(a1["id"])["job"]["status"] == "cancelled"
        assert bob.submit("selftest", seconds=0.0, steps=1)["status"] == "queued"
        # Every operator lists every job.
        assert {j["id"] for j in bob.jobs()} >= {blocker["id"], a1["id"]}
        alice.cancel(blocker["id"])
        wait_status(alice, blocker["id"], "cancelled")


# --------------------------------------------------------------------------- loopback daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("bounds")
    (root / "ckpt.pt").write_bytes(b"not read: bounds are checked first")
    d = DaemonProcess(
        root / "state",
        "--path-root",
        str(root),
        "--list-page-max",
        "3",
        "--max-reply-bytes",
        "1000",
        "--max-epochs",
        "10",
        "--max-threads",
        "2",
        "--max-timing-budget-s",
        "30",
        "--max-batch-size",
        "256",
    ).start()
    d.root = root  # type: ignore[attr-defined]
    yield d
    d.stop()


def test_every_loopback_address_is_one_client(daemon: DaemonProcess) -> None:
    """A process on the daemon's host may connect from any 127.x address: each was a client
    of its own, with quotas of its own, and could not cancel its own jobs from another."""
    rpc = daemon.info["rpc"]
    other = Client(rpc.replace("tcp://", "tcp://127.0.0.2:0;"), daemon.info["events"], 30)
    with daemon.client(30) as here, other:
        job = here.submit("selftest", **LONG_JOB)
        assert other.cancel(job["id"])["job"]["id"] == job["id"]  # was not_allowed
        wait_status(here, job["id"], "cancelled")


def test_list_is_paged(daemon: DaemonProcess) -> None:
    with daemon.client(30) as c:
        made = [c.submit("selftest", seconds=0.0, steps=1)["id"] for _ in range(7)]
        raw = c.request_raw(b'{"v":1,"op":"list","limit":10000}')
        # A tiny request gets a bounded reply: at most list_page_max jobs, about max_reply_bytes.
        assert raw["ok"] and 1 <= len(raw["data"]["jobs"]) <= 3 and raw["data"]["next"]
        assert len(json.dumps(raw)) < 1000 + 600
        seen, before = [], None
        while True:
            fields = {"limit": 10000} | ({"before": before} if before else {})
            page = c.request("list", **fields)
            seen += [j["id"] for j in page["jobs"]]
            before = page["next"]
            if before is None:
                break
        assert len(seen) == len(set(seen)) and set(made) <= set(seen)
        assert [i for i in seen if i in made] == made[::-1]  # newest first, none skipped


def test_request_bounds(daemon: DaemonProcess) -> None:
    ckpt = str(daemon.root / "ckpt.pt")  # type: ignore[attr-defined]

    def refused(kind: str, **params: object) -> RequestError:
        with daemon.client(30) as c, pytest.raises(RequestError) as e:
            c.submit(kind, **params)
        assert e.value.code == "too_large", e.value
        return e.value

    huge = {"model": "resnet20", "batch_size": 4096, "in_channels": 4096, "input_size": [4096] * 2}
    assert refused("profile", **huge).field == "params.batch_size"
    e = refused("profile", model="resnet20", in_channels=65)
    assert e.field == "params.in_channels" and "max_channels" in e.message
    e = refused("profile", model="resnet20", input_size=[2048, 8])
    assert "max_input_side" in e.message
    # Each under its own bound, together over the activation-memory estimate.
    e = refused("profile", model="resnet20", batch_size=256, in_channels=64, input_size=[1024] * 2)
    assert "max_activation_bytes" in e.message and "MiB" in e.message
    prune = {"model": "resnet20", "checkpoint": ckpt, "budget_ratio": 0.5}
    for option, value, setting in (
        ("epochs", 11, "max_epochs"),
        ("iterative_rounds", 1000, "max_epochs"),
        ("max_fits", 1000, "max_epochs"),
        ("threads", 3, "max_threads"),
        ("timing_budget_s", 31.0, "max_timing_budget_s"),
        ("batch_size", 257, "max_batch_size"),
        ("latency_batch_size", 3000, "max_batch_size"),  # timed at batch 3000: 109 s
        ("latency_batch_size", 2**62, "max_batch_size"),
    ):
        e = refused("prune", **prune, options={option: value})
        assert e.field == f"params.options.{option}" and setting in e.message
    e = refused("prune", **prune, options={"seed": 2**70})  # failed in the worker: overflow
    assert e.field == "params.options.seed" and str(2**32 - 1) in e.message


# --------------------------------------------------------------------------- ingest


def push_socket(endpoint: str, hwm: int = 100_000) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.PUSH)
    s.linger = 0
    s.sndhwm = hwm
    s.connect(endpoint)
    return s


@pytest.fixture(scope="module")
def ingest_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("ingest")
    config = root / "prunerd.toml"
    config.write_text(
        '[budgets]\n"real" = 0.01\n\n[limits]\n'
        "ingest_memory_bytes = 4194304\nmax_ingest_connections = 4\n"
        "max_deployments_per_client = 16\n"
    )
    d = DaemonProcess(root / "state", "--config", str(config)).start()
    yield d
    d.stop()


def test_ingest_flood_leaves_requests_served_and_memory_capped(
    ingest_daemon: DaemonProcess,
) -> None:
    d = ingest_daemon
    batch = p.encode_samples("flood", [0.00123456789] * 3000)  # ~45 KB, under max_sample_bytes
    assert 30_000 < len(batch) < 65536
    socks = [push_socket(d.info["ingest"]) for _ in range(3)]
    with d.client(30) as c:
        c.ping()
        before = rss_bytes(d.pid)
        sent = 0
        for _ in range(1500):  # ~70 MB in all
            for s in socks:
                s.send(batch)
                sent += 1
            if sent % 300 == 0:
                assert c.ping()["protocol"] == 1  # answered while the flood is read
        grown = rss_bytes(d.pid) - before
        wait_for(lambda: metric(d, "prunerd_ingest_samples_total") >= 3000 * sent, 300)
    for s in socks:
        s.close()
    # libzmq holds at most ingest_memory_bytes (4 MiB) of queued messages; the rest waits
    # in the senders. 64 MiB leaves room for the interpreter's own arenas.
    assert grown < 64 * 2**20, f"daemon RSS grew {grown / 2**20:.0f} MiB"


def test_oversized_sample_message_is_dropped(ingest_daemon: DaemonProcess) -> None:
    d = ingest_daemon
    s = push_socket(d.info["ingest"])
    s.send(p.encode_samples("big", [0.001] * 20_000))  # over max_sample_bytes: libzmq drops it
    s.close()
    t = push_socket(d.info["ingest"])
    t.send(p.encode_samples("small", [0.001]))
    wait_for(lambda: metric(d, "prunerd_inference_latency_seconds_count", deployment="small"), 30)
    t.close()
    assert metric(d, "prunerd_inference_latency_seconds_count", deployment="big") == 0


def test_junk_deployment_names_do_not_lock_out_real_ones(ingest_daemon: DaemonProcess) -> None:
    d = ingest_daemon
    s = push_socket(d.info["ingest"])
    s.send(p.encode_samples("early", [0.001]))
    wait_for(lambda: metric(d, "prunerd_inference_latency_seconds_count", deployment="early"), 30)
    for i in range(300):
        s.send(p.encode_samples(f"junk-{i}", [0.001]))
    s.send(p.encode_samples("real\n", [0.001]))  # fullmatch: a trailing newline is refused
    with pytest.raises(ValueError):
        Monitor("real\n", d.info["ingest"])  # and the monitor says so before sending
    for name in ("real", "early"):
        s.send(p.encode_samples(name, [0.002]))
    wait_for(lambda: metric(d, "prunerd_inference_latency_seconds_count", deployment="real"), 30)
    wait_for(
        lambda: metric(d, "prunerd_inference_latency_seconds_count", deployment="early") == 2, 30
    )
    s.close()
    junk = metric(d, "prunerd_ingest_rejected_total", reason="too_many_deployments_for_client")
    assert junk >= 300 - 16
    assert metric(d, "prunerd_ingest_rejected_total", reason="malformed") >= 1


def test_idle_deployments_are_evicted(tmp_path: Path) -> None:
    d = DaemonProcess(
        tmp_path / "state", "--max-deployments-per-client", "2", "--deployment-idle-s", "1"
    ).start()
    try:
        s = push_socket(d.info["ingest"])

        def count(name: str) -> float:
            return metric(d, "prunerd_inference_latency_seconds_count", deployment=name)

        for name in ("a", "b", "c"):
            s.send(p.encode_samples(name, [0.001]))
        wait_for(lambda: count("a") and count("b"), 30)
        wait_for(lambda: metric(d, "prunerd_ingest_rejected_total", reason=_CLIENT_CAP), 30)
        assert count("c") == 0
        time.sleep(1.5)  # a and b are now idle
        s.send(p.encode_samples("c", [0.001]))
        wait_for(lambda: count("c"), 30)
        assert metric(d, "prunerd_deployments_evicted_total") == 1
        s.close()
    finally:
        d.stop()


_CLIENT_CAP = "too_many_deployments_for_client"


# --------------------------------------------------------------------------- connections


def closed_by_peer(s: socket.socket) -> bool:
    """Whether the other end closed ``s`` (read what it sent, e.g. a ZMTP greeting, first)."""
    s.settimeout(0.001)
    try:
        while s.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:  # reset by peer
        pass
    return True


def count_closed(junk: list[socket.socket], closed: set[int]) -> int:
    closed.update(i for i, s in enumerate(junk) if i not in closed and closed_by_peer(s))
    return len(closed)


def _nofile_1024() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def test_idle_connections_cannot_fail_a_queued_job(tmp_path: Path) -> None:
    d = DaemonProcess(
        tmp_path / "state",
        "--max-connections",
        "100",
        "--max-ingest-connections",
        "16",
        preexec_fn=_nofile_1024,  # as a default systemd or container limit would
    ).start()
    junk: list[socket.socket] = []
    try:
        with d.client(60) as c:
            blocker = c.submit("selftest", **LONG_JOB)
            wait_status(c, blocker["id"], "running")
            queued = c.submit("selftest", seconds=0.0, steps=1)
            host, port = d.info["rpc"].removeprefix("tcp://").rsplit(":", 1)
            for _ in range(1100):
                junk.append(socket.create_connection((host, int(port)), timeout=30))
            # The daemon shuts down the connections past its cap as it sees them.
            closed: set[int] = set()
            wait_for(lambda: count_closed(junk, closed) >= 1100 - 100, 60)
            assert "rpc socket: 100 connections, its cap" in d.log()
            c.cancel(blocker["id"])  # the queued job now needs descriptors to start
            done = wait_status(c, queued["id"], "done", "failed", "cancelled", "interrupted")
            assert done["status"] == "done", done["error"]
            assert c.ping()["protocol"] == 1
        assert d.proc.poll() is None
    finally:
        for s in junk:
            s.close()
        d.stop()


def test_every_sequential_request_is_answered(daemon: DaemonProcess) -> None:
    # The reply queue per peer is small; it must never be so small that a client with one
    # request in flight loses replies (libzmq reports a peer's reads only every few messages).
    with daemon.client(30) as c:
        job = c.submit("selftest", seconds=0.0, steps=1)
        for _ in range(1000):
            c.ping()
            c.status(job["id"])

"""The daemon end to end, through the client: profile jobs, events, results, cancel, restart, bad input."""

from __future__ import annotations

import json
import math
import re
import signal
import time
import urllib.request
from pathlib import Path

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.client import Client, RequestError
from service.monitor import Monitor

from .service_helpers import PROFILE_PARAMS, DaemonProcess, pid_alive, wait_for


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("daemon") / "state"


@pytest.fixture(scope="module")
def daemon(state_dir: Path):
    d = DaemonProcess(state_dir).start()
    yield d
    d.kill()


@pytest.fixture(scope="module")
def client(daemon: DaemonProcess):
    with daemon.client() as c:
        yield c


@pytest.fixture(scope="module")
def profiled(client: Client) -> dict:
    """One resnet20 profile at 1x8x8, with every event it published."""
    sub = client.subscribe()
    time.sleep(
        0.3
    )  # let the subscription reach the daemon (PUB drops what no one has subscribed to yet)
    job = client.submit("profile", **PROFILE_PARAMS)
    events = list(client.watch(job["id"], timeout_s=180, sub=sub))
    sub.close()
    return {"job": job, "events": events, "result": client.result(job["id"])}


def test_ping(client: Client) -> None:
    info = client.ping()
    assert info["protocol"] == 1 and info["kinds"]["selftest"] == "available"
    assert info["kinds"]["profile"] == "available"


def test_profile_job_streams_events_and_result(profiled: dict) -> None:
    kinds = [e.event for e in profiled["events"]]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "done", kinds
    assert "progress" in kinds
    blocks = [e.data for e in profiled["events"] if e.event == "block"]
    result = profiled["result"]
    assert result["job"]["status"] == "done"
    profile = result["result"]
    assert profile["model"] == "resnet20" and profile["input_shape"] == [1, 1, 8, 8]
    names = [b["name"] for b in profile["blocks"]]
    assert names and {b["name"] for b in blocks} <= set(names)
    assert all(b["latency_s"] > 0 for b in blocks)


def test_list_status_and_metrics(client: Client, daemon: DaemonProcess, profiled: dict) -> None:
    job_id = profiled["job"]["id"]
    assert job_id in [j["id"] for j in client.jobs()]
    assert [j["id"] for j in client.jobs(status="done")][-1] == job_id
    text = urllib.request.urlopen(daemon.info["metrics"], timeout=10).read().decode()
    first = profiled["result"]["result"]["blocks"][0]
    assert (
        f'prunerd_block_latency_seconds{{batch="1",block="{first["name"]}",device="cpu",model="resnet20"}}'
        in text
    )
    assert 'prunerd_jobs_total{kind="profile",status="done"} 1.0' in text
    assert 'prunerd_model_latency_seconds{batch="1",device="cpu",model="resnet20"}' in text
    # The profile's own checks reach the metrics, passed or not, with the CPU others used.
    ok = profiled["result"]["result"]["quality"]["ok"]
    labels = '{batch="1",device="cpu",model="resnet20"}'
    assert f"prunerd_profile_checks_passed{labels} {float(ok)}" in text
    assert f"prunerd_profile_other_cpu_cores{labels}" in text
    check = profiled["result"]["result"]["check"]
    assert check["removed"] and f"prunerd_prediction_error_ratio{labels} {check['error']}" in text
    assert "prunerd_job_duration_seconds_count" in text
    assert "prunerd_gpu_" not in text  # no GPU here: absent, not zero


def test_errors(client: Client) -> None:
    with pytest.raises(RequestError) as e:
        client.submit("prune", model="resnet20", budget_s=0.001)
    assert (e.value.code, e.value.field) == ("bad_request", "params.checkpoint")
    with pytest.raises(RequestError) as e:
        client.submit("profile", model="os:system")
    assert (e.value.code, e.value.field) == ("not_allowed", "params.model")
    with pytest.raises(RequestError) as e:
        client.status("0123456789ab")
    assert e.value.code == "not_found"
    with pytest.raises(RequestError) as e:
        client.result("0123456789ab")
    assert e.value.code == "not_found"


def test_failed_and_cancelled_jobs(client: Client) -> None:
    failing = client.submit("selftest", seconds=0.2, steps=2, fail=True)
    assert client.wait(failing["id"], 60)["error"]["message"] == "selftest asked to fail"
    # A long job runs; a second one waits in the queue behind it (max_workers=1).
    running = client.submit("selftest", seconds=120, steps=1000)
    queued = client.submit("selftest", seconds=0.1, steps=1)
    wait_for(lambda: client.status(running["id"])["job"]["status"] == "running")
    assert client.cancel(queued["id"])["job"]["status"] == "cancelled"
    pid = client.status(running["id"])["worker_pid"]
    assert client.cancel(running["id"])["cancelling"]
    job = client.wait(running["id"], 30)
    assert job["status"] == "cancelled"
    wait_for(lambda: not pid_alive(pid), 10)
    with pytest.raises(RequestError) as e:
        client.cancel(running["id"])
    assert e.value.code == "conflict"


def test_killed_worker_fails_only_its_job(client: Client) -> None:
    job = client.submit("profile", **PROFILE_PARAMS, remeasure=True)
    pid = wait_for(lambda: client.status(job["id"])["worker_pid"])
    signal_sent = time.monotonic()
    import os

    os.kill(pid, signal.SIGKILL)
    final = client.wait(job["id"], 60)
    assert final["status"] == "failed"
    assert "SIGKILL" in final["error"]["message"], final["error"]
    assert time.monotonic() - signal_sent < 10
    # The daemon carries on: the next job runs normally.
    ok = client.submit("selftest", seconds=0.1, steps=2)
    assert client.wait(ok["id"], 60)["status"] == "done"


def test_deployment_samples(client: Client, daemon: DaemonProcess) -> None:
    m = Monitor("resnet20-deployed", daemon.info["ingest"], budget_s=0.002)
    for i in range(5000):
        m.observe(0.001 if i % 5 else 0.003)
    m.close()

    def scraped() -> str | None:
        text = urllib.request.urlopen(daemon.info["metrics"], timeout=10).read().decode()
        return (
            text
            if 'prunerd_inference_latency_seconds_count{deployment="resnet20-deployed"} 5000.0'
            in text
            else None
        )

    text = wait_for(scraped, 10)
    assert 'prunerd_budget_violations_total{deployment="resnet20-deployed"} 1000.0' in text
    assert 'prunerd_latency_budget_seconds{deployment="resnet20-deployed"} 0.002' in text
    assert (
        'prunerd_inference_latency_seconds_bucket{deployment="resnet20-deployed",le="5e-05"} 0.0'
        in text
    )
    assert (
        'prunerd_inference_latency_seconds_bucket{deployment="resnet20-deployed",le="0.001"} 4000.0'
        in text
    )


def test_latencies_no_daemon_accepts_are_left_out_not_their_batch(
    daemon: DaemonProcess,
) -> None:
    """A NaN or a negative latency (a wall-clock difference across a clock step) once made
    the daemon refuse the whole batch it went in, 1000 good samples with it: the monitor
    leaves such values out, counts them and warns once; every good sample arrives."""
    m = Monitor("clock-steps", daemon.info["ingest"], batch_size=1000)
    with pytest.warns(RuntimeWarning, match=r"latency nan s left out") as warned:
        for i in range(3000):
            m.observe(0.001)
            if i % 100 == 0:
                m.observe((math.nan, -0.002, 7200.0)[i % 3])
    m.close()
    assert len(warned) == 1 and m.invalid == 30 and m.sent == 3000

    def scraped() -> str | None:
        text = urllib.request.urlopen(daemon.info["metrics"], timeout=10).read().decode()
        done = 'prunerd_inference_latency_seconds_count{deployment="clock-steps"} 3000.0'
        return text if done in text else None

    assert wait_for(scraped, 10)


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ({"budget_s": math.nan}, "budget_s must be seconds in [1e-9, 3600], got nan"),
        ({"budget_s": -1.0}, "budget_s must be seconds"),
        ({"batch_size": 0}, "batch_size must be in 1..65536, got 0"),
        ({"flush_interval_s": math.inf}, "flush_interval_s must be finite and > 0, got inf"),
        ({"hwm": 0}, "hwm must be >= 1 batch, got 0"),
    ],
)
def test_a_monitor_no_batch_of_which_could_arrive_is_refused(setting: dict, said: str) -> None:
    """A budget the daemon refuses would have cost every batch; a zero high-water mark is
    libzmq's "no limit" (an absent daemon would cost unbounded memory): refused at once."""
    with pytest.raises(ValueError, match=re.escape(said)):
        Monitor("dep", "tcp://127.0.0.1:9", **setting)


frames = st.lists(st.binary(max_size=200), min_size=0, max_size=3) | st.builds(
    lambda d: [json.dumps(d).encode()],
    st.dictionaries(
        st.sampled_from(["v", "op", "kind", "params", "job_id", "req_id", "limit", "x"]),
        st.none() | st.integers() | st.text(max_size=12) | st.lists(st.integers(), max_size=3),
        max_size=5,
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames)
def test_fuzz_over_the_socket(
    daemon: DaemonProcess, fuzz_socket: zmq.Socket, message: list[bytes]
) -> None:
    if not message:
        message = [b""]
    fuzz_socket.send_multipart(message)
    assert fuzz_socket.poll(10_000), "no reply to a malformed request"
    reply = json.loads(fuzz_socket.recv_multipart()[-1])
    assert reply["v"] == 1 and "ok" in reply
    if not reply["ok"]:
        assert reply["error"]["code"] and reply["error"]["message"]


@pytest.fixture(scope="module")
def fuzz_socket(daemon: DaemonProcess):
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.linger = 0
    s.connect(daemon.info["rpc"])
    yield s
    s.close()


def test_daemon_survives_bad_input(client: Client, daemon: DaemonProcess) -> None:
    # Oversized (above the request limit but under ZMQ_MAXMSGSIZE): an error reply, not silence.
    big = client.request_raw(b'{"v": 1, "op": "ping", "pad": "' + b"x" * 100_000 + b'"}')
    assert big["error"]["code"] == "too_large"
    # Above ZMQ_MAXMSGSIZE libzmq drops the connection instead; the daemon must not notice.
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.linger = 0
    s.connect(daemon.info["rpc"])
    s.send(b"x" * (2 * 1024 * 1024))
    time.sleep(0.5)
    s.close()
    assert client.ping()["protocol"] == 1
    assert daemon.proc.poll() is None


def test_restart_keeps_everything(daemon: DaemonProcess, state_dir: Path, profiled: dict) -> None:
    with daemon.client() as c:
        before = {j["id"]: j["status"] for j in c.jobs(limit=1000)}
    assert daemon.stop() == 0
    assert not (state_dir / "daemon.json").exists()
    again = DaemonProcess(state_dir).start()
    try:
        with again.client() as c:
            after = {j["id"]: j["status"] for j in c.jobs(limit=1000)}
            assert after == before
            stored = c.result(profiled["job"]["id"])["result"]
            assert stored == profiled["result"]["result"]
        text = urllib.request.urlopen(again.info["metrics"], timeout=10).read().decode()
        assert 'prunerd_block_latency_seconds{batch="1",block="' in text
    finally:
        assert again.stop() == 0

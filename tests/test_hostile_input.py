"""No message ends the daemon, and a fatal error still stops its workers and frees the state dir.

The attacks: numbers that overflow (``1e308`` summed, 400-digit integers) in deployment
samples and in requests, hypothesis-generated frames with hostile numbers on the ingest
and request sockets, and model names that walk attributes out of an allowed module.
Everything runs against a real ``prunerd serve`` on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiler import ModelSpec, build_model, save_checkpoint
from pruner import PrunePlan, RemovedBlock, apply_plan
from service import protocol as p
from service.client import Client

from .service_helpers import DaemonProcess, pid_alive, wait_for

HUGE = 10**400
TRACED_MODEL = "tests.import_trace:model"  # importing it leaves $PRUNERD_IMPORT_TRACE
POLICY = p.ModelPolicy(builtins=frozenset({"resnet20"}), allow_imports=("profiler.zoo",))
MAX = 64 * 1024

# Numbers a hostile client sends: huge and negative integers, floats at and past the
# edges of the double range; NaN and Infinity are not JSON and are sent as literals below.
hostile_numbers = (
    st.integers(min_value=-(10**400), max_value=10**400)
    | st.sampled_from([HUGE, -HUGE, 2**63, 2**1024, 1e308, -1e308, 5e-324, 0, -1])
    | st.floats(allow_nan=False, allow_infinity=False)
)


def sample_doc(s: list, b: object = None, x: object = 0) -> bytes:
    return json.dumps({"v": 1, "d": "attack", "s": s, "b": b, "x": x}).encode()


INGEST_ATTACKS = [
    sample_doc([1e308, 1e308]),  # math.fsum overflow
    sample_doc([HUGE]),  # OverflowError in isfinite / float()
    sample_doc([0.001], b=HUGE),
    sample_doc([0.001], x=HUGE),
    sample_doc([0.001] * 10, b=1e308),
    b'{"v": 1, "d": "attack", "s": [NaN, Infinity]}',
    b'{"v": true, "d": "attack", "s": [0.001]}',
    b'{"v": 1, "d": "attack\\n", "s": [0.001]}',
    b'{"v": 1, "d": "attack", "s": [0.001], "extra": ' + b"[" * 5000 + b"]" * 5000 + b"}",
]


# --------------------------------------------------------------------------- the decoders


@settings(max_examples=1500, deadline=None)
@given(
    st.lists(hostile_numbers, max_size=5),
    st.none() | hostile_numbers,
    hostile_numbers,
)
def test_sample_decoder_rejects_what_it_cannot_sum(s: list, b: object, x: object) -> None:
    try:
        batch = p.decode_samples(sample_doc(s, b, x), MAX)
    except p.ProtocolError as e:
        assert e.code == "bad_request"
        return
    assert all(0 <= v <= p.MAX_SAMPLE_S for v in batch.samples)
    # What the metrics do with an accepted batch must never overflow.
    assert float(sum(batch.samples)) < float("inf")


REQUEST_NUMBER_FIELDS = [
    ("profile", "batch_size"),
    ("profile", "in_channels"),
    ("profile", "num_classes"),
    ("prune", "budget_s"),
    ("prune", "budget_ratio"),
    ("selftest", "seconds"),
    ("selftest", "steps"),
]


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(REQUEST_NUMBER_FIELDS), hostile_numbers, hostile_numbers)
def test_request_decoder_answers_every_number(
    where: tuple[str, str], value: object, other: object
) -> None:
    kind, field = where
    params: dict = {"selftest": {}, "profile": {"model": "resnet20"}}.get(kind, {})
    if kind == "prune":
        budget = {} if field == "budget_ratio" else {"budget_s": 0.01}
        params = {"model": "resnet20", "checkpoint": "x.pt", **budget}
    params = {**params, field: value}
    docs = [
        {"v": 1, "op": "submit", "kind": kind, "params": params},
        {"v": 1, "op": "list", "limit": value},
        {"v": other, "op": "ping"},
        {"v": 1, "op": "submit", "kind": "profile", "params": {"model": "resnet20", "input_size": [value, other]}},
    ]  # fmt: skip
    for doc in docs:
        try:
            p.decode_request(json.dumps(doc).encode(), POLICY, MAX)
        except p.ProtocolError as e:
            assert e.code in {"bad_request", "bad_version", "not_allowed", "not_found"}, e
            assert len(e.message) < 500  # a 400-digit number is not echoed back


def test_overflowing_numbers_are_bad_requests() -> None:
    for doc in (
        {"v": 1, "op": "submit", "kind": "selftest", "params": {"seconds": HUGE}},
        {"v": 1, "op": "submit", "kind": "profile", "params": {"model": "resnet20", "batch_size": HUGE}},
        {"v": 1, "op": "list", "limit": HUGE},
    ):  # fmt: skip
        with pytest.raises(p.ProtocolError) as e:
            p.decode_request(json.dumps(doc).encode(), POLICY, MAX)
        assert e.value.code == "bad_request"
    for attack in INGEST_ATTACKS:
        with pytest.raises(p.ProtocolError):
            p.decode_samples(attack, MAX)


# --------------------------------------------------------------------------- a live daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    d = DaemonProcess(
        tmp_path_factory.mktemp("hostile") / "state", "--allow-import", "profiler.zoo"
    ).start()
    yield d
    d.kill()


@pytest.fixture(scope="module")
def client(daemon: DaemonProcess):
    with daemon.client() as c:
        yield c


@pytest.fixture(scope="module")
def push(daemon: DaemonProcess):
    s = zmq.Context.instance().socket(zmq.PUSH)
    s.linger = 0
    s.connect(daemon.info["ingest"])
    yield s
    s.close()


def metric(daemon: DaemonProcess, prefix: str) -> float:
    text = urllib.request.urlopen(daemon.info["metrics"], timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def test_ingest_attacks_leave_the_daemon_serving(
    daemon: DaemonProcess, client: Client, push: zmq.Socket
) -> None:
    for attack in INGEST_ATTACKS:
        push.send(attack)
    push.send(p.encode_samples("after-attack", [0.001, 0.002]))
    wait_for(lambda: metric(daemon, "prunerd_ingest_samples_total") >= 2, timeout_s=20)
    assert client.ping()["protocol"] == 1
    assert metric(daemon, 'prunerd_ingest_rejected_total{reason="malformed"}') >= len(
        INGEST_ATTACKS
    )
    assert daemon.proc.poll() is None


def test_overflow_over_the_socket_answers_bad_request(client: Client) -> None:
    for raw in (
        b'{"v": 1, "op": "submit", "kind": "selftest", "params": {"seconds": ' + str(HUGE).encode() + b"}}",
        b'{"v": 1, "op": "submit", "kind": "profile", "params": {"model": "resnet20", "batch_size": ' + str(HUGE).encode() + b"}}",
        b'{"v": 1, "op": "list", "limit": ' + str(HUGE).encode() + b"}",
    ):  # fmt: skip
        reply = client.request_raw(raw)
        assert reply["ok"] is False and reply["error"]["code"] == "bad_request", reply


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(hostile_numbers, max_size=4), st.none() | hostile_numbers, hostile_numbers)
def test_fuzzed_ingest_never_ends_the_daemon(
    daemon: DaemonProcess, push: zmq.Socket, s: list, b: object, x: object
) -> None:
    push.send(sample_doc(s, b, x))
    assert daemon.proc.poll() is None


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(REQUEST_NUMBER_FIELDS), hostile_numbers)
def test_fuzzed_requests_get_answers_not_internal_errors(
    client: Client, where: tuple[str, str], value: object
) -> None:
    kind, field = where
    params = {"model": "resnet20"} if kind == "profile" else {}
    if kind == "prune":
        params = {"model": "resnet20", "checkpoint": "missing.pt"}
    reply = client.request_raw(
        json.dumps(
            {"v": 1, "op": "submit", "kind": kind, "params": {**params, field: value}}
        ).encode()
    )
    if not reply["ok"]:
        assert reply["error"]["code"] != "internal", reply
    else:  # an in-range selftest or profile was queued: take it off the queue again
        client.cancel(reply["data"]["job"]["id"])


def test_attribute_walks_out_of_an_allowed_module_are_refused(client: Client) -> None:
    for name in ("profiler.zoo:torch.os.getpid", "profiler.zoo:torch.os.abort", "profiler.zoo:_x"):
        reply = client.request_raw(
            json.dumps(
                {"v": 1, "op": "submit", "kind": "profile", "params": {"model": name}}
            ).encode()
        )
        assert reply["error"]["code"] == "not_allowed", (name, reply)
        assert reply["error"]["field"] == "params.model"
    params = {"model": "resnet20", "budget_s": 1, "dataset": "profiler.zoo:torch.os.getpid"}
    reply = client.request_raw(
        json.dumps({"v": 1, "op": "submit", "kind": "prune", "params": params}).encode()
    )
    assert reply["error"]["code"] == "not_allowed" and reply["error"]["field"] == "params.dataset"
    assert client.ping()["protocol"] == 1


def test_an_imported_name_is_not_run_by_the_worker(client: Client) -> None:
    """``profiler.zoo:Callable`` passes the daemon's allow-list (the module is allowed), but
    Callable is only imported there, from collections.abc: the worker refuses to call it."""
    job = client.submit("profile", model="profiler.zoo:Callable", input_size=[8, 8])
    final = client.wait(job["id"], 120)
    assert final["status"] == "failed"
    assert "not defined in 'profiler.zoo'" in final["error"]["message"]


def test_a_pruned_checkpoints_plan_cannot_name_another_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A profile job rebuilds a pruned checkpoint from its plan. The daemon checks the
    request's model and the checkpoint's spec against its allow-list, not the plan: a plan
    edited to name another callable would have the worker import and call it. Refused,
    the job fails naming the mismatch, and the module is never imported."""
    trace = tmp_path / "imported"
    monkeypatch.setenv("PRUNERD_IMPORT_TRACE", str(trace))  # the daemon's workers inherit it
    spec = ModelSpec("resnet20", 1, 10, (8, 8))
    plan = PrunePlan(spec=spec, removed=(RemovedBlock("layer1.1", "identity"),))
    pruned = apply_plan(build_model(spec), plan)
    hostile = dataclasses.replace(plan, spec=dataclasses.replace(spec, name=TRACED_MODEL))
    models = tmp_path / "models"
    ckpt = save_checkpoint(models / "pruned.pt", spec, pruned, plan_json=hostile.to_json())
    d = DaemonProcess(tmp_path / "state", "--path-root", str(models)).start()
    try:
        with d.client() as c:
            job = c.submit("profile", model="resnet20", checkpoint=str(ckpt))
            final = c.wait(job["id"], 120)
            # the daemon serves on; only the job failed (its worker is reaped just after)
            assert wait_for(lambda: c.ping()["running"] == 0, 30)
    finally:
        d.stop()
    assert final["status"] == "failed", final
    assert f"its plan is for ModelSpec(name={TRACED_MODEL!r}" in final["error"]["message"]
    assert not trace.exists()


def test_a_checkpoints_own_input_is_held_to_the_request_bounds(tmp_path: Path) -> None:
    """The bounds checked at submit are the request's shape fields; a checkpoint's spec wins
    over them once loaded, so a checkpoint under path_roots whose model takes 1x64x64 images
    was timed at that size past --max-input-side 32. The worker now checks the shape it
    loaded against the same bounds, for profile and prune jobs, before building the model."""
    models = tmp_path / "models"
    spec = ModelSpec("resnet20", 1, 10, (64, 64))
    ckpt = save_checkpoint(models / "big.pt", spec, build_model(spec))
    d = DaemonProcess(
        tmp_path / "state", "--path-root", str(models), "--max-input-side", "32"
    ).start()
    try:
        with d.client() as c:
            jobs = [
                c.submit("profile", model="resnet20", checkpoint=str(ckpt)),
                c.submit("prune", model="resnet20", checkpoint=str(ckpt), budget_ratio=0.5),
            ]
            finals = [c.wait(job["id"], 120) for job in jobs]
            assert wait_for(
                lambda: c.ping()["running"] == 0, 30
            )  # the daemon serves on; only the jobs failed
    finally:
        d.stop()
    for final in finals:
        assert final["status"] == "failed", final
        said = final["error"]["message"]
        assert f"the model in checkpoint {str(ckpt)!r} takes 1x64x64 inputs" in said
        assert "max_input_side (32)" in said


def test_a_worker_that_writes_garbage_fails_its_job_only(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "state", "--allow-import", "tests.hostile_models").start()
    try:
        with d.client() as c:
            job = c.submit("profile", model="tests.hostile_models:garbage_to_daemon")
            final = c.wait(job["id"], 120)
            assert final["status"] == "failed"
            assert final["error"]["type"] == "WorkerProtocolError", final["error"]
            ok = c.submit("selftest", seconds=0.1, steps=1)
            assert c.wait(ok["id"], 60)["status"] == "done"
    finally:
        assert d.stop() == 0


# --------------------------------------------------------------------------- a fatal error

# The real daemon with one fault injected into its loop: the loop raises once a job runs
# and the test has created FAIL in the state dir.
FATAL_DAEMON = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from service.config import load_settings
    from service.daemon import Daemon

    class Faulty(Daemon):
        def _turn(self):
            super()._turn()
            if (self.state_dir / "FAIL").exists():
                raise RuntimeError("injected fault")

    settings = load_settings(None, host="127.0.0.1", rpc_port=0, events_port=0, ingest_port=0,
                             metrics_port=0, state_dir=Path(sys.argv[1]))
    Faulty(settings).serve()
    """
)


def test_fatal_error_stops_workers_and_frees_the_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    log = (tmp_path / "faulty.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", FATAL_DAEMON, str(state)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        info = wait_for(lambda: _info(state, proc.pid), timeout_s=60)
        with Client(info["rpc"], info["events"], timeout_s=10) as c:
            job = c.submit("selftest", seconds=120, steps=120)
            running = wait_for(lambda: _running(c, job["id"]), timeout_s=60)
        worker = running["worker_pid"]
        (state / "FAIL").touch()
        # Without the shutdown on the way out, the non-daemonic worker would keep this
        # process alive (and deaf) for the two minutes of its job.
        assert proc.wait(30) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert not pid_alive(worker)
    (state / "FAIL").unlink()
    d = DaemonProcess(state).start()  # the state-dir lock was released
    try:
        with d.client() as c:
            assert c.status(job["id"])["job"]["status"] == "interrupted"
    finally:
        assert d.stop() == 0


def _info(state: Path, pid: int) -> dict | None:
    try:
        info = json.loads((state / "daemon.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return info if info.get("pid") == pid else None


def _running(c: Client, job_id: str) -> dict | None:
    status = c.status(job_id)
    return status if status["job"]["status"] == "running" and status["progress"] else None


def test_state_dir_is_private(daemon: DaemonProcess) -> None:
    state = daemon.state_dir
    assert state.stat().st_mode & 0o777 == 0o700
    dbs = [f for f in state.iterdir() if ".sqlite" in f.name]
    assert dbs and all(f.stat().st_mode & 0o777 == 0o600 for f in dbs), [
        (f.name, oct(f.stat().st_mode)) for f in dbs
    ]
    assert os.stat(state / "daemon.json").st_mode & 0o077 == 0

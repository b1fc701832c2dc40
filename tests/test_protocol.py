"""The protocol validator: good requests parse, every bad one is a ProtocolError with a code (never a crash).

The hypothesis tests together feed it well over 10,000 malformed, truncated, oversized,
wrong-version and wrong-type messages.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import protocol as p

POLICY = p.ModelPolicy(builtins=frozenset({"resnet20", "resnet56", "vgg16", "mobilenetv2"}))
MAX = 64 * 1024
CODES = {
    "bad_json",
    "too_large",
    "bad_version",
    "bad_request",
    "unknown_op",
    "unknown_kind",
    "not_allowed",
    "not_found",
}

GOOD = [
    {"v": 1, "op": "ping"},
    {"v": 1, "op": "ping", "req_id": "abc"},
    {
        "v": 1,
        "op": "submit",
        "kind": "profile",
        "params": {"model": "resnet20", "input_size": [8, 8]},
    },
    {
        "v": 1,
        "op": "submit",
        "kind": "profile",
        "params": {
            "model": "resnet56",
            "in_channels": 1,
            "num_classes": 10,
            "input_size": [28, 28],
            "batch_size": 8,
            "device": "cuda:0",
            "fused": True,
            "remeasure": False,
        },
    },
    {"v": 1, "op": "submit", "kind": "selftest", "params": {"seconds": 0.5, "steps": 3}},
    {"v": 1, "op": "status", "job_id": "0123456789ab"},
    {"v": 1, "op": "result", "job_id": "0123456789ab"},
    {"v": 1, "op": "cancel", "job_id": "0123456789ab"},
    {"v": 1, "op": "list"},
    {"v": 1, "op": "list", "limit": 5, "status": "done"},
]


def check(data: bytes) -> p.Request | p.ProtocolError:
    """What the daemon does with a frame: a request or a ProtocolError; anything else fails the test."""
    try:
        return p.decode_request(data, POLICY, MAX)
    except p.ProtocolError as e:
        assert e.code in CODES, e.code
        assert e.message
        reply = json.loads(p.encode_error(e, None, None))
        assert reply["ok"] is False and reply["error"]["code"] == e.code
        return e


@pytest.mark.parametrize("doc", GOOD)
def test_good_requests_parse(doc: dict) -> None:
    req = p.decode_request(json.dumps(doc).encode(), POLICY, MAX)
    assert req.op == doc["op"]
    if isinstance(req, p.Submit):
        # Params become a typed record whose dict form is plain JSON (what the worker gets).
        json.dumps(req.params.to_dict())


def err(doc: object, raw: bytes | None = None) -> p.ProtocolError:
    out = check(raw if raw is not None else json.dumps(doc).encode())
    assert isinstance(out, p.ProtocolError), out
    return out


def test_errors_name_the_field() -> None:
    assert err({"op": "ping"}).code == "bad_version"
    assert err({"v": 2, "op": "ping"}).field == "v"
    assert err({"v": "1", "op": "ping"}).code == "bad_version"
    assert err({"v": 1, "op": "explode"}).field == "op"
    assert err({"v": 1, "op": "submit", "kind": "train"}).code == "unknown_kind"
    e = err(
        {
            "v": 1,
            "op": "submit",
            "kind": "profile",
            "params": {"model": "resnet20", "batch_size": True},
        }
    )
    assert (e.code, e.field) == ("bad_request", "params.batch_size")
    e = err(
        {
            "v": 1,
            "op": "submit",
            "kind": "profile",
            "params": {"model": "resnet20", "input_size": [8]},
        }
    )
    assert e.field == "params.input_size"
    e = err(
        {"v": 1, "op": "submit", "kind": "profile", "params": {"model": "resnet20", "modle": 1}}
    )
    assert e.field == "params.modle"
    e = err({"v": 1, "op": "status", "job_id": "../../etc"})
    assert e.field == "job_id"
    e = err({"v": 1, "op": "submit", "kind": "prune", "params": {"model": "vgg16"}})
    assert e.field == "params.budget_s"
    assert err(None, b"\xff\xfe").code == "bad_json"
    assert err(None, b'{"v": 1, "op": "ping", "x": NaN}').code == "bad_json"
    assert err(None, b"[" * 100_000).code == "too_large"
    assert err(None, b"[" * 50_000).code == "bad_json"  # nesting deeper than the parser allows
    assert err(None, b" " * (MAX + 1)).code == "too_large"


def test_models_are_allow_listed(tmp_path: Path) -> None:
    def model(name: str, policy: p.ModelPolicy = POLICY) -> p.ProtocolError | p.Request:
        doc = {"v": 1, "op": "submit", "kind": "profile", "params": {"model": name}}
        try:
            return p.parse_request(doc, policy)
        except p.ProtocolError as e:
            return e

    for bad in (
        "os:system",
        "subprocess:run",
        "builtins:eval",
        "/etc/passwd.pt2",
        "torchvision.models:resnet18",
    ):
        out = model(bad)
        assert (
            isinstance(out, p.ProtocolError)
            and out.code == "not_allowed"
            and out.field == "params.model"
        ), bad
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "net.pt2").write_bytes(b"x")
    (tmp_path / "secret.pt2").write_bytes(b"x")
    (tmp_path / "models" / "link.pt2").symlink_to(tmp_path / "secret.pt2")
    policy = p.ModelPolicy(
        builtins=POLICY.builtins,
        allow_imports=("torchvision.models",),
        model_dirs=(tmp_path / "models",),
        path_roots=(tmp_path / "models",),
    )
    assert isinstance(model("torchvision.models:resnet18", policy), p.Submit)
    assert isinstance(model("torchvision.models.resnet:resnet18", policy), p.Submit)
    assert isinstance(
        model("torchvision.modelsx:evil", policy), p.ProtocolError
    )  # prefix is per module
    ok = model("net.pt2", policy)
    assert isinstance(ok, p.Submit) and ok.params.model == str(tmp_path / "models" / "net.pt2")
    for escape in ("../secret.pt2", str(tmp_path / "secret.pt2"), "link.pt2"):
        out = model(escape, policy)
        assert isinstance(out, p.ProtocolError) and out.code == "not_allowed", escape
    doc = {
        "v": 1,
        "op": "submit",
        "kind": "profile",
        "params": {"model": "resnet20", "checkpoint": "/etc/passwd"},
    }
    with pytest.raises(p.ProtocolError) as e:
        p.parse_request(doc, policy)
    assert e.value.field == "params.checkpoint"
    doc = {
        "v": 1,
        "op": "submit",
        "kind": "prune",
        "params": {"model": "resnet20", "budget_s": 1, "dataset": "os:x"},
    }
    with pytest.raises(p.ProtocolError) as e:
        p.parse_request(doc, policy)
    assert e.value.field == "params.dataset"


def test_prune_request_needs_a_checkpoint_inside_the_roots(tmp_path) -> None:
    ckpt = tmp_path / "vgg16.pt"
    ckpt.write_bytes(b"x")
    policy = p.ModelPolicy(builtins=POLICY.builtins, path_roots=(tmp_path,))
    params = {"model": "vgg16", "budget_s": 0.002, "method": "greedy", "checkpoint": str(ckpt)}
    req = p.parse_request({"v": 1, "op": "submit", "kind": "prune", "params": params}, policy)
    assert req.params.checkpoint == str(ckpt) and req.params.method == "greedy"
    for bad, field in (
        ({"checkpoint": None}, "params.checkpoint"),
        ({"method": "hfp-x"}, "params.method"),
    ):
        doc = {"v": 1, "op": "submit", "kind": "prune", "params": {**params, **bad}}
        if bad.get("checkpoint", 1) is None:
            del doc["params"]["checkpoint"]
        with pytest.raises(p.ProtocolError) as e:
            p.parse_request(doc, policy)
        assert e.value.field == field


def test_samples_roundtrip_and_rejects() -> None:
    b = p.decode_samples(p.encode_samples("dep-1", [0.001, 0.002], 0.004, 3), MAX)
    assert (b.deployment, b.samples, b.budget_s, b.dropped) == ("dep-1", [0.001, 0.002], 0.004, 3)
    for bad in (
        b"",
        b"[]",
        b'{"v":1,"d":"x y","s":[1]}',
        b'{"v":1,"d":"x","s":[-1]}',
        b'{"v":1,"d":"x","s":["1"]}',
        b'{"v":1,"d":"x","s":[1e999]}',
        b'{"v":2,"d":"x","s":[1]}',
    ):
        with pytest.raises(p.ProtocolError):
            p.decode_samples(bad, MAX)


# --------------------------------------------------------------------------- fuzzing

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
)
# One level of nesting is enough to hit every type check, and keeps 10,000 examples fast.
json_values = (
    json_scalars
    | st.lists(json_scalars, max_size=4)
    | st.dictionaries(
        st.sampled_from(["v", "op", "model"]) | st.text(max_size=8), json_scalars, max_size=4
    )
)
FIELDS = [
    "v",
    "op",
    "req_id",
    "kind",
    "params",
    "job_id",
    "limit",
    "status",
    "model",
    "input_size",
    "batch_size",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A good request with one thing wrong: a field dropped, replaced by a wrong type, or added."""
    doc = json.loads(json.dumps(draw(st.sampled_from(GOOD))))
    target = doc
    if "params" in doc and draw(st.booleans()):
        target = doc["params"]
    action = draw(st.sampled_from(["drop", "retype", "add", "version"]))
    keys = sorted(target)
    if action == "drop" and keys:
        target.pop(draw(st.sampled_from(keys)))
    elif action == "retype" and keys:
        target[draw(st.sampled_from(keys))] = draw(json_values)
    elif action == "add":
        target[draw(st.sampled_from(FIELDS) | st.text(max_size=8))] = draw(json_values)
    else:
        doc["v"] = draw(json_values)
    return json.dumps(doc).encode()


@st.composite
def truncated(draw: st.DrawFn) -> bytes:
    data = json.dumps(draw(st.sampled_from(GOOD))).encode()
    return data[: draw(st.integers(0, len(data) - 1))]


@st.composite
def oversized(draw: st.DrawFn) -> bytes:
    doc = dict(draw(st.sampled_from(GOOD)))
    doc["req_id"] = "x" * draw(st.integers(MAX, MAX + 4096))
    return json.dumps(doc).encode()


FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=5000, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    check(data)


@settings(max_examples=1500, deadline=None)
@given(json_values)
def test_fuzz_random_json(doc: object) -> None:
    assert isinstance(check(json.dumps(doc).encode()), p.ProtocolError)


@FUZZ
@given(mutated())
def test_fuzz_mutated_requests(data: bytes) -> None:
    check(data)


@settings(max_examples=1500, deadline=None)
@given(truncated())
def test_fuzz_truncated(data: bytes) -> None:
    assert isinstance(check(data), p.ProtocolError)


@settings(max_examples=1000, deadline=None)
@given(oversized())
def test_fuzz_oversized(data: bytes) -> None:
    out = check(data)
    assert isinstance(out, p.ProtocolError) and out.code == "too_large"


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_fuzz_samples(data: bytes) -> None:
    try:
        batch = p.decode_samples(data, MAX)
    except p.ProtocolError:
        return
    assert all(s >= 0 for s in batch.samples)

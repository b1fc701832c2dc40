"""The records and the wire schema before and after msgspec: the daemon's paths, timed.

    git show <commit before>:service/protocol.py > /tmp/old_protocol.py
    python bench/records_adopted.py REPORT.json PROFILE.json --before /tmp/old_protocol.py
    git archive <commit before> | tar -x -C /tmp/before
    PYTHONPATH=/tmp/before python bench/records_adopted.py REPORT.json PROFILE.json

The daemon's decode + validate (``service.protocol``: a prune submit with the policy's
file and name checks, a profile submit, a batch of 100 deployment samples); with
``--before``, the old protocol module is loaded beside this tree's and the two are timed
in turns in this one process, so that a busy machine slows both alike. Then a prune report
and a block profile to and from JSON with this tree's records (``PYTHONPATH`` picks the
tree). Best of 15 rounds of 1000 calls (records: of 5 rounds of 200), per call.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import timeit
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

from profiler import BlockProfile
from pruner import PruneReport
from service import protocol

ROOT = Path(tempfile.mkdtemp())
(ROOT / "resnet20.pt").write_bytes(b"")
PRUNE = {
    "model": "resnet20",
    "checkpoint": str(ROOT / "resnet20.pt"),
    "dataset": "digits",
    "budget_ratio": 0.5,
    "method": "dbp",
    "batch_size": 1,
    "options": {"epochs": 1, "limit": 2000, "calibration_samples": 300},
}
PROFILE = {"model": "resnet20", "input_size": [8, 8], "batch_size": 4}
SUBMITS = {
    kind: json.dumps(
        {"v": 1, "op": "submit", "req_id": "r-1", "kind": kind, "params": params}
    ).encode()
    for kind, params in (("prune", PRUNE), ("profile", PROFILE))
}
SAMPLES = protocol.encode_samples("deploy-1", [0.001 + i * 1e-6 for i in range(100)], 0.004, 0)


def load_protocol(path: str) -> ModuleType:
    """A protocol.py from another commit, as a module of this service package."""
    spec = importlib.util.spec_from_file_location("service._before_protocol", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _request(data: bytes, m: ModuleType, policy: Any) -> Any:
    return m.decode_request(data, policy, 1 << 20)


def _samples(m: ModuleType, policy: Any) -> Any:
    return m.decode_samples(SAMPLES, 1 << 20)


def protocol_rows(modules: list[ModuleType]) -> list[tuple[str, list[float]]]:
    policies = [
        m.ModelPolicy(builtins=frozenset({"resnet20"}), path_roots=(ROOT,)) for m in modules
    ]
    cases: dict[str, Any] = {
        f"decode + validate a {kind} submit": partial(_request, data)
        for kind, data in SUBMITS.items()
    }
    cases["decode + validate 100 samples"] = _samples
    rows = []
    for what, fn in cases.items():
        best = [float("inf")] * len(modules)
        for _ in range(15):  # in turns: a busy machine slows each alike
            for i, (m, pol) in enumerate(zip(modules, policies)):
                t = timeit.timeit(partial(fn, m, pol), number=1000) / 1000
                best[i] = min(best[i], t)
        rows.append((what, best))
    return rows


def per_call(fn: Any, n: int = 200) -> float:
    return min(timeit.repeat(fn, number=n, repeat=5)) / n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("report", type=Path)
    ap.add_argument("profile", type=Path)
    ap.add_argument("--before", help="service/protocol.py of the commit to compare with")
    args = ap.parse_args()
    report_text, profile_text = args.report.read_text(), args.profile.read_text()
    report, profile = PruneReport.from_json(report_text), BlockProfile.from_json(profile_text)
    assert json.loads(report.to_json()) == json.loads(report_text)
    assert json.loads(profile.to_json()) == json.loads(profile_text)
    modules = ([load_protocol(args.before)] if args.before else []) + [protocol]
    print(f"this tree: {Path(protocol.__file__).parents[1]}, Python {sys.version.split()[0]}")
    print("| what | " + ("before | " if args.before else "") + "this tree |")
    print("|---|" + "---|" * len(modules))
    for what, best in protocol_rows(modules):
        print(f"| {what} | " + " | ".join(f"{s * 1e6:.1f} us" for s in best) + " |")
    for what, fn in (
        ("prune report from JSON", lambda: PruneReport.from_json(report_text)),
        ("prune report to JSON", report.to_json),
        ("block profile from JSON", lambda: BlockProfile.from_json(profile_text)),
        ("block profile to JSON", profile.to_json),
    ):
        print(f"| {what} | " + ("- | " if args.before else "") + f"{per_call(fn) * 1e6:.1f} us |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

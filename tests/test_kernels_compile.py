"""The Conv-BN-ReLU kernel compiles for sm_80 and sm_90 on a machine without a GPU.

``triton.compile`` with a GPUTarget runs Triton's whole pipeline down to a
cubin on the host. Compiling needs TRITON_INTERPRET unset (the interpreter
replaces the compiler, and conftest sets it on CPU-only machines), so the
compiles run in a child process.
"""

import json
import os
import subprocess
import sys

import pytest

from kernels.compile_check import POINTER_TYPES, SHARED_LIMIT
from kernels.conv_bn_relu import HAS_TRITON
from kernels.tuning import CONFIGS

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

ARCHS = (80, 90)
DTYPES = tuple(POINTER_TYPES)


def _compile(cases: list[tuple[int, str, int]]) -> list[dict]:
    """Compile (arch, dtype, config index) cases in a child process without the interpreter."""
    code = (
        "import json, sys\n"
        "from dataclasses import asdict\n"
        "from kernels.compile_check import compile_config\n"
        "from kernels.tuning import CONFIGS\n"
        "for arch, dtype, i in json.loads(sys.argv[1]):\n"
        "    c = compile_config(arch, dtype, CONFIGS[i])\n"
        "    print(json.dumps({**asdict(c), 'fits': c.fits, 'index': i}), flush=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cases)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _check(rows: list[dict], cases: list[tuple[int, str, int]]) -> None:
    assert [(r["arch"], r["dtype"], r["index"]) for r in rows] == cases
    for r in rows:
        assert r["cubin_bytes"] > 0, r
        assert r["num_warps"] == CONFIGS[r["index"]].num_warps, r
        assert 0 < r["shared_bytes"] <= SHARED_LIMIT[r["arch"]], r
        assert r["fits"], r


def test_every_config_compiles_for_a_gpu_target() -> None:
    # Each config once; arch and dtype rotate so every arch, every dtype and every
    # config is compiled at least once (the full product is the slow test below).
    cases = [(ARCHS[i % 2], DTYPES[i % 3], i) for i in range(len(CONFIGS))]
    assert {a for a, _, _ in cases} == set(ARCHS) and {d for _, d, _ in cases} == set(DTYPES)
    _check(_compile(cases), cases)


@pytest.mark.slow
def test_every_config_and_dtype_compiles_for_sm80_and_sm90() -> None:
    cases = [(a, d, i) for a in ARCHS for d in DTYPES for i in range(len(CONFIGS))]
    _check(_compile(cases), cases)

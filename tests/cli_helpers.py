"""Running the installed ``prunerd`` console script (and torchrun) in a subprocess, as a user does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
# A profile of resnet20 on 8x8 inputs, one thread, 0.2 s per measurement: seconds, not minutes.
QUICK_PROFILE = ["profile", "resnet20", "--input-size", "8,8", "--threads", "1",
                 "--timing-budget-s", "0.2"]  # fmt: skip
PRUNERD = shutil.which("prunerd") or str(BIN / "prunerd")


def run(
    *cmd: str,
    timeout: float = 300,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """``cmd`` with unbuffered Python output, stdout and stderr captured; ``env`` added."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=full_env
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (
        f"{result.args}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    )
    return result

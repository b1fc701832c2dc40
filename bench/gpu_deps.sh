#!/usr/bin/env bash
# Gather the pure-Python test tools bench/gpu.sh needs (pytest, hypothesis and what they import)
# from this machine's Python into bench/runs/gpu_deps (git-ignored), for a GPU machine that lacks
# them: hand that folder to the GPU machine with the tree; gpu.sh puts it last on PYTHONPATH.
#   bash bench/gpu_deps.sh    (PYTHON selects the interpreter whose packages are copied)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=bench/runs/gpu_deps
rm -rf "$OUT"
mkdir -p "$OUT"
"$PY" - "$OUT" <<'PYEOF'
import importlib.metadata as md
import pathlib
import shutil
import sys

out = pathlib.Path(sys.argv[1])
for dist_name in ("pytest", "pluggy", "iniconfig", "packaging", "hypothesis", "sortedcontainers"):
    dist = md.distribution(dist_name)
    for f in dist.files or ():
        src = pathlib.Path(dist.locate_file(f))
        if "__pycache__" in f.parts or not src.is_file() or ".." in f.parts:
            continue
        dst = out / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
print(f"{out}: {sum(1 for _ in out.rglob('*') if _.is_file())} files")
PYEOF

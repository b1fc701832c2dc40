"""Prediction rules for pruned models, compared on measured GPU data without a GPU.

    python bench/prediction_rules.py [--results bench/results]

Reads what ``bench/gpu_profile.py`` kept: the profiles (``profiles_cuda/*.json.gz``,
every sample) and the random removal sets measured on the GPU
(``profiler_cuda_predictions.json``: the pruned traced model and the whole one,
timed in the same rounds). For each set, each rule predicts the pruned model's
latency as a fraction of the whole model's; the error is that over the measured
fraction, minus one. The rules:

- ``pieces``: what the pruner does: (rest + kept blocks + replacements) / (rest +
  every block), from the profile of the same mode;
- ``calibrated``: ``pieces`` with what removal saves scaled by the profile's own
  prediction check, k = (1 - measured) / (1 - predicted) for the check's set;
- ``bound`` (eager rows, with a CUDA-graph profile of the same model and batch):
  the larger of the host-side and the GPU-side sums, kept pieces only: eager
  pieces stand for the host's launches, the graph's pieces for GPU work;
- ``pipeline`` (eager rows, with the graph profile and the host's issue time of
  each piece, ``profiler_cuda_host.json``): the pass simulated piece by piece as
  a host issuing work to a GPU that runs it in order (:func:`pipeline_end`).

Writes ``prediction_rules.md`` beside the inputs; prints it too. Exit 1 when
there is nothing to compare.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
from pathlib import Path

from profiler import BlockProfile

RESULTS = Path(__file__).parent / "results"


def load_profiles(folder: Path) -> dict[tuple[str, int, str], BlockProfile]:
    """Unfused profiles by (model, batch, mode)."""
    out = {}
    for path in sorted(folder.glob("*.json.gz")):
        if path.name.endswith("_fused.json.gz"):
            continue
        p = BlockProfile.from_json(gzip.decompress(path.read_bytes()).decode())
        stem = path.name.removesuffix(".json.gz")  # MODEL_bB_MODE, as gpu_profile.py names it
        mode = "cuda_graph" if stem.endswith("_cuda_graph") else "eager"
        out[(p.model, p.batch_size, mode)] = p
    return out


def calibrated(p: BlockProfile, removed: set[str]) -> float | None:
    """Savings scaled by the profile's check (None: the profile has no check)."""
    c = p.check
    if c is None or c.predicted_fraction >= 1.0:
        return None
    k = (1.0 - c.measured_fraction) / (1.0 - c.predicted_fraction)
    return 1.0 - k * (1.0 - p.predicted_fraction(removed))


def bound(eager: BlockProfile, graph: BlockProfile | None, removed: set[str]) -> float | None:
    """max(host sum, GPU sum) over kept pieces, over the same for the whole model."""
    if graph is None:
        return None
    hw, gw = (p.rest_s + p.blocks_s for p in (eager, graph))  # every piece, seconds
    h, g = eager.predicted_fraction(removed) * hw, graph.predicted_fraction(removed) * gw
    return max(h, g) / max(hw, gw)


def pipeline_end(host: list[float], gpu: list[float]) -> float:
    """When the GPU finishes an eager pass: the host issues piece i in ``host[i]`` seconds,
    one after another; the GPU runs it in ``gpu[i]`` once the GPU is done with piece
    i - 1, and cannot finish it before the host has issued it.

    end_i = max(end_{i-1} + gpu_i, issued_i), issued_i = host_0 + ... + host_i. Where the
    host runs ahead (large batches) this is the GPU's sum; where the GPU waits (small
    batches on a slow host) the host's; in between, each stretch pays its own bound.
    """
    issued = end = 0.0
    for h, g in zip(host, gpu, strict=True):
        issued += h
        end = max(end + g, issued)
    return end


def pipeline(host: dict | None, graph: BlockProfile | None, removed: set[str]) -> float | None:
    """:func:`pipeline_end` of the kept pieces over that of every piece, both plus the
    constant the simulation misses for the whole model (the synchronise, the first
    launch's latency): the eager end to end minus the whole model's simulated end, or 0."""
    if host is None or graph is None:
        return None
    gpu = {b.block.name: b.latency_s for b in graph.blocks} | {
        r.name: r.latency.median_s for r in graph.rest
    }
    if set(host["pieces"]) != set(gpu):
        return None  # another cut of the model: nothing to pair piece by piece
    h = [max(0.0, v) for v in host["host_s"]]
    g = [gpu[name] for name in host["pieces"]]
    whole = pipeline_end(h, g)
    # Timed in another phase than the host's side: where that phase ran slower, no offset.
    rest = max(0.0, host["eager_end_to_end_s"] - whole)
    kept = [i for i, name in enumerate(host["pieces"]) if name not in removed]
    pruned = pipeline_end([h[i] for i in kept], [g[i] for i in kept])
    return (pruned + rest) / (whole + rest)


RULES = ("pieces", "calibrated", "bound", "pipeline")


def evaluate(rows: list[dict], profiles: dict, hosts: dict | None = None) -> list[dict]:
    """Each rule's error on each measured removal set; ``hosts``: the host's side of the
    eager passes by (model, batch), from ``profiler_cuda_host.json``."""
    hosts = hosts or {}
    out = []
    for r in rows:
        if "reference_s" not in r or "removed_blocks" not in r:
            continue  # rows from before the bench kept the whole model and the names
        key = (r["model"], r["batch_size"], r["mode"])
        p = profiles.get(key)
        if p is None:
            continue
        removed = set(r["removed_blocks"])
        measured = r["measured_s"] / r["reference_s"]
        graph = profiles.get((r["model"], r["batch_size"], "cuda_graph"))
        got = {
            "pieces": p.predicted_fraction(removed),
            "calibrated": calibrated(p, removed),
            "bound": bound(p, graph, removed) if r["mode"] == "eager" else None,
            "pipeline": pipeline(hosts.get(key[:2]), graph, removed)
            if r["mode"] == "eager"
            else None,
        }
        errors = {k: (None if v is None else v / measured - 1.0) for k, v in got.items()}
        out.append({**{k: r[k] for k in ("model", "batch_size", "mode", "removed", "of")},
                    "measured_fraction": measured, **errors})  # fmt: skip
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def render(results: list[dict], source: Path) -> str:
    lines = [
        "# Prediction rules for pruned models, on measured GPU data",
        "",
        f"- from: `{source}` (profiles in `profiles_cuda/`), by `python bench/prediction_rules.py`",
        "- error: predicted fraction of the whole model's latency over the measured one, minus 1",
        "",
        "| model | batch | mode | removed | measured fraction | " + " | ".join(RULES) + " |",
        "|---|---:|---|---:|---:|" + "---:|" * len(RULES),
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['mode']} | {r['removed']} of {r['of']}"
            f" | {r['measured_fraction']:.3f} | " + " | ".join(_pct(r[k]) for k in RULES) + " |"
        )
    lines += ["", "| rule | mode | sets | within 5% | median abs error | worst |", "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for rule in RULES:
        for mode in ("eager", "cuda_graph"):
            errs = [r[rule] for r in results if r["mode"] == mode and r[rule] is not None]
            if errs:
                worst = max(errs, key=abs)
                lines.append(
                    f"| {rule} | {mode} | {len(errs)} | {sum(abs(e) <= 0.05 for e in errs)}"
                    f" | {statistics.median(abs(e) for e in errs):.1%} | {worst:+.1%} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS, help="where gpu_profile.py wrote")
    args = ap.parse_args(argv)
    source = args.results / "profiler_cuda_predictions.json"
    if not source.is_file():
        print(f"no {source}: run bench/gpu_profile.py (bench/gpu.sh) first", file=sys.stderr)
        return 1
    host_json = args.results / "profiler_cuda_host.json"
    hosts = json.loads(host_json.read_text()) if host_json.is_file() else []
    results = evaluate(
        json.loads(source.read_text()),
        load_profiles(args.results / "profiles_cuda"),
        {(h["model"], h["batch_size"]): h for h in hosts},
    )
    if not results:
        print(f"nothing to compare: {source} has no rows with the whole model and the block "
              "names beside profiles of the same model, batch and mode", file=sys.stderr)  # fmt: skip
        return 1
    text = render(results, source)
    (args.results / "prediction_rules.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU figures of the profiler: additivity with pieces timed in one pass, and the launch overhead.

    python bench/gpu_profile.py [--models resnet20 resnet56 mobilenetv2] [--batches 1 16 128]

For each model, batch and mode (eager; ``cuda_graph``: the whole pass in one
captured graph), one profile with the pieces timed chained (the default on
CUDA) gives the additivity error (sum of blocks + rest vs end to end), the
launch overhead (the pieces timed one launch at a time minus the same pieces in
one pass, per forward pass) and the cost of one timing event. ``--fused``
models are profiled again as deployed with fused Conv-BN-ReLU kernels.
``--predict`` models are then pruned at random (identity-replaceable blocks
swapped for ``nn.Identity``) and the latency predicted from the profile (end
to end minus each removed block plus its replacement) is set against the
pruned model's measured latency, in the same mode; and the fraction of end to
end the pruner predicts against the pruned over the whole traced model, timed
in the same rounds. ``bench/prediction_rules.py`` reads these rows and the
profiles kept in ``--profiles`` to compare other prediction rules.

Writes bench/results/profiler_cuda_additivity.json (a list of rows: model,
batch_size, mode, additivity_error, device, and the figures above),
profiler_cuda_predictions.json beside it (the pruned models) and
bench/results/profiler_cuda_additivity_gpu.md. Exit status: 0 when every
|additivity| is within --goal, 3 when a profile missed it, 1 on an error.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gzip
import json
import random
import sys
import time
from pathlib import Path

import torch

from profiler import (
    BlockProfile,
    CpuChain,
    ModelSpec,
    TimingOptions,
    discover,
    graph_pass,
    load_model,
    measure,
    profile_model,
    time_chain,
)
from pruner.depth import remove_blocks

RESULTS = Path(__file__).parent / "results"


def _options(mode: str, budget_s: float) -> TimingOptions:
    # Chained on every device: on CPU (a dry run of this script) too.
    return TimingOptions(budget_s=budget_s, cuda_graph=mode == "cuda_graph", pieces="chained")


def one(
    model: str, batch: int, mode: str, fused: bool, budget_s: float, device: str
) -> tuple[dict, BlockProfile, torch.nn.Module]:
    spec = ModelSpec(model)
    net = load_model(spec)
    t0 = time.perf_counter()
    p = profile_model(
        net, spec, batch_size=batch, device=device, options=_options(mode, budget_s), fused=fused
    )
    row = {
        "model": model,
        "batch_size": batch,
        "mode": mode,
        "fused": fused,
        "additivity_error": p.additivity_error,
        "timing": p.timing,
        "end_to_end_s": p.end_to_end_s,
        "blocks_s": p.blocks_s,
        "rest_s": p.rest_s,
        "launch_overhead_s": p.launch_overhead_s,
        "mark_cost_s": p.mark_cost_s,
        "eager_s": p.eager.median_s if p.eager else None,
        "prediction_check_error": p.check.error if p.check else None,
        "prediction_check_removed": len(p.check.removed) if p.check else 0,
        "checks_ok": bool(p.quality and p.quality.ok),
        "problems": list(p.quality.problems) if p.quality else [],
        "profile_wall_s": time.perf_counter() - t0,
        "device": p.device.to_dict(),
    }
    return row, p, net


def predictions(
    p: BlockProfile, net: torch.nn.Module, mode: str, sets: int, budget_s: float, device: str
) -> list[dict]:
    """Random removal sets: latency predicted from ``p`` against the pruned model measured.

    The pruned model is what prunerd builds (block surgery on the traced graph, the
    form the profile's end to end was timed in); the same blocks swapped for
    ``nn.Identity`` in the eager model are measured too, against a prediction from
    the eager model's end to end, for reference.
    """
    blocks = [
        b
        for b in p.blocks
        if b.block.removable and b.block.replacement == "identity" and _is_module(net, b.block.name)
    ]
    rng = random.Random(f"{p.model}|{p.batch_size}|{mode}")
    x = torch.randn(p.input_shape, device=device)
    base = _pruned(net, [], x)  # the whole traced model, timed in the same rounds
    rows = []
    for _ in range(sets if len(blocks) >= 2 else 0):
        removed = rng.sample(blocks, rng.randint(2, max(2, len(blocks) - 1)))
        traced = _pruned(net, [b.block for b in removed], x)
        eager = copy.deepcopy(net).eval().to(device)
        for b in removed:
            parent, _, leaf = b.block.name.rpartition(".")
            setattr(eager.get_submodule(parent) if parent else eager, leaf, torch.nn.Identity())
        saved = sum(b.latency_s - (b.replacement_latency_s or 0.0) for b in removed)
        predicted, predicted_eager = p.end_to_end_s - saved, p.eager.median_s - saved
        works = [lambda m=traced: m(x), lambda m=eager: m(x), lambda: base(x)]
        measured, measured_eager, whole = measure(works, device, _options(mode, budget_s))
        fraction = p.predicted_fraction(b.block.name for b in removed)
        rows.append(
            {
                "model": p.model,
                "batch_size": p.batch_size,
                "mode": mode,
                "removed": len(removed),
                "removed_blocks": [b.block.name for b in removed],
                "of": len(blocks),
                "predicted_s": predicted,
                "measured_s": measured.median_s,
                "error": predicted / measured.median_s - 1.0,
                "eager_predicted_s": predicted_eager,
                "eager_measured_s": measured_eager.median_s,
                "eager_error": predicted_eager / measured_eager.median_s - 1.0,
                # As the pruner predicts (fraction of end to end), against the pruned model
                # over the whole one timed beside it: no drift between phases in it.
                "reference_s": whole.median_s,
                "predicted_fraction": fraction,
                "measured_fraction": measured.median_s / whole.median_s,
                "fraction_error": fraction / (measured.median_s / whole.median_s) - 1.0,
            }
        )
    return rows


def marginals(
    p: BlockProfile, net: torch.nn.Module, mode: str, budget_s: float, device: str
) -> list[dict]:
    """Each identity-replaceable block's marginal cost: the traced graph against the same
    graph with that one block removed, timed interleaved; beside the profile's latency
    for the block (what a prediction subtracts). Where the two differ, the block's share
    of the pass is not what removing it saves."""
    x = torch.randn(p.input_shape, device=device)
    base = _pruned(net, [], x)
    rows = []
    for b in p.blocks:
        if not (b.block.removable and b.block.replacement == "identity"):
            continue
        pruned = _pruned(net, [b.block], x)
        whole, without = measure(
            [lambda: base(x), lambda m=pruned: m(x)], device, _options(mode, budget_s)
        )
        marginal = whole.median_s - without.median_s
        rows.append(
            {
                "model": p.model,
                "batch_size": p.batch_size,
                "mode": mode,
                "block": b.block.name,
                "profiled_s": b.latency_s - (b.replacement_latency_s or 0.0),
                "marginal_s": marginal,
            }
        )
    return rows


def host_issue(p: BlockProfile, net: torch.nn.Module, budget_s: float, device: str) -> dict:
    """The host's side of the eager pass: seconds Python takes to issue each piece's kernels.

    The traced model runs cut into the profile's pieces (blocks and rest segments, in
    the order they run), a ``perf_counter_ns`` mark between pieces and a synchronise
    after each pass, outside the timing. Beside the eager profile (the GPU's timeline
    between events) and the CUDA-graph profile (the GPU's work alone), this is what a
    host/GPU pipeline rule needs (``bench/prediction_rules.py``).
    """
    x = torch.randn(p.input_shape, device=device)
    with torch.inference_mode():
        bg = discover(copy.deepcopy(net).eval().to(device), x)
    order = {n.name: i for i, n in enumerate(bg.gm.graph.nodes)}
    named = [(b.block.name, b.block.nodes) for b in p.blocks]
    named += [(s.name, s.nodes) for s in p.rest]
    named.sort(key=lambda item: max((order[n] for n in item[1]), default=-1))
    pieces = [[bg.node(n) for n in nodes] for _, nodes in named]
    dev = torch.device(device)

    def settle() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with torch.inference_mode():
        chain = CpuChain(graph_pass(bg.gm, pieces, [x]), settle=settle)
        got = time_chain(chain, budget_s=budget_s, fingerprint=p.device.fingerprint)
    return {
        "model": p.model,
        "batch_size": p.batch_size,
        "pieces": [name for name, _ in named],  # in the order they run
        "host_s": [m.median_s for m in got.pieces],
        "host_mark_cost_s": got.mark_cost_s,
        "host_pass_s": got.plain.median_s,  # issuing the whole traced pass, unmarked
        "eager_end_to_end_s": p.end_to_end_s,
    }


def _pruned(net: torch.nn.Module, blocks: list, x: torch.Tensor) -> torch.fx.GraphModule:
    """A copy of ``net`` traced on ``x``'s device, ``blocks`` removed by prunerd's surgery
    (none: the traced graph itself, as fast as remove_blocks leaves a pruned one)."""
    with torch.inference_mode():
        gm = discover(copy.deepcopy(net).eval().to(x.device), x).gm
        return remove_blocks(gm, blocks)


def _save_profile(p: BlockProfile, folder: Path, mode: str, fused: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{p.model}_b{p.batch_size}_{mode}{'_fused' if fused else ''}.json.gz"
    (folder / name).write_bytes(gzip.compress(p.to_json(indent=None).encode()))


def _is_module(net: torch.nn.Module, name: str) -> bool:
    try:
        net.get_submodule(name)
    except AttributeError:
        return False
    return True


def _us(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e6:.1f}"


def render(
    rows: list[dict], goal: float, argv: list[str], predicted: list[dict], margins: list[dict]
) -> str:
    dev = rows[0]["device"] if rows else {}
    lines = [
        "# Profiler on CUDA: additivity with pieces timed in one pass, launch overhead",
        "",
        f"- command: `python {' '.join(argv)}` (through bench/gpu.sh)",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- device: {dev.get('name', '?')} ({dev.get('details', {}).get('uuid', dev.get('kind'))}), "
        f"torch {torch.__version__}, CUDA {torch.version.cuda}",
        f"- additivity = (blocks + rest - end to end) / end to end; goal within ±{goal:.0%}; end to"
        " end = the traced model's pass, timed in the same rounds as the pass with marks",
        "- launch overhead = pieces timed one launch at a time minus the same pieces in one"
        " pass, microseconds per forward pass; event = GPU time of one timing event, "
        "subtracted from every piece",
        "- prediction check = the profile's own: its prediction for the traced model without "
        "every second removable block, over that model measured, minus 1",
        "",
        "| model | batch | mode | fused | end to end (us) | blocks + rest (us) | additivity |"
        " launch overhead (us) | event (us) | eager model (us) | prediction check | checks |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ok = "ok" if r["checks_ok"] else "; ".join(r["problems"])[:120]
        miss = "" if abs(r["additivity_error"]) <= goal else " **(over goal)**"
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['mode']} | {'yes' if r['fused'] else 'no'}"
            f" | {_us(r['end_to_end_s'])} | {_us(r['blocks_s'] + r['rest_s'])}"
            f" | {r['additivity_error']:+.1%}{miss} | {_us(r['launch_overhead_s'])}"
            f" | {_us(r['mark_cost_s'])} | {_us(r['eager_s'])} | {_check(r)} | {ok} |"
        )
    if predicted:
        lines += [
            "",
            "## Pruned models: latency predicted from the profile against measured",
            "",
            "predicted = end to end - sum over removed blocks of (block - replacement);"
            " blocks removed at random among those an identity replaces. Pruned: the graph"
            " prunerd's block surgery builds (the goal); eager, for reference: the same blocks"
            " swapped for nn.Identity in the eager model, predicted from its end to end",
            "",
            "| model | batch | mode | removed | predicted (us) | measured (us) | error |"
            " eager predicted (us) | eager measured (us) | eager error |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in predicted:
            miss = "" if abs(r["error"]) <= goal else " **(over goal)**"
            lines.append(
                f"| {r['model']} | {r['batch_size']} | {r['mode']} | {r['removed']} of {r['of']}"
                f" | {_us(r['predicted_s'])} | {_us(r['measured_s'])} | {r['error']:+.1%}{miss}"
                f" | {_us(r['eager_predicted_s'])} | {_us(r['eager_measured_s'])}"
                f" | {r['eager_error']:+.1%} |"
            )
    if margins:
        lines += _render_margins(margins)
    return "\n".join(lines) + "\n"


def _check(row: dict) -> str:
    err = row.get("prediction_check_error")
    return "-" if err is None else f"{err:+.1%} ({row['prediction_check_removed']} removed)"


def _render_margins(margins: list[dict]) -> list[str]:
    lines = [
        "",
        "## One block removed at a time: what removing it saves against its profiled latency",
        "",
        "marginal = the traced graph minus the graph without that block, timed interleaved;"
        " per-block figures in profiler_cuda_marginals.json",
        "",
        "| model | batch | mode | blocks | profiled, sum (us) | marginal, sum (us) |"
        " mean marginal - profiled (us) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for m in margins:
        groups.setdefault((m["model"], m["batch_size"], m["mode"]), []).append(m)
    for (model, batch, mode), ms in groups.items():
        prof = sum(m["profiled_s"] for m in ms)
        marg = sum(m["marginal_s"] for m in ms)
        lines.append(
            f"| {model} | {batch} | {mode} | {len(ms)} | {_us(prof)} | {_us(marg)}"
            f" | {(marg - prof) / len(ms) * 1e6:+.1f} |"
        )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet20", "resnet56", "mobilenetv2"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16, 128])
    ap.add_argument("--modes", nargs="+", choices=["eager", "cuda_graph"], default=["eager", "cuda_graph"])  # fmt: skip
    ap.add_argument("--fused", nargs="*", default=["resnet20"], help="models profiled fused too")
    ap.add_argument("--fused-batches", nargs="+", type=int, default=[1])
    ap.add_argument("--predict", nargs="*", default=["resnet56"], help="models to prune at random")
    ap.add_argument("--sets", type=int, default=2, help="random removal sets per profile")
    ap.add_argument(
        "--marginal",
        nargs="*",
        default=[],
        help="models whose blocks are removed "
        "one at a time, each timed against the whole (at --marginal-batches)",
    )
    ap.add_argument("--marginal-batches", nargs="+", type=int, default=[1])
    ap.add_argument("--budget-s", type=float, default=1.0)
    ap.add_argument("--goal", type=float, default=0.05)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a dry run")
    ap.add_argument("--out-json", type=Path, default=RESULTS / "profiler_cuda_additivity.json")
    ap.add_argument("--out-md", type=Path, default=RESULTS / "profiler_cuda_additivity_gpu.md")
    ap.add_argument(
        "--profiles", type=Path,
        help="also write every profile, raw samples included, as MODEL_bB_MODE[_fused].json.gz "
        "here (default: profiles_cuda/ beside --out-json), so other prediction rules can be "
        "checked against the measured pruned models later without a GPU",
    )  # fmt: skip
    args = ap.parse_args()
    if args.profiles is None:
        args.profiles = args.out_json.with_name("profiles_cuda")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_profile.py: no CUDA device; nothing measured", file=sys.stderr)
        return 2
    cases = [(m, b, mode, False) for m in args.models for b in args.batches for mode in args.modes]
    cases += [(m, b, mode, True) for m in args.fused for b in args.fused_batches for mode in args.modes]  # fmt: skip
    rows, predicted, margins, hosts, errors = [], [], [], [], 0
    for model, batch, mode, fused in cases:
        try:
            r, p, net = one(model, batch, mode, fused, args.budget_s, args.device)
            if model in args.predict and not fused:
                predicted += predictions(p, net, mode, args.sets, args.budget_s, args.device)
                if mode == "eager":
                    hosts.append(host_issue(p, net, args.budget_s, args.device))
            if model in args.marginal and not fused and batch in args.marginal_batches:
                margins += marginals(p, net, mode, args.budget_s, args.device)
        except Exception as e:  # keep going: the other figures still count
            errors += 1
            print(f"FAIL {model} batch {batch} {mode} fused={fused}: {type(e).__name__}: {e}")
            continue
        rows.append(r)
        _save_profile(p, args.profiles, mode, fused)
        print(
            f"{model} b{batch} {mode}{' fused' if fused else ''}: additivity "
            f"{r['additivity_error']:+.1%}, launch overhead {_us(r['launch_overhead_s'])} us, "
            f"event {_us(r['mark_cost_s'])} us ({r['profile_wall_s']:.1f} s)",
            flush=True,
        )
        # Written after every row: a run cut short still leaves what it measured.
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(rows, indent=1))
        if predicted:
            pred_json = args.out_json.with_name("profiler_cuda_predictions.json")
            pred_json.write_text(json.dumps(predicted, indent=1))
        if hosts:
            host_json = args.out_json.with_name("profiler_cuda_host.json")
            host_json.write_text(json.dumps(hosts, indent=1))
        if margins:
            margin_json = args.out_json.with_name("profiler_cuda_marginals.json")
            margin_json.write_text(json.dumps(margins, indent=1))
        args.out_md.write_text(render(rows, args.goal, sys.argv, predicted, margins))
    if errors:
        return 1
    missed = [r["additivity_error"] for r in rows] + [r["error"] for r in predicted]
    return 3 if any(abs(e) > args.goal for e in missed) else 0


if __name__ == "__main__":
    sys.exit(main())

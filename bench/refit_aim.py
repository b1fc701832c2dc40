"""Where should the width pass aim its refits? A simulation of the fit loop under timing noise.

    python bench/refit_aim.py                 # 20,000 runs per (noise, aim), a few seconds each
    python bench/refit_aim.py --runs 2000 --sigmas 0.02 --aims 0 0.5

The loop is the pruner's own decisions (``pruner.methods.next_fit`` and ``kept_fit``) on a
made-up device: a fit to the predicted ratio x runs at 1 - s (1 - x) ** p of the unthinned
latency (s in 0.2-1, p in 0.5-2: the width model too hopeful or too cautious, and curved),
every measurement multiplied by 1 + N(0, sigma). The budget (0.3-0.95, reachable) is the
first fit's ratio. After the loop the kept fit is measured once more, with fresh noise, as
the pruner's final check does; it fails above the budget + tolerance.

Per (sigma, aim): how often that check fails, and where the kept fit really runs (its
true ratio / budget - 1; cutting deeper than asked costs accuracy): the median, the share
within the tolerance either way, and the share more than 10% under (a deep cut, most often
after a refit that overshot the budget wasted a fit). No timing: the figures are the
model's, not a device's. ``--noise-from`` reads a width_fits bench result to say what sigma
this CPU showed (re-timed against the pruner's own measurement of the same model).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

from compare_methods import utc_now  # bench/ is on sys.path

from pruner import WidthOptions
from pruner.methods import REFIT_AIM, kept_fit, next_fit

OUT = Path(__file__).parent / "results" / "refit_aim"
WIDTH_FITS = Path(__file__).parent / "results" / "width_fits_bracket.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20000, help="simulated prunes per cell")
    p.add_argument("--sigmas", nargs="+", type=float, default=[0.01, 0.02, 0.03])
    p.add_argument("--aims", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--tolerance", type=float, default=0.03)
    p.add_argument("--max-fits", nargs="+", type=int, default=[3, 4, 5])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-from", type=Path, default=WIDTH_FITS)
    p.add_argument("--out", type=Path, default=OUT)
    return p.parse_args(argv)


@dataclass(frozen=True)
class Outcome:
    failed: bool  # the final check: measured over budget + tolerance
    true_over: float  # the kept fit's true ratio / budget - 1
    fits: int


def simulate(rng: random.Random, sigma: float, aim: float, tolerance: float, max_fits: int):
    """One prune on a random device curve; the same draws for every aim given the seed."""
    s, p = rng.uniform(0.2, 1.0), rng.uniform(0.5, 2.0)
    goal = rng.uniform(max(0.3, 1.0 - s + 0.05), 0.95)  # reachable: the floor is 1 - s
    noise = [rng.gauss(0.0, sigma) for _ in range(max_fits + 1)]

    def true(x: float) -> float:
        return 1.0 - s * (1.0 - x) ** p

    history: list[tuple[float, float]] = []
    x: float | None = goal
    while x is not None:
        history.append((x, true(x) * (1.0 + noise[len(history)])))
        x = next_fit(history, goal, tolerance=tolerance, max_fits=max_fits, aim=aim)
    kept = history[kept_fit([m / goal - 1.0 for _, m in history], tolerance)][0]
    final = true(kept) * (1.0 + noise[-1])
    return Outcome(final > goal * (1.0 + tolerance), true(kept) / goal - 1.0, len(history))


def cell(args, sigma: float, aim: float, max_fits: int) -> dict:
    rng = random.Random(args.seed)
    runs = [simulate(rng, sigma, aim, args.tolerance, max_fits) for _ in range(args.runs)]
    return {
        "max_fits": max_fits,
        "sigma": sigma,
        "aim": aim,
        "runs": len(runs),
        "check_failed": sum(r.failed for r in runs) / len(runs),
        "median_true_over": statistics.median(r.true_over for r in runs),
        "within_tolerance": sum(abs(r.true_over) <= args.tolerance for r in runs) / len(runs),
        "deep_cut": sum(r.true_over < -0.10 for r in runs) / len(runs),
        "mean_fits": statistics.mean(r.fits for r in runs),
    }


def observed_noise(path: Path) -> str:
    """The per-measurement sigma a width_fits result implies, from pairs of measurements."""
    if not path.is_file():
        return f"no {path.name} to read the noise from"
    rows = [r for r in json.loads(path.read_text()) if r.get("pruner_ratio")]
    diffs = [r["ratio"] / r["pruner_ratio"] - 1.0 for r in rows]
    sd = statistics.stdev(diffs)
    return (
        f"{path.name}: the same pruned model re-timed against the pruner's own measurement, "
        f"{len(diffs)} runs: sd {sd:.2%} of the difference, so about {sd / 2**0.5:.2%} per "
        "measurement"
    )


def write(args, rows: list[dict], started: str) -> None:
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "# Refits' aim under timing noise (simulated)",
        "",
        f"- command: `python bench/refit_aim.py --runs {args.runs} --sigmas "
        f"{' '.join(map(str, args.sigmas))} --aims {' '.join(map(str, args.aims))} "
        f"--tolerance {args.tolerance} --max-fits {' '.join(map(str, args.max_fits))} "
        f"--seed {args.seed}`",
        f"- date: {started}; a simulation (no timing), see the script's docstring",
        f"- shipped: aim {REFIT_AIM} x tolerance under the budget, max_fits "
        f"{WidthOptions().max_fits}",
        f"- noise seen on this CPU: {observed_noise(args.noise_from)}",
        "",
        "Kept fit: its true ratio / budget - 1.",
        "",
        "| max_fits | sigma | aim (x tol) | final check fails | kept fit, median "
        "| within tolerance | over 10% under | fits made |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['max_fits']} | {r['sigma']:.2f} | {r['aim']:.2f} | {r['check_failed']:.1%} | "
            f"{r['median_true_over']:+.2%} | {r['within_tolerance']:.1%} | {r['deep_cut']:.1%} | "
            f"{r['mean_fits']:.2f} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = utc_now()
    rows = []
    for max_fits, sigma, aim in itertools.product(args.max_fits, args.sigmas, args.aims):
        rows.append(cell(args, sigma, aim, max_fits))
        r = rows[-1]
        print(
            f"max_fits {max_fits} sigma {sigma:.2f} aim {aim:.2f}: "
            f"check fails {r['check_failed']:.1%}, kept {r['median_true_over']:+.2%} (median), "
            f"{r['within_tolerance']:.1%} within, {r['deep_cut']:.1%} over 10% under",
            flush=True,
        )
    write(args, rows, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

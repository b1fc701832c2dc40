"""Rich tables for profiles."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from profiler import PREDICTION_TOLERANCE, BlockProfile


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def _si(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def profile_table(p: BlockProfile) -> Table:
    t = Table(
        title=f"{p.model}  batch {p.batch_size}  {p.dtype}{'  fused' if p.fused else ''}  on {p.device.name}"
        f" ({p.device.kind}, {p.device.threads} threads)",
        caption=f"end to end {_ms(p.end_to_end_s)} ms"
        + ("" if p.eager is None else f" (eager model {_ms(p.eager.median_s)} ms)")
        + f"; blocks {_ms(p.blocks_s)} + rest {_ms(p.rest_s)} ms; "
        f"additivity error {p.additivity_error:+.1%}; {p.from_table} pieces from the latency table",
    )
    for col in ("block", "kind", "stage"):
        t.add_column(col)
    for col in ("latency ms", "p10-p90 ms", "share", "FLOPs", "params"):
        t.add_column(col, justify="right")
    t.add_column("removable")
    t.add_column("replacement ms", justify="right")
    total = p.end_to_end_s
    for b in p.blocks:
        blk = b.block
        t.add_row(
            blk.name,
            blk.kind,
            str(blk.stage),
            _ms(b.latency_s),
            f"{_ms(b.latency.p10_s)}-{_ms(b.latency.p90_s)}",
            f"{b.latency_s / total:.1%}",
            _si(blk.flops),
            _si(blk.params),
            blk.replacement if blk.removable else f"no: {blk.reason}",
            _ms(b.replacement_latency_s) if blk.removable else "",
        )
    for s in p.rest:
        t.add_row(
            f"[dim]{s.name}[/dim]",
            "rest",
            "",
            _ms(s.latency.median_s),
            "",
            f"{s.latency.median_s / total:.1%}",
            _si(s.flops),
            _si(s.params),
            "",
            "",
        )
    return t


def console() -> Console:
    """A console that does not squeeze tables to 80 columns when output is piped."""
    c = Console()
    return c if c.is_terminal else Console(width=160)


def print_quality(p: BlockProfile, out: Console | None = None) -> None:
    """The profile's checks: one line when it passed, each problem with its fix when not."""
    out = out or console()
    q = p.quality
    if q is None:
        return
    seen = q.interference
    load = (
        ""
        if seen is None
        else f"; other processes used {seen.other_cores:.2f} of {seen.cores} cores"
        f" (load average {seen.load_1m_end:.2f})"
    )
    if q.ok:
        out.print(f"[green]checks passed[/green]: additivity {q.additivity_error:+.1%}{load}")
        return
    out.print(f"[bold yellow]this profile failed its checks[/bold yellow]{load}:")
    for problem in q.problems:
        out.print(f"  - {problem}")
    out.print(
        "  measurements from a failed profile go into the latency table only with --store-failed"
    )


def timing_line(p: BlockProfile) -> str | None:
    """How the pieces were timed, and the launch overhead when they were timed in one pass."""
    if p.timing == "alone":
        return None
    how = "one captured CUDA graph" if p.timing == "chained_graph" else "one forward pass"
    line = f"pieces timed in {how}, a timing mark between pieces"
    if p.mark_cost_s is not None:
        line += f" ({p.mark_cost_s * 1e6:.1f} us per mark, subtracted)"
    if p.launch_overhead_s is not None:
        line += (
            f"; launch overhead {_ms(p.launch_overhead_s)} ms per forward pass"
            " (the same pieces timed one launch at a time, minus in one pass)"
        )
    if p.timing == "chained" and p.device.kind == "cuda":
        # Measured on an H200: eager predictions of pruned models were off by up to 15% at
        # batch 1, graph ones within 3.6% (bench/results/gpu_h200.md).
        line += (
            "; eager on a GPU the blocks share a pipeline of host launches, so the latency "
            "of a pruned model predicted from them is rough: for budgets, use --cuda-graph"
        )
    return line


def check_line(p: BlockProfile) -> str | None:
    """The prediction check: the profile's prediction for a pruned model against it measured."""
    c = p.check
    if c is None:
        return None
    line = (
        f"prediction check: without {len(c.removed)} of {len(p.blocks)} blocks the model was "
        f"predicted at {c.predicted_fraction:.1%} of end to end and measured "
        f"{c.measured_fraction:.1%} ({_ms(c.measured.median_s)} of {_ms(c.reference.median_s)} "
        f"ms): error {c.error:+.1%}"
    )
    if abs(c.error) > PREDICTION_TOLERANCE:
        line += (
            f" [yellow](beyond ±{PREDICTION_TOLERANCE:.0%}: pruned models' latency predicted from this "
            "profile is about that far off; prunerd prune measures what it builds and removes "
            "more when it misses the budget)[/yellow]"
        )
    return line


def print_profile(p: BlockProfile, out: Console | None = None) -> None:
    out = out or console()
    out.print(profile_table(p))
    for line in (timing_line(p), check_line(p)):
        if line is not None:
            out.print(line)
    for warning in p.device.warnings:  # throttling GPU clocks, a check that could not run
        out.print(f"[yellow]warning[/yellow]: {warning}")
    print_quality(p, out)

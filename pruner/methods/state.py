"""What the steps of one prune share, in memory: the models, the data, the options, the results so far."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from torch import nn

from profiler import BlockProfile, LatencyTable, ModelSpec, measure_pair

from .. import distributed
from ..config import PruneOptions
from ..data import DataBundle
from ..distill import finetune
from ..plan import PrunePlan, RemovedBlock
from ..rebuild import apply_plan
from ..report import DepthSection, RoundRecord, WidthSection
from ..train import evaluate
from ..width import BudgetSplit

ProgressFn = Callable[[str, int, int], None]
EventFn = Callable[[dict[str, Any]], None]


def first_samples(batches: Iterable[Any], n: int | None) -> Iterable[Any]:
    """The first ``n`` samples of re-iterable ``(x, y)`` batches (all of them when n is None)."""
    if n is None:
        return batches

    class _First:
        def __iter__(self) -> Iterator[Any]:
            seen = 0
            for x, y in batches:
                if seen >= n:
                    return
                yield x[: n - seen], y[: n - seen]
                seen += len(y)

    return _First()


@dataclass
class PruneState:
    """One prune in progress. The skeleton fills the inputs and ``profile``; each step reads
    what the steps before it left and leaves the model it pruned (``student``), what it
    removed or kept, its budget and prediction (seconds), its rounds and its report section.

    ``measured`` is (baseline, student) latency in seconds, timed interleaved, when the
    current student has been measured; a step that changes the student clears it. The
    baseline is timed as :attr:`timed_baseline` gives it.
    """

    spec: ModelSpec
    teacher: nn.Module
    data: DataBundle
    test: Iterable[Any]
    options: PruneOptions
    table: LatencyTable | None
    emit: EventFn
    step: ProgressFn
    profile: BlockProfile | None = None
    student: nn.Module | None = None
    removed: tuple[RemovedBlock, ...] = ()
    channels: dict[str, int] = field(default_factory=dict)
    budget_s: float = 0.0
    predicted_s: float = 0.0
    measured: tuple[float, float] | None = None
    depth_fraction: float | None = None  # what a budget split leaves the block pass
    rounds: list[RoundRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    depth: DepthSection | None = None
    width: WidthSection | None = None
    split: BudgetSplit | None = None

    @cached_property
    def timed_baseline(self) -> nn.Module:
        """The teacher in the form every student takes (traced by torch.fx, rebuilt from an
        empty plan), so that a timing compares pruning with no pruning: tracing alone ran
        resnet20 about 4% and resnet56 about 5% faster than the modules they came from
        (CPU, batch 1), a saving the student would otherwise be credited with."""
        return apply_plan(self.teacher, PrunePlan(self.spec)).eval()

    def measure(self) -> tuple[float, float]:
        """Time the baseline and the student interleaved (seconds per batch); remember it.

        With a process group rank 0 times and hands the figures to every rank; the
        others wait in the broadcast meanwhile: timing beside ranks that compute on
        the same CPU (or feed the same GPU) would measure the contention.
        """
        run = self.options.run
        self.step("measuring", 0, 1)
        student = self.student
        assert student is not None
        self.measured = distributed.from_main(
            lambda: measure_pair(
                self.timed_baseline,
                student,
                self.spec,
                batch_size=run.latency_batch_size,
                device=run.device,
                timing_budget_s=run.timing_budget_s,
                threads=run.latency_threads or run.threads,
                cuda_graph=run.cuda_graph,
            )
        )
        return self.measured

    def recover(self, tune: bool = True) -> tuple[float, float]:
        """Test accuracy of the student before and after distillation fine-tuning (when ``tune``)."""
        run = self.options.run
        assert self.student is not None
        before = evaluate(self.student, self.test, run.device).accuracy
        if not (tune and run.epochs > 0):
            return before, before
        self.step("finetuning", 0, run.epochs)
        finetune(
            self.student,
            self.teacher,
            self.data.train,
            self.data.val,
            run.epochs,
            lr=run.lr,
            device=run.device,
            progress=run.progress_bar,
            on_epoch=lambda stats: self.step("finetuning", stats.epoch, run.epochs),
        )
        return before, evaluate(self.student, self.test, run.device).accuracy

    def over_budget(self, measured_s: float, budget_s: float) -> str:
        """The warning for a measured latency over its budget (seconds)."""
        return (
            f"measured latency {measured_s * 1e3:.3f} ms is over the budget "
            f"{budget_s * 1e3:.3f} ms (+{self.options.run.tolerance:.0%} tolerance)"
        )

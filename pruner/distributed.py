"""Training, fine-tuning and pruning across processes with torch.distributed (DDP under torchrun).

Everything here is a no-op without a process group: one process runs exactly the
code it ran before this module existed. Under ``torchrun`` (or ``prunerd ...
--nproc-per-node N``, which starts torchrun's elastic agent through :func:`launch`),
:func:`session` joins the group the agent set up in the environment: gloo on CPU,
NCCL on CUDA with one GPU per local rank.

The rules the pruner follows with a group:

- ``--batch-size`` is the global batch: each of N ranks trains on its 1/N share of
  every batch the one-process run draws (:func:`shard`), so the steps per epoch,
  the learning-rate schedule and the samples of each step are those of one
  process, and a resume file continues under any number of processes. Every rank
  draws the same permutation and augmentation from the same seeded generator.
- DDP averages the student's gradients (and so the HFP gates', which are its
  BatchNorm scales); the teacher runs locally on each rank's share.
- Evaluation and probe features split the batches round-robin between ranks
  (:func:`split`) and sum or gather the results, so every rank gets the same
  figures; the probes themselves are fitted in turns (:func:`map_in_turns`).
- Decisions (selection, widths) and latency are computed by rank 0 alone and
  broadcast (:func:`from_main`): every rank agrees, and while rank 0 times, the
  others wait blocked in the broadcast instead of computing beside it.
- Rank 0 does all file I/O (checkpoints, resume file, plan, report, latency table)
  and draws the progress bar.

A rank that dies is noticed by the elastic agent, which stops the others and fails
the run; :data:`TIMEOUT_S` only bounds how long a live rank waits for a stuck one.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .adapt import AdaptedBatches
from .data import Batches

T = TypeVar("T")
Batch = tuple[torch.Tensor, torch.Tensor]

TIMEOUT_ENV = "PRUNERD_DIST_TIMEOUT_S"
# Long enough for rank 0 to profile a large model or export it while the others wait.
TIMEOUT_S = 3600.0

# Per-rank batches smaller than this normalise with SyncBatchNorm on CUDA (see parallel()).
SYNC_BN_BELOW = 32


# ---------------------------------------------------------------------------- the group


def launched() -> bool:
    """Whether torchrun started this process as one of several (WORLD_SIZE > 1 in the env)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def active() -> bool:
    """Whether a process group of more than one rank is in use."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes files and draws progress."""
    return rank() == 0


@contextlib.contextmanager
def session(device: str = "cpu") -> Iterator[None]:
    """Join the process group torchrun described in the environment, and leave it after.

    Nothing happens without torchrun (or with one process), or when a group is
    already up. gloo for CPU devices; NCCL for CUDA, with this rank's GPU
    (LOCAL_RANK) made current, so "cuda" means it everywhere.
    """
    if not launched() or (dist.is_available() and dist.is_initialized()):
        yield
        return
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV) or TIMEOUT_S))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    try:
        yield
    finally:
        # DDP wrappers still waiting for the garbage collector hold the group; freed after
        # it was destroyed, at exit, they abort the process ("terminate called without an
        # active exception").
        gc.collect()
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def _comm_device() -> torch.device:
    """Where tensors of a collective live: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` as rank ``src`` has it, on every rank (pickled between our own processes)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


class MainRankError(RuntimeError):
    """An error rank 0 raised in :func:`from_main`, raised again on the other ranks.

    Errors raised again carry ``from_main_rank = True``: the CLI prints them once, on rank 0.
    """


def from_main(fn: Callable[[], T]) -> T:
    """``fn()`` run by rank 0 alone, its result broadcast to every rank.

    Used for latency measurements and decisions: the other ranks wait blocked in
    the broadcast (gloo and NCCL waits do not spin a CPU core) and never time or
    compute on the same machine while rank 0 measures. An exception on rank 0 is
    raised there and, as :class:`MainRankError` with its message (ValueError and
    FileNotFoundError keep their type), on every other rank.
    """
    if not active():
        return fn()
    result: tuple[str, Any] = ("ok", None)
    error: BaseException | None = None
    if is_main():
        try:
            result = ("ok", fn())
        except Exception as e:
            error, result = e, ("error", (type(e).__name__, str(e)))
    kind, value = broadcast_object(result)
    if error is not None:
        raise error
    if kind == "error":
        name, message = value
        cls = {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError}.get(name)
        err = cls(message) if cls else MainRankError(f"rank 0: {name}: {message}")
        err.from_main_rank = True  # type: ignore[attr-defined]
        raise err
    return value


def sum_over_ranks(*values: Any) -> tuple[Any, ...]:
    """Each value (a number or a scalar tensor) summed over ranks, as floats; unchanged alone."""
    if not active():
        return values
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return tuple(float(v) for v in t.cpu())


def map_in_turns(
    items: Sequence[T], fn: Callable[[T], Any], done: Callable[[int, int], None] | None = None
) -> dict[T, Any]:
    """``{item: fn(item)}``; with a group, rank r computes items r, r + N, ... and all get all.

    ``done(k, total)`` follows this rank's own progress.
    """
    out: dict[T, Any] = {}
    r, n = rank(), world_size()
    for i, item in enumerate(items):
        if i % n == r:
            out[item] = fn(item)
            if done:
                done(i + 1, len(items))
    if not active():
        return out
    parts: list[Any] = [None] * n
    dist.all_gather_object(parts, out)
    merged = {k: v for part in parts for k, v in part.items()}
    return {item: merged[item] for item in items}


# ---------------------------------------------------------------------------- the data


class _RoundRobin:
    """Batch i of ``source`` goes to rank i mod N; with ``equal``, only whole rounds of N batches."""

    def __init__(self, source: Iterable[Batch], rank: int, world: int, equal: bool) -> None:
        self.source, self.rank, self.world, self.equal = source, rank, world, equal
        if equal:
            self.count = len(source) // world  # type: ignore[arg-type]
            if self.count == 0:
                raise ValueError(
                    f"{len(source)} training batches cannot be shared by {world} processes"  # type: ignore[arg-type]
                )

    def __iter__(self) -> Iterator[Batch]:
        stop = self.count * self.world if self.equal else None
        for i, batch in enumerate(self.source):
            if stop is not None and i >= stop:
                break
            if i % self.world == self.rank:
                yield batch

    def __len__(self) -> int:
        if self.equal:
            return self.count
        return len(range(self.rank, len(self.source), self.world))  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # rng_state and the like are the source's
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)


def shard(batches: Iterable[Batch]) -> Iterable[Batch]:
    """This rank's share of training batches (``batches`` itself without a group).

    :class:`~pruner.data.Batches` (also behind an adaptation) shard every batch:
    rank r of N takes the samples r, r + N, ... of each batch the one-process run
    draws (the last batch padded from the epoch's start to a multiple of N), with
    the same augmentation. Any other loader must have ``len()``: its batches go
    round-robin, whole rounds only, so every rank takes as many steps (DDP needs it).
    """
    if not active():
        return batches
    if isinstance(batches, Batches):
        return batches.sharded(rank(), world_size())
    if isinstance(batches, AdaptedBatches):
        return AdaptedBatches(shard(batches.source), batches.adaptation)
    if not hasattr(batches, "__len__"):
        raise ValueError("training data without len() cannot be shared between processes")
    return _RoundRobin(batches, rank(), world_size(), equal=True)


def rank_batch_size(batches: Iterable[Batch]) -> int | None:
    """Samples of each batch this rank trains on, when the batches say (after :func:`shard`)."""
    if isinstance(batches, AdaptedBatches):
        return rank_batch_size(batches.source)
    size = getattr(batches, "batch_size", None)
    if size is None:
        return None
    if isinstance(batches, Batches) and batches.sharding is not None:
        return -(-int(size) // batches.sharding[1])
    return int(size)  # whole batches go to each rank


def split(batches: Iterable[Batch]) -> Iterable[Batch]:
    """For evaluation: batch i to rank i mod N, every batch once (``batches`` without a group)."""
    if not active():
        return batches
    return _RoundRobin(batches, rank(), world_size(), equal=False)


def owns(i: int) -> bool:
    """Whether this rank handles batch ``i`` of a stream that :func:`split` would share."""
    return i % world_size() == rank()


def gather_rows(
    positions: list[torch.Tensor], columns: dict[str, list[torch.Tensor]]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rows that each rank computed for its batches, gathered on every rank in stream order.

    ``positions`` are the rows' places in the whole stream, one tensor per batch;
    ``columns`` the per-batch tensors (rows first) by name. Returns the positions
    and the columns, concatenated over ranks and sorted by position.
    """
    if active():
        parts: list[Any] = [None] * world_size()
        dist.all_gather_object(parts, (positions, columns))
        positions = [p for part, _ in parts for p in part]
        columns = {k: [t for _, cols in parts for t in cols[k]] for k in columns}
    if not positions:
        return torch.zeros(0, dtype=torch.int64), {k: torch.zeros(0) for k in columns}
    pos = torch.cat(positions)
    order = torch.argsort(pos)
    return pos[order], {k: torch.cat(v)[order] for k, v in columns.items()}


# ---------------------------------------------------------------------------- the model


def average_buffers(model: nn.Module) -> None:
    """Average the floating buffers (BatchNorm running statistics) over ranks.

    Each rank's BatchNorm tracks the statistics of its own share; before the model
    is evaluated or saved, every rank takes their mean, so all hold the same model.
    """
    if not active():
        return
    world = world_size()
    with torch.no_grad():
        for b in model.buffers():
            if b.is_floating_point():
                dist.all_reduce(b)
                b.div_(world)
            else:
                dist.broadcast(b, 0)


def _sync_bn(device: str | torch.device, per_rank_batch: int | None) -> bool:
    return (
        torch.device(device).type == "cuda"
        and per_rank_batch is not None
        and per_rank_batch < SYNC_BN_BELOW
    )


@contextlib.contextmanager
def parallel(
    model: nn.Module, device: str | torch.device = "cpu", per_rank_batch: int | None = None
) -> Iterator[nn.Module]:
    """``model`` wrapped in DDP for the duration (``model`` itself without a group).

    DDP averages gradients over ranks after each backward; buffers are not
    broadcast at every step, :func:`average_buffers` runs at the end instead (one
    collective per evaluation rather than one per step). BatchNorm is synchronised
    (SyncBatchNorm, sharing the same tensors, swapped back afterwards) only on CUDA
    when a rank's share of a batch is under :data:`SYNC_BN_BELOW`: with larger
    shares per-rank statistics are as good (ImageNet recipes train with 32 per
    GPU), and on CPU torch's SyncBatchNorm does not run at all; every BatchNorm
    would also cost a gloo round trip per step.
    """
    if not active():
        yield model
        return
    swapped = _swap_sync_bn(model) if _sync_bn(device, per_rank_batch) else {}
    cuda = torch.device(device).type == "cuda"
    ddp = nn.parallel.DistributedDataParallel(
        model, device_ids=[torch.cuda.current_device()] if cuda else None, **_NO_BUFFER_SYNC
    )
    failed = True
    try:
        yield ddp
        failed = False
    finally:
        del ddp
        for name, original in swapped.items():
            _set_submodule(model, name, original)
        if not failed:  # after an error the other ranks may be elsewhere: no collective
            average_buffers(model)


# Buffers synchronised once at the start (rank 0's), not before every forward; the name of
# that option changed in recent torch (broadcast_buffers is deprecated there).
_NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


def _swap_sync_bn(model: nn.Module) -> dict[str, nn.Module]:
    """Put a SyncBatchNorm sharing parameters and buffers in place of each BatchNorm."""
    swapped = {}
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and name:
            sync = nn.SyncBatchNorm.convert_sync_batchnorm(m)
            _set_submodule(model, name, sync)
            swapped[name] = m
    return swapped


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


# ---------------------------------------------------------------------------- launching


@dataclass(frozen=True)
class RankFailure:
    """How one rank of a launched run ended: exit code, or the signal that killed it."""

    rank: int
    local_rank: int
    pid: int
    exitcode: int
    signal: str | None

    def describe(self) -> str:
        how = f"was killed by {self.signal}" if self.signal else f"exited with {self.exitcode}"
        return f"rank {self.rank} (pid {self.pid}) {how}"


@dataclass(frozen=True)
class LaunchResult:
    """A run of :func:`launch`: the exit code to pass on, and the failed ranks, first first."""

    exitcode: int
    failures: tuple[RankFailure, ...] = ()


def launch(
    nproc: int, cmd: Sequence[str], max_restarts: int = 0, log_dir: str | None = None
) -> LaunchResult:
    """Run ``cmd`` as ``nproc`` processes of one node under torchrun's elastic agent.

    The same as ``torchrun --standalone --nproc-per-node NPROC --max-restarts 0
    --no-python CMD...``: the agent picks a free port, sets RANK, WORLD_SIZE,
    LOCAL_RANK and MASTER_ADDR/PORT for each process, and when one fails, stops
    the others. The exit code is 0, the failing rank's exit code, or 128 + the
    number of the signal that killed it. ``log_dir``: where the agent keeps its
    per-run directories (torchrun's ``--log-dir``; default a new ``torchelastic_*``
    directory in the temporary directory, which it leaves behind).
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.get_args_parser().parse_args(
        [
            "--standalone",
            f"--nproc-per-node={int(nproc)}",
            f"--max-restarts={int(max_restarts)}",
            *([f"--log-dir={log_dir}"] if log_dir else []),
            "--no-python",
            *cmd,
        ]
    )
    try:
        torchrun.run(args)
    except ChildFailedError as e:
        first_rank, _ = e.get_first_failure()
        ordered = sorted(e.failures.items(), key=lambda kv: (kv[0] != first_rank, kv[0]))
        failures = tuple(
            RankFailure(
                r, f.local_rank, f.pid, f.exitcode, f.signal_name() if f.exitcode < 0 else None
            )
            for r, f in ordered
        )
        code = failures[0].exitcode
        return LaunchResult(code if code > 0 else 128 - code, failures)
    return LaunchResult(0)


def command_of(module: str, argv: Sequence[str]) -> list[str]:
    """The command line that runs ``python -m module argv...`` with this interpreter."""
    return [sys.executable, "-m", module, *argv]

"""One rank of a prune job run as several processes: ``python -m service.rank_main JOB_FILE``.

Started by torchrun's elastic agent inside the job's worker (service.rank_job), which
set RANK, LOCAL_RANK, WORLD_SIZE and the rendezvous in the environment. The rank dies
with the worker (parent-death signal), reports in to the worker over its
:mod:`service.rank_link` socket, joins the process group (gloo on CPU, NCCL with GPU
LOCAL_RANK on CUDA) and runs the prune job as the one-process worker would. Rank 0's
progress, milestones and result go to the worker, and any rank's own error; every rank
says goodbye before it returns, so a rank whose link closes without one died.

Exit status: 0 when the job ran, 1 when it raised (the error is reported first).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from pathlib import Path

import msgspec

from .job_context import JobContext
from .jobs import die_with_parent, prune_here
from .rank_job import RankJob
from .rank_link import RankLink


def main(argv: list[str]) -> int:
    # Ctrl-C in a terminal is for the daemon to handle; the agent stops ranks with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if len(argv) != 1:
        print("usage: python -m service.rank_main JOB_FILE", file=sys.stderr)
        return 2
    job = msgspec.json.decode(Path(argv[0]).read_bytes(), type=RankJob)
    die_with_parent(job.parent_pid)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    cuda = str(job.params.get("device") or "cpu").startswith("cuda")
    link = RankLink.connect(job.address)
    ctx = JobContext(link, Path(job.state_dir))
    ctx.send(
        {
            "event": "hello",
            "token": job.token,
            "rank": rank,
            "local_rank": local_rank,
            "pid": os.getpid(),
            "device": f"cuda:{local_rank}" if cuda else "cpu",
        }
    )
    try:
        status = _run(job, ctx, rank)
    finally:
        with contextlib.suppress(OSError):  # the worker is gone: nobody to say goodbye to
            ctx.send({"event": "bye"})
        link.close()
    return status


def _run(job: RankJob, ctx: JobContext, rank: int) -> int:
    from profiler import retain_freed_memory  # same heap policy as the one-process worker
    from pruner import distributed

    retain_freed_memory()
    try:
        with distributed.session(str(job.params.get("device") or "cpu")):
            try:
                result = prune_here(job.params, ctx)
            except BaseException as e:  # noqa: BLE001 - a rank's error is the job's failure
                # Reported while the group is up: the other ranks fail only once it is torn
                # down, so the error that caused theirs arrives first.
                _report(ctx, e)
                return 1
        if rank == 0:
            ctx.send({"event": "done", "result": result})
        return 0
    except BaseException as e:  # noqa: BLE001 - joining or leaving the group failed
        _report(ctx, e)
        return 1


def _report(ctx: JobContext, e: BaseException) -> None:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    error = {"type": type(e).__name__, "message": str(e), "traceback": "".join(tb[-6:])}
    ctx.send({"event": "failed", "error": error})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Jobs: the SQLite (WAL) job store, the job kinds, and the worker processes that run them.

A job runs in its own process so that a crash, an out-of-memory kill or a hung library
call costs that job only. Workers are forked by multiprocessing's forkserver, a process
that has imported torch and prunerd and does nothing else: a job starts from an
interpreter that has run no other job and holds none of the daemon's sockets or files,
without paying the imports (about 1.5 s) each time. The worker talks to
the daemon over a pipe, JSON text only (``send_bytes``; never the pickling ``send``):
``{"event": "progress"|"block"|"done"|"failed", ...}``. The daemon polls the pipe's
file descriptor in its one poll loop; end of file without a final message means the
worker died, and its exit code or signal becomes the job's failure reason.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import multiprocessing.forkserver
import os
import secrets
import signal
import sqlite3
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec

from profiler import open_database

from .job_context import JobContext, JobFailed, default_output
from .limits import RequestBounds, shape_source
from .protocol import FINISHED_STATUSES, PARAMS_TYPES, ModelPolicy

# --------------------------------------------------------------------------- the store


@dataclass
class Job:
    """One job as stored. Times are Unix seconds; ``error`` is {"type", "message", ...}."""

    id: str
    kind: str
    params: dict[str, Any]
    status: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: dict[str, Any] | None = None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        return {**msgspec.to_builtins(self), "duration_s": self.duration_s}


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, params TEXT NOT NULL, status TEXT NOT NULL,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL, error TEXT);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE TABLE IF NOT EXISTS results (job_id TEXT PRIMARY KEY REFERENCES jobs(id), result TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS block_latency (
    model TEXT, block TEXT, device TEXT, batch INTEGER, seconds REAL NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (model, block, device, batch));
CREATE TABLE IF NOT EXISTS model_latency (
    model TEXT, device TEXT, batch INTEGER, seconds REAL NOT NULL, additivity_error REAL,
    updated_at REAL NOT NULL, checks_passed INTEGER, other_cores REAL, prediction_error REAL,
    PRIMARY KEY (model, device, batch));
"""
# Columns added after the first release: (table, column, type) added to older stores on open.
_ADDED_COLUMNS = (
    ("model_latency", "checks_passed", "INTEGER"),
    ("model_latency", "other_cores", "REAL"),
    ("model_latency", "prediction_error", "REAL"),
)

_COLUMNS = "id, kind, params, status, created_at, started_at, finished_at, error"


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection (the /metrics thread): in WAL mode it never blocks the writer."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0, check_same_thread=False)


def _create_schema(db: sqlite3.Connection) -> None:
    # NORMAL in WAL mode is still crash-safe for the database; a power cut may lose the last commit.
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    for table, column, kind in _ADDED_COLUMNS:
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


class JobStore:
    """Jobs, results and the latest latencies, in ``<state_dir>/jobs.sqlite``. Owned by the daemon's main thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = open_database(
            path,
            "job store",
            "move it aside (an empty store is made in its place; its jobs are lost to the "
            "daemon) or give the daemon another --state-dir",
            timeout_s=10.0,
            setup=_create_schema,
            tables=frozenset({"jobs", "results", "block_latency", "model_latency"}),
        )

    def close(self) -> None:
        self.db.close()

    @staticmethod
    def _row(row: tuple[Any, ...]) -> Job:
        return Job(
            id=row[0],
            kind=row[1],
            params=json.loads(row[2]),
            status=row[3],
            created_at=row[4],
            started_at=row[5],
            finished_at=row[6],
            error=None if row[7] is None else json.loads(row[7]),
        )

    def create(self, kind: str, params: dict[str, Any]) -> Job:
        job = Job(
            id=secrets.token_hex(6),
            kind=kind,
            params=params,
            status="queued",
            created_at=time.time(),
        )
        with self.db:
            self.db.execute(
                f"INSERT INTO jobs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL, NULL, NULL)",
                (job.id, kind, json.dumps(params), job.status, job.created_at),
            )
        return job

    def output_owner(self, paths: list[str]) -> tuple[str, str] | None:
        """(job id, output directory) of a job whose output directory is one of ``paths``."""
        if not paths:
            return None
        marks = ", ".join("?" * len(paths))
        row = self.db.execute(
            "SELECT id, json_extract(params, '$.output') FROM jobs "
            f"WHERE json_extract(params, '$.output') IN ({marks}) LIMIT 1",
            paths,
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def get(self, job_id: str) -> Job | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else self._row(row)

    def list(self, limit: int = 50, status: str | None = None) -> list[Job]:
        """Newest first."""
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY created_at DESC LIMIT ?", (*args, limit)
        ).fetchall()
        return [self._row(r) for r in rows]

    def queued(self) -> list[Job]:
        """Oldest first: the order jobs run in."""
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE status = 'queued' ORDER BY created_at"
        ).fetchall()
        return [self._row(r) for r in rows]

    def mark_started(self, job_id: str) -> None:
        with self.db:
            self.db.execute(
                "UPDATE jobs SET status = 'running', started_at = ? WHERE id = ?",
                (time.time(), job_id),
            )

    def finish(
        self,
        job_id: str,
        status: str,
        error: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        assert status in FINISHED_STATUSES, status
        with self.db:
            self.db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, error = ? WHERE id = ?",
                (status, time.time(), None if error is None else json.dumps(error), job_id),
            )
            if result is not None:
                self.db.execute(
                    "INSERT OR REPLACE INTO results (job_id, result) VALUES (?, ?)",
                    (job_id, json.dumps(result)),
                )

    def result(self, job_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT result FROM results WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def interrupt_running(self) -> list[str]:
        """On start-up: jobs the previous daemon was running cannot be resumed; say so."""
        ids = [r[0] for r in self.db.execute("SELECT id FROM jobs WHERE status = 'running'")]
        error = json.dumps(
            {"type": "Interrupted", "message": "the daemon stopped while this job was running"}
        )
        with self.db:
            self.db.execute(
                "UPDATE jobs SET status = 'interrupted', finished_at = ?, error = ? WHERE status = 'running'",
                (time.time(), error),
            )
        return ids

    def record_block(self, model: str, block: str, device: str, batch: int, seconds: float) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO block_latency VALUES (?, ?, ?, ?, ?, ?)",
                (model, block, device, batch, seconds, time.time()),
            )

    def record_model(
        self,
        model: str,
        device: str,
        batch: int,
        seconds: float,
        additivity_error: float | None,
        checks_passed: bool | None = None,
        other_cores: float | None = None,
        prediction_error: float | None = None,
    ) -> None:
        """The latest profile of a model: end to end (s), additivity, and its own checks
        (``None``: not checked); ``other_cores``: other processes' CPU use while it was timed;
        ``prediction_error``: its prediction check (``None``: no check)."""
        passed = None if checks_passed is None else int(checks_passed)
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO model_latency (model, device, batch, seconds, "
                "additivity_error, updated_at, checks_passed, other_cores, prediction_error) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (model, device, batch, seconds, additivity_error, time.time(), passed,
                 other_cores, prediction_error),
            )  # fmt: skip


# --------------------------------------------------------------------------- job kinds


@dataclass(frozen=True)
class JobKind:
    """A kind of job: ``run(params, ctx) -> result dict`` runs in the worker process;
    ``unavailable()`` returns why this build cannot run it (or None when it can);
    ``check(params)`` raises :class:`ParamsError` for what the worker would refuse, in the
    daemon before the job is queued (it imports no torch)."""

    name: str
    run: Callable[[dict[str, Any], JobContext], dict[str, Any]]
    unavailable: Callable[[], str | None] = lambda: None
    check: Callable[[dict[str, Any]], None] = lambda params: None  # raises ParamsError


def _run_profile(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    import profiler

    spec = _requested_spec(params)
    _check_model_shape(params, ctx, spec)
    from pruner import load_to_profile  # a pruned checkpoint is rebuilt from its plan

    spec, model = load_to_profile(spec, params["checkpoint"])
    table = profiler.LatencyTable(ctx.state_dir / "latency.sqlite")
    profile = profiler.profile_model(
        model,
        spec,
        batch_size=params["batch_size"],
        device=params["device"],
        fused=params["fused"],
        table=table,
        remeasure=params["remeasure"],
        progress=ctx.progress,
        on_block=ctx.block,
    )
    return profile.to_dict()


def _profile_unavailable() -> str | None:
    import profiler

    # Its public names, not the attribute: that would import the profiler, and torch with it.
    if "profile_model" not in profiler.__all__:
        return "profile jobs are not available in this build (profiler.profile_model is missing)"
    return None


def _requested_spec(params: dict[str, Any]) -> Any:  # profiler.ModelSpec
    """The spec a job's model has: its checkpoint's, else the request's fields, with what
    they leave unset taken from the model (a ``.pt2``'s exported input) or the defaults."""
    import profiler

    size = params.get("input_size")
    return profiler.resolve_spec(
        params["model"],
        params.get("in_channels"),
        params.get("num_classes"),
        None if size is None else tuple(size),
        params.get("checkpoint"),
    )


def _check_model_shape(params: dict[str, Any], ctx: JobContext, spec: Any = None) -> None:
    """The daemon's bounds on the input the job's model takes. Checked at submit were the
    request's own fields (or their defaults); a checkpoint's stored spec, or the input a
    ``.pt2`` program was exported with, decides over them."""
    source = shape_source(params)
    if ctx.bounds is None or source is None:
        return  # built from the request's fields, as checked at submit
    if spec is None:
        spec = _requested_spec(params)
    bounds = RequestBounds(**ctx.bounds)
    bounds.check_model_shape(params, spec.in_channels, spec.input_size, source)


def _run_prune(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    _check_model_shape(params, ctx)
    if params.get("ranks", 1) > 1:  # jobs stored before ranks existed ran as one process
        from .rank_job import run_ranks

        return run_ranks(params, ctx)
    return prune_here(params, ctx)


def prune_here(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """A prune job in this process (the worker, or one rank of a job run as several)."""
    from pruner import prune_checkpoint

    config = prune_config(params, params.get("output") or default_output(ctx), ctx.state_dir)
    report = prune_checkpoint(config, progress=ctx.progress, on_event=ctx.milestone)
    return report.to_dict()


class ParamsError(ValueError):
    """Parameters a job would refuse; ``field`` is the dotted name of the first bad one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _check_prune(params: dict[str, Any]) -> None:
    prune_config(params, params.get("output") or "", Path())


def prune_config(params: dict[str, Any], out: str, state_dir: Path) -> Any:  # PruneConfig
    """The checkpoint run a prune request asks for, writing to ``out``; :class:`ParamsError`
    names a bad option as the request names it (``params.options.NAME``)."""
    # No torch: the daemon checks requests with it.
    from pruner.config import FLAT_FIELDS, ConfigError, PruneConfig

    options = dict(params.get("options") or {})
    # The request's own fields decide these; options may tune everything else.
    fixed = {
        "model",
        "checkpoint",
        "data",
        "out",
        "budget",
        "budget_s",
        "budget_ms",
        "method",
        "device",
        "table",
    }
    clash = sorted(fixed & set(options))
    if clash:
        raise ParamsError(
            f"params.options may not set {clash}: use the request's own fields", "params.options"
        )
    unknown = sorted(set(options) - set(FLAT_FIELDS))
    if unknown:
        raise ParamsError(
            f"params.options: unknown option(s) {unknown}; a request may set "
            f"{sorted(set(FLAT_FIELDS) - fixed)}",
            "params.options",
        )
    try:
        return PruneConfig.from_flat(
            {
                "model": params["model"],
                "checkpoint": params["checkpoint"],
                "data": params["dataset"],
                "out": out,
                "budget": params.get("budget_ratio"),
                "budget_s": params.get("budget_s"),
                "method": params["method"],
                "device": params["device"] or "cpu",
                "latency_batch_size": params["batch_size"],
                "table": str(state_dir / "latency.sqlite"),
                **options,
            }
        )
    except ConfigError as e:  # named as the request names them
        names = {"budget": "params.budget_ratio", "budget_s": "params.budget_s"}
        names |= {f: f"params.options.{f}" for f in e.fields if f not in names}
        raise ParamsError(e.render(names), names[e.fields[0]] if e.fields else None) from None


def _prune_unavailable() -> str | None:
    import importlib.util

    # find_spec does not import: the daemon never pays for (or runs) the pruner's imports.
    if (
        importlib.util.find_spec("pruner") is None
        or importlib.util.find_spec("pruner.skeleton") is None
    ):
        return "prune jobs are not available in this build (pruner.prune_checkpoint is missing)"
    return None


def _run_selftest(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    steps, seconds = params["steps"], params["seconds"]
    for i in range(steps):
        time.sleep(seconds / steps)
        ctx.progress("selftest", i + 1, steps)
        if params["fail"] and i == steps // 2:
            raise RuntimeError("selftest asked to fail")
    return {"steps": steps, "seconds": seconds, "pid": os.getpid()}


JOB_KINDS: dict[str, JobKind] = {
    "profile": JobKind("profile", _run_profile, _profile_unavailable),
    "prune": JobKind("prune", _run_prune, _prune_unavailable, _check_prune),
    "selftest": JobKind("selftest", _run_selftest),
}
assert set(JOB_KINDS) == set(PARAMS_TYPES)


# --------------------------------------------------------------------------- worker processes


def worker_main(
    kind: str, params_json: str, state_dir: str, conn: Connection, bounds_json: str = "null"
) -> None:
    """Entry point of a worker process: run one job, report, exit. ``bounds_json``: the
    daemon's request bounds, for what only the worker learns (a checkpoint's own shape)."""
    # Ctrl-C in a terminal signals the whole process group; the daemon decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The parent is the forkserver, which exits when the daemon does (end of file on the
    # pipe the daemon holds): a killed daemon still takes its jobs with it.
    die_with_parent()
    from profiler import retain_freed_memory  # same heap policy as `prunerd profile`

    retain_freed_memory()
    ctx = JobContext(conn, Path(state_dir), json.loads(bounds_json))
    try:
        result = JOB_KINDS[kind].run(json.loads(params_json), ctx)
        ctx.send({"event": "done", "result": result})
    except JobFailed as e:
        ctx.send({"event": "failed", "error": e.error})
    except BaseException as e:  # noqa: BLE001 - everything a job raises is that job's failure
        tb = traceback.format_exception(type(e), e, e.__traceback__)
        ctx.send(
            {
                "event": "failed",
                "error": {
                    "type": type(e).__name__,
                    "message": str(e),
                    "traceback": "".join(tb[-6:]),
                },
            }
        )
    finally:
        conn.close()


def die_with_parent(parent_pid: int | None = None) -> None:
    """Linux: get SIGKILL when the parent dies, so a killed daemon leaves no orphan job running.

    With ``parent_pid``, exit at once if the parent is already gone (it died before the
    request took effect).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere the orphan ends at its next report, on the broken pipe
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def describe_exit(exitcode: int | None) -> str:
    """Why a worker that sent no final message went away."""
    if exitcode is None:
        return "worker did not exit"
    if exitcode < 0:
        sig = (
            signal.Signals(-exitcode).name
            if -exitcode in signal.valid_signals()
            else str(-exitcode)
        )
        hint = " (out of memory, or killed)" if -exitcode == signal.SIGKILL else ""
        return f"worker was killed by {sig}{hint}"
    return f"worker exited with code {exitcode} before reporting a result"


@dataclass
class Worker:
    """A running job's process and the daemon's end of its pipe."""

    job: Job
    process: multiprocessing.process.BaseProcess
    conn: Connection
    stop_reason: str | None = None  # "cancelled" | "interrupted" once the daemon asked it to stop
    kill_at: float | None = None  # monotonic time after which SIGTERM becomes SIGKILL
    forked_from: int | None = None  # the forkserver's pid (its death takes the worker along)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def fileno(self) -> int:
        return self.conn.fileno()

    def stop(self, reason: str, grace_s: float) -> None:
        """Ask the worker to stop (SIGTERM); ``reap`` escalates to SIGKILL after ``grace_s``."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.kill_at = time.monotonic() + grace_s
            self.process.terminate()

    def escalate(self) -> None:
        if (
            self.kill_at is not None
            and time.monotonic() >= self.kill_at
            and self.process.is_alive()
        ):
            self.process.kill()
            self.kill_at = None


# What every job imports, loaded once by the forkserver; a name that fails to import
# there is imported (and fails, with its error) in the job instead.
_PRELOAD = ["torch", "profiler", "pruner", "service.jobs"]


def prepare_workers(start: str = "forkserver") -> None:
    """Start the forkserver now: it imports in the background, so the first job starts as
    fast as the rest. Without this call it starts with the first job."""
    if start == "forkserver":
        multiprocessing.get_context("forkserver").set_forkserver_preload(_PRELOAD)
        multiprocessing.forkserver.ensure_running()


def start_worker(
    job: Job, state_dir: Path, bounds: RequestBounds | None = None, start: str = "forkserver"
) -> Worker:
    """Start a worker for one job with multiprocessing's ``start`` method: from the
    forkserver or a new interpreter, never forked from the daemon itself (it holds ZeroMQ
    and SQLite handles)."""
    context = multiprocessing.get_context(start)
    if start == "forkserver":
        context.set_forkserver_preload(_PRELOAD)  # takes effect when the server starts
    parent, child = context.Pipe(duplex=False)
    bounds_json = json.dumps(None if bounds is None else dataclasses.asdict(bounds))
    process = context.Process(
        target=worker_main,
        args=(job.kind, json.dumps(job.params), str(state_dir), child, bounds_json),
        name=f"prunerd-job-{job.id}",
        # Not daemonic: a job may start processes of its own (data loaders); the daemon
        # stops every worker itself before it exits.
        daemon=False,
    )
    process.start()
    # Close our copy of the write end, so the worker's death shows up as end of file.
    child.close()
    forked_from = parent_pid(process.pid) if start == "forkserver" else None
    return Worker(job, process, parent, forked_from=forked_from)


def _proc_stat(pid: int | None) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (state, parent, ...); empty
    when it cannot be read (Linux only; the process is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def parent_pid(pid: int | None) -> int | None:
    """The parent of process ``pid``, or None when it cannot be read."""
    fields = _proc_stat(pid)
    return int(fields[1]) if len(fields) > 1 else None


def why_gone(worker: Worker) -> str:
    """Why a worker that sent no final message went away: its exit, or the death of the
    forkserver it was forked from (the worker then dies with it, and its exit status is
    lost: multiprocessing reports 255)."""
    code, server = worker.process.exitcode, worker.forked_from
    if code == 255 and server is not None and not _alive(server):
        return (
            f"worker was killed: the forkserver it was started from (pid {server}) died, and "
            "its workers with it (killed by another job, an operator or the OOM killer); "
            "the next job starts a new one"
        )
    return describe_exit(code)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _proc_stat(pid)
    return bool(fields) and fields[0] != "Z"  # a zombie (dead, not yet reaped) is gone


def check_params(kind: str, params: dict[str, Any]) -> None:
    """:class:`ParamsError` naming what a job of ``kind`` would refuse in ``params``."""
    JOB_KINDS[kind].check(params)


def check_kind(kind: str) -> str | None:
    """Why ``kind`` cannot run in this build, or None."""
    return JOB_KINDS[kind].unavailable()


__all__ = [
    "JOB_KINDS",
    "Job",
    "JobContext",
    "JobFailed",
    "JobKind",
    "JobStore",
    "ModelPolicy",
    "ParamsError",
    "Worker",
    "check_params",
    "prepare_workers",
    "why_gone",
    "start_worker",
]

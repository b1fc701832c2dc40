"""The prunerd daemon: one ZeroMQ poll loop over requests, deployment samples and job workers.

Sockets (all bound on ``settings.host``, 127.0.0.1 by default):

- ROUTER ``rpc_port``: requests -> exactly one reply each (service.protocol);
- PUB ``events_port``: job events under topic ``job.<id>``;
- PULL ``ingest_port``: deployment latency samples from service.monitor;
- HTTP ``metrics_port``: Prometheus ``/metrics`` (service.metrics, its own thread).

Jobs run one process each (service.jobs); the loop polls their pipes next to the sockets.
SIGTERM/SIGINT stop the loop; running jobs are then stopped and marked ``interrupted``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from profiler.files import writable_dir

from . import protocol as p
from .auth import OPERATOR, KeyRing, read_basic_auth, start_authenticator
from .config import Settings
from .connections import ConnectionCap, ConnectionGuard, raise_fd_limit
from .jobs import (
    JobStore,
    ParamsError,
    Worker,
    check_kind,
    check_params,
    prepare_workers,
    start_worker,
    why_gone,
)
from .limits import RequestBounds
from .metrics import DeploymentTracker, PrunerdCollector, default_gpu_telemetry, serve_metrics
from .outputs import make_output_dir
from .quotas import JobOwners, QueueQuota, client_of, list_page
from .rank_link import remove_left_behind
from .ranks import RankTracker, parse_report

log = logging.getLogger("prunerd")

POLL_MS = 200  # how often the loop looks at timers (stop flag, SIGKILL escalation)
MAX_BATCH = 200  # requests taken per loop turn, so no socket starves the others
# Queued per request-socket peer. A full request queue only stops libzmq reading that peer;
# a full reply queue drops the reply, and the socket learns how far a peer has read only
# every few messages (libzmq batches those notices), so replies get room to spare.
RPC_RCVHWM = 8
RPC_SNDHWM = 64
HANDSHAKE_MS = 10_000
START_RETRY_S = 1.0  # wait before trying again to start a worker that lacked descriptors


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("prunerd")
    except Exception:  # noqa: BLE001 - running from a source tree without metadata
        return "0+unknown"


def _kind_unavailable(kind: str) -> str | None:
    """Why this build cannot run ``kind`` (None when it can); a broken install is a reason too."""
    try:
        return check_kind(kind)
    except Exception as e:  # noqa: BLE001 - e.g. an ImportError inside the package
        return f"{kind} jobs are not available in this build: {type(e).__name__}: {e}"


class Daemon:
    def __init__(self, settings: Settings) -> None:
        import profiler  # imported here: the client and monitor must not pay for torch

        self.settings = settings
        self.state_dir = private_state_dir(Path(settings.state_dir))
        self._lock_file = self._lock_state_dir()
        self.store = JobStore(self.state_dir / "jobs.sqlite")
        self.policy = p.ModelPolicy(
            builtins=frozenset(profiler.builtin_models()),
            allow_imports=settings.allow_imports,
            model_dirs=settings.model_dirs,
            path_roots=settings.path_roots,
        )
        self.deployments = DeploymentTracker(
            settings.budgets,
            settings.max_deployments,
            per_client=settings.max_deployments_per_client,
            idle_s=settings.deployment_idle_s,
        )
        self.owners = JobOwners(
            self.store.db,
            QueueQuota(settings.max_queued_per_client, settings.max_queued_total),
        )
        self.bounds = RequestBounds.from_settings(settings, visible_gpus())
        self.ranks = RankTracker()  # the ranks of running multi-process jobs
        self.keys = (
            KeyRing(settings.authorized_keys_dir, settings.monitor_keys_dir)
            if settings.curve
            else None
        )
        self.caps: list[ConnectionCap] = []
        self.guard: ConnectionGuard | None = None
        self._frame: zmq.Frame | None = None  # the request being answered, for its sender
        self._reload_keys = False
        self._start_retry_at = 0.0
        self.workers: dict[str, Worker] = {}
        self.progress: dict[str, dict[str, Any]] = {}
        self.stopping = False
        self.started_at = time.time()
        self._queue_changed = True
        # Both read the filesystem (package metadata, sys.path): once here, not on every ping.
        self.version = _version()
        self.kinds = {kind: _kind_unavailable(kind) for kind in p.PARAMS_TYPES}
        self.kinds_available = {kind: reason or "available" for kind, reason in self.kinds.items()}
        self.pid = os.getpid()
        self.ctx = zmq.Context()
        self.auth = None
        self.endpoints: dict[str, str] = {}

    def _lock_state_dir(self) -> Any:
        # Two daemons on one state dir would each mark the other's running jobs interrupted.
        f = open(self.state_dir / "daemon.lock", "w")  # noqa: SIM115 - held for the daemon's lifetime
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise RuntimeError(
                f"another prunerd is already using state dir {str(self.state_dir)!r}"
            ) from None
        return f

    # ------------------------------------------------------------------ setup

    def _socket(self, kind: int, port: int, domain: str, **options: int) -> zmq.Socket:
        """A bound socket. ``options`` are set before bind: libzmq copies a listener's options
        when it binds, so a limit set afterwards never reaches its connections."""
        s = self.ctx.socket(kind)
        s.linger = 0
        for name, value in options.items():
            setattr(s, name, value)
        s.zap_domain = domain.encode()  # service.auth admits key classes per domain
        # A connection that has not finished its handshake by then is closed (idle TCP floods).
        s.handshake_ivl = HANDSHAKE_MS
        if self.settings.curve:
            from zmq.auth import load_certificate

            public, secret = load_certificate(self.settings.server_secret_key)
            s.curve_secretkey = secret
            s.curve_publickey = public
            s.curve_server = True
        # Port 0 means "any free port": libzmq spells that "*"; LAST_ENDPOINT tells which one.
        s.bind(f"tcp://{self.settings.host}:{port or '*'}")
        return s

    def bind(self) -> dict[str, str]:
        """Open every socket and the metrics server; write ``daemon.json`` with the endpoints."""
        st = self.settings
        raise_fd_limit(2 * st.max_connections + st.max_ingest_connections + st.fd_reserve)
        if self.keys is not None:
            # Only clients whose public key is in an authorised-keys directory get in.
            self.auth = start_authenticator(self.ctx, self.keys)
        # Few requests and replies queue per peer: a client that sends without reading
        # holds at most RPC_RCVHWM requests and RPC_SNDHWM replies (each <= max_reply_bytes).
        self.rpc = self._socket(
            zmq.ROUTER,
            st.rpc_port,
            "rpc",
            maxmsgsize=st.max_frame_bytes,
            rcvhwm=RPC_RCVHWM,
            sndhwm=RPC_SNDHWM,
        )
        self.events = self._socket(zmq.PUB, st.events_port, "events")
        self.events.linger = 1000  # ms: let the final "interrupted" events out on shutdown
        # RCVHWM is per sender: with the sender count capped too, all of them together
        # queue at most ingest_memory_bytes in libzmq.
        per_sender = st.ingest_memory_bytes // (st.max_ingest_connections * st.max_sample_bytes)
        self.ingest = self._socket(
            zmq.PULL,
            st.ingest_port,
            "ingest",
            maxmsgsize=st.max_sample_bytes,
            rcvhwm=max(1, min(st.ingest_hwm, per_sender)),
        )
        for name, sock, cap in (
            ("rpc", self.rpc, st.max_connections),
            ("events", self.events, st.max_connections),
            ("ingest", self.ingest, st.max_ingest_connections),
        ):
            port = int(sock.last_endpoint.decode().rpartition(":")[2])
            self.caps.append(ConnectionCap(name, sock, cap, port))
        self.guard = ConnectionGuard(self.caps)
        self.guard.start()
        self.metrics = serve_metrics(
            st.metrics_host,
            st.metrics_port,
            PrunerdCollector(
                self.store.path, self.deployments, default_gpu_telemetry(), self.ranks
            ),
            read_basic_auth(st.metrics_auth_file) if st.metrics_auth_file else None,
        )
        self.endpoints = {
            "rpc": self.rpc.last_endpoint.decode(),
            "events": self.events.last_endpoint.decode(),
            "ingest": self.ingest.last_endpoint.decode(),
            "metrics": f"http://{st.metrics_host}:{self.metrics.server_port}/metrics",
        }
        info = {"pid": os.getpid(), "version": self.version, "curve": st.curve, **self.endpoints}
        tmp = self.state_dir / "daemon.json.tmp"
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(self.state_dir / "daemon.json")
        return self.endpoints

    # ------------------------------------------------------------------ the loop

    def serve(self) -> int:
        """Run until SIGTERM/SIGINT (or ``self.stopping``); returns the exit status."""
        if not self.endpoints:
            self.bind()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_sighup)
        for job_id in self.store.interrupt_running():
            log.warning(
                "job %s was running when the daemon last stopped: marked interrupted", job_id
            )
        log.info("prunerd %s serving %s", self.version, self.endpoints)
        self._guarded("preparing workers", prepare_workers, self.settings.worker_start)

        self.poller = zmq.Poller()
        self.poller.register(self.rpc, zmq.POLLIN)
        self.poller.register(self.ingest, zmq.POLLIN)
        try:
            while not self.stopping:
                self._turn()
        finally:
            # Also on a fatal error: stop the workers (a non-daemonic child would keep this
            # process alive, deaf, until its job ends) and release the state-dir lock.
            self._shutdown()
        return 0

    def _turn(self) -> None:
        """One loop turn. A handler that fails is logged; the loop goes on serving."""
        ready = dict(self.poller.poll(POLL_MS))
        if self._reload_keys and self.keys is not None:
            self._reload_keys = False
            self._guarded("reloading keys", self.keys.reload)
        # Workers first: a request answered in this turn sees every report (and every
        # worker's exit) that arrived before it.
        for worker in list(self.workers.values()):
            # zmq.Poller reports plain file descriptors by number, not by object.
            if worker.fileno() in ready:
                self._guarded(f"job {worker.job.id}", self._read_worker, worker)
            worker.escalate()
        if self.rpc in ready:
            self._guarded("request handler", self._serve_requests)
        if self.ingest in ready:
            self._guarded("ingest handler", self._ingest_samples)
        self._guarded("job start", self._start_queued_jobs)

    @staticmethod
    def _guarded(what: str, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - one bad message or bug must not end the daemon
            log.exception("%s failed; still serving", what)

    def _on_sighup(self, _signum: int, _frame: Any) -> None:
        log.info("received SIGHUP: reloading authorised keys")
        self._reload_keys = True

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.stopping = True

    # ------------------------------------------------------------------ requests

    def _serve_requests(self) -> None:
        for _ in range(MAX_BATCH):
            # Asking first is cheaper than the zmq.Again a drained socket raises.
            if not self.rpc.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return
            try:
                msg = self.rpc.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            # Frames carry the connection's metadata: who sent this (its key or address).
            self._frame = msg[-1]
            frames = [f.bytes for f in msg]
            # ROUTER prepends the peer identity; REQ peers add an empty delimiter. Echo both back.
            route, body = frames[:1], frames[1:]
            if body and body[0] == b"":
                route, body = route + [b""], body[1:]
            answer = self._revoked() or self.reply(body)
            try:
                self.rpc.send_multipart([*route, answer], zmq.NOBLOCK)
            except zmq.ZMQError as e:  # the peer is gone or its queue is full: drop the reply
                log.debug("reply not sent: %s", e)

    def _client(self) -> str:
        """Who sent the request being answered (read from its frame only when asked)."""
        if self._frame is None:  # reply() called directly, not from the socket
            return "addr:local"
        return client_of(self._frame, self.settings.curve)

    def _revoked(self) -> bytes | None:
        """An error reply when the sender's key was removed since it connected (SIGHUP reload)."""
        if self.keys is None or self.keys.key_class(self._client()[4:]) == OPERATOR:
            return None
        err = p.ProtocolError("not_allowed", "this client key is no longer authorised")
        return p.encode_error(err)

    def reply(self, body: list[bytes]) -> bytes:
        """The reply to one request (its frames after the routing envelope). Never raises."""
        op = req_id = None
        try:
            if len(body) != 1:
                raise p.ProtocolError(
                    "bad_request", f"a request is one frame of JSON, got {len(body)} frames"
                )
            doc = p.loads_strict(body[0], self.settings.max_request_bytes)
            req_id = p.peek_req_id(doc)
            if isinstance(doc, dict) and doc.get("op") in p.OPS:
                op = doc["op"]
            req = p.parse_request(doc, self.policy)
            data = getattr(self, f"_op_{req.op}")(req)
            return p.encode_reply(req.op, req.req_id, data)
        except p.ProtocolError as e:
            return p.encode_error(e, op, req_id)
        except (OverflowError, RecursionError) as e:  # sizes and depths the decoder let through
            err = p.ProtocolError("bad_request", f"{type(e).__name__}: {e}")
            return p.encode_error(err, op, req_id)
        except Exception as e:  # noqa: BLE001 - a bug answers with an error, it does not kill the daemon
            log.exception("request failed")
            return p.encode_error(
                p.ProtocolError("internal", f"{type(e).__name__}: {e}"), op, req_id
            )

    def _op_ping(self, req: p.Ping) -> dict[str, Any]:
        return {
            "version": self.version,
            "protocol": p.PROTOCOL_VERSION,
            "pid": self.pid,
            "uptime_s": time.time() - self.started_at,
            "running": len(self.workers),
            "kinds": self.kinds_available,
            "endpoints": self.endpoints,
            "max_gpus": self.bounds.max_gpus,
            "max_procs": self.bounds.max_procs,
        }

    def _op_submit(self, req: p.Submit) -> dict[str, Any]:
        params = req.params.to_dict()
        self.bounds.check(req.kind, params)
        reason = self.kinds[req.kind]
        if reason:
            raise p.ProtocolError("unavailable", reason, "kind")
        try:  # what the worker would refuse, refused now rather than after its start
            check_params(req.kind, params)
        except ParamsError as e:
            raise p.ProtocolError("bad_request", str(e), e.field) from None
        self.owners.check_queue(self._client())
        if params.get("output"):  # last: a refused request leaves no directory behind
            self._check_not_inside_an_output(params["output"])
            make_output_dir(params["output"], "params.output")
        job = self.store.create(req.kind, params)
        self.owners.record(job.id, self._client())
        self._queue_changed = True
        self._publish(job.id, "queued", {"kind": job.kind, "params": job.params})
        return {"job": job.to_dict()}

    def _check_not_inside_an_output(self, output: str) -> None:
        """A job's output directory is its own: a new one inside it (where that job will
        write pruned.pt) would make that job fail, whoever asked for it."""
        owner = self.store.output_owner([str(d) for d in Path(output).parents])
        if owner is not None:
            raise p.ProtocolError(
                "conflict",
                f"{output!r} is inside {owner[1]!r}, the output directory of job {owner[0]}; "
                "name a directory outside every job's output",
                "params.output",
            )

    def _job(self, job_id: str) -> Any:
        job = self.store.get(job_id)
        if job is None:
            raise p.ProtocolError("not_found", f"no job {job_id!r}", "job_id")
        return job

    def _op_status(self, req: p.JobRequest) -> dict[str, Any]:
        job = self._job(req.job_id)
        worker = self.workers.get(job.id)
        ranks = self.ranks.get(job.id)
        return {
            "job": job.to_dict(),
            "progress": self.progress.get(job.id),
            "worker_pid": None if worker is None else worker.pid,
            "ranks": None if ranks is None else ranks.to_event(),
        }

    def _op_list(self, req: p.ListJobs) -> dict[str, Any]:
        st = self.settings
        page = list_page(
            self.store, req.limit, req.status, req.before, st.list_page_max, st.max_reply_bytes
        )
        return {"jobs": page.jobs, "next": page.next}

    def _op_result(self, req: p.JobRequest) -> dict[str, Any]:
        job = self._job(req.job_id)
        if job.status not in p.FINISHED_STATUSES:
            raise p.ProtocolError(
                "conflict", f"job {job.id} is {job.status}; it has no result yet", "job_id"
            )
        return {"job": job.to_dict(), "result": self.store.result(job.id)}

    def _op_cancel(self, req: p.JobRequest) -> dict[str, Any]:
        job = self._job(req.job_id)
        self.owners.check_cancel(job.id, self._client())
        if job.status == "queued":
            self._finish_job(
                job.id, "cancelled", {"type": "Cancelled", "message": "cancelled before it started"}
            )
        elif job.status == "running" and job.id in self.workers:
            # The worker's pipe closes when it dies; _read_worker then records "cancelled".
            self.workers[job.id].stop("cancelled", self.settings.worker_grace_s)
        else:
            raise p.ProtocolError("conflict", f"job {job.id} is already {job.status}", "job_id")
        return {"job": self.store.get(job.id).to_dict(), "cancelling": job.status == "running"}

    # ------------------------------------------------------------------ deployment samples

    def _ingest_samples(self) -> None:
        # Time-sliced: a flood of samples waits in libzmq (bounded), requests are served.
        st = self.settings
        deadline = time.monotonic() + st.ingest_slice_ms / 1000
        for _ in range(st.ingest_messages_per_turn):
            if time.monotonic() >= deadline:
                return
            try:
                frame = self.ingest.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            client = client_of(frame, st.curve)
            if self.keys is not None and self.keys.key_class(client[4:]) is None:
                self.deployments.reject("revoked_key")  # removed since it connected
                continue
            data = frame.bytes
            try:
                batch = p.decode_samples(data, st.max_sample_bytes)
            except p.ProtocolError:
                self.deployments.reject("malformed")
                continue
            try:
                self.deployments.add(batch, client)
            except Exception:  # noqa: BLE001 - a bug here must cost one batch, not the daemon
                log.exception("deployment batch from %r dropped", batch.deployment)
                self.deployments.reject("malformed")

    # ------------------------------------------------------------------ jobs

    def _publish(self, job_id: str, event: str, data: dict[str, Any] | None = None) -> None:
        # Best effort (PUB drops for slow subscribers anyway); the job store is the record.
        try:
            self.events.send_multipart(p.encode_event(job_id, event, data), zmq.NOBLOCK)
        except (zmq.ZMQError, TypeError, ValueError) as e:
            log.warning("event %s of job %s not published: %s", event, job_id, e)

    def _start_queued_jobs(self) -> None:
        if not self._queue_changed or len(self.workers) >= self.settings.max_workers:
            return
        if time.monotonic() < self._start_retry_at:
            return
        self._queue_changed = False
        for job in self.store.queued()[: self.settings.max_workers - len(self.workers)]:
            try:
                worker = start_worker(job, self.state_dir, self.bounds, self.settings.worker_start)
            except OSError as e:
                if e.errno not in (errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM):
                    self._fail_start(job.id, e)
                    continue
                # Out of descriptors or processes for now (a connection flood, say): the
                # job is not at fault; it stays queued and starting is tried again shortly.
                log.warning("job %s: cannot start a worker yet (%s); will retry", job.id, e)
                self._queue_changed = True
                self._start_retry_at = time.monotonic() + START_RETRY_S
                return
            except Exception as e:  # noqa: BLE001 - a job that cannot start fails; the daemon serves on
                self._fail_start(job.id, e)
                continue
            self.store.mark_started(job.id)
            self.workers[job.id] = worker
            self.poller.register(worker.fileno(), zmq.POLLIN)
            self._publish(job.id, "started", {"kind": job.kind, "pid": worker.pid})
            log.info("job %s (%s) started in pid %s", job.id, job.kind, worker.pid)

    def _fail_start(self, job_id: str, e: Exception) -> None:
        self.store.mark_started(job_id)
        self._finish_job(
            job_id, "failed", {"type": type(e).__name__, "message": f"cannot start worker: {e}"}
        )

    def _read_worker(self, worker: Worker) -> None:
        try:
            raw = worker.conn.recv_bytes()
        except (EOFError, OSError):
            self._reap(worker)
            return
        try:
            self._on_worker_message(worker, json.loads(raw))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            # A job runs model code; what comes down its pipe is input like any other.
            log.warning("job %s: malformed worker message (%s); stopping it", worker.job.id, e)
            if worker.stop_reason is None:
                self._finish_job(
                    worker.job.id,
                    "failed",
                    {"type": "WorkerProtocolError", "message": f"malformed worker message: {e}"},
                )
                worker.stop("failed", self.settings.worker_grace_s)

    def _on_worker_message(self, worker: Worker, msg: dict[str, Any]) -> None:
        job = worker.job
        event = msg.get("event")
        if event == "progress":
            self.progress[job.id] = {k: msg[k] for k in ("what", "done", "total")}
            self._publish(job.id, "progress", self.progress[job.id])
        elif event == "block":
            timing = msg["timing"]
            self._record_block(job.params, timing["name"], timing["latency_s"])
            flat = {k: v for k, v in timing.items() if not isinstance(v, dict)}
            self._publish(job.id, "block", flat)
        elif event == "milestone":
            self._publish(job.id, "milestone", msg["data"])
        elif event == "ranks":
            report = parse_report(msg["report"])
            if worker.stop_reason not in ("done", "failed"):  # no news after the final word
                self.ranks.update(job.id, report)
                self._publish(job.id, "ranks", report.to_event())
        elif event == "done":
            if job.kind == "profile":
                self._record_profile(job.params, msg["result"])
            self._finish_job(job.id, "done", result=msg["result"])
            worker.stop_reason = worker.stop_reason or "done"
        elif event == "failed":
            self._finish_job(job.id, "failed", msg["error"])
            worker.stop_reason = worker.stop_reason or "failed"

    def _reap(self, worker: Worker) -> None:
        """The worker's pipe closed: collect the process and settle the job if it has no final status."""
        self.poller.unregister(worker.fileno())
        worker.conn.close()
        worker.process.join(timeout=5.0)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        del self.workers[worker.job.id]
        self.progress.pop(worker.job.id, None)
        self.ranks.drop(worker.job.id)
        if worker.pid is not None:  # a worker killed mid-job cannot remove its rank socket dir
            remove_left_behind(worker.pid)
        self._queue_changed = True
        if worker.stop_reason in ("done", "failed"):
            return
        if worker.stop_reason == "cancelled":
            self._finish_job(
                worker.job.id, "cancelled", {"type": "Cancelled", "message": "cancelled by request"}
            )
        elif worker.stop_reason == "interrupted":
            self._finish_job(
                worker.job.id,
                "interrupted",
                {"type": "Interrupted", "message": "the daemon stopped during this job"},
            )
        else:
            reason = why_gone(worker)
            log.warning("job %s: %s", worker.job.id, reason)
            self._finish_job(worker.job.id, "failed", {"type": "WorkerDied", "message": reason})

    def _finish_job(
        self,
        job_id: str,
        status: str,
        error: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        self.store.finish(job_id, status, error, result)
        self.ranks.drop(job_id)  # a finished job has no live ranks to report
        self._publish(job_id, status, {"error": error} if error else {})
        log.info("job %s %s%s", job_id, status, f": {error.get('message')}" if error else "")

    def _record_block(self, params: dict[str, Any], block: str, seconds: float) -> None:
        self.store.record_block(
            p.model_label(params), block, params["device"], params["batch_size"], seconds
        )

    def _record_profile(self, params: dict[str, Any], profile: dict[str, Any]) -> None:
        # Blocks served from the latency table may not have been streamed; record them all.
        for b in profile.get("blocks", []):
            self._record_block(params, b["name"], b["latency_s"])
        quality = profile.get("quality") or {}
        seen = quality.get("interference") or {}
        self.store.record_model(
            p.model_label(params),
            params["device"],
            params["batch_size"],
            profile["end_to_end_s"],
            profile.get("additivity_error"),
            quality.get("ok"),
            seen.get("other_cores"),
            quality.get("prediction_error"),
        )

    # ------------------------------------------------------------------ shutdown

    def _shutdown(self) -> None:
        """Stop workers, close sockets, release the lock: each step even if an earlier one fails."""
        grace = self.settings.worker_grace_s
        for worker in self.workers.values():
            self._guarded("stopping a worker", worker.stop, "interrupted", grace)
        deadline = time.monotonic() + grace
        for worker in list(self.workers.values()):
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            self._guarded(f"reaping job {worker.job.id}", self._reap, worker)
        for worker in self.workers.values():  # whatever _reap could not settle still dies
            worker.process.kill()
        self._guarded("closing sockets", self._close_sockets)
        self._guarded("closing the job store", self.store.close)
        (self.state_dir / "daemon.json").unlink(missing_ok=True)
        self._lock_file.close()
        log.info("prunerd stopped")

    def _close_sockets(self) -> None:
        self.metrics.shutdown()
        self.metrics.server_close()
        if self.auth is not None:
            self.auth.stop()
        if self.guard is not None:
            self.guard.stop()
        for s in (self.rpc, self.events, self.ingest):
            s.close()
        self.ctx.term()


def private_state_dir(path: Path) -> Path:
    """Create (or tighten) the state dir: 0700, ours, its databases 0600.

    It holds every job's parameters and results. From here on this process creates files
    private to its user (umask 077), SQLite's -wal and -shm files included.
    """
    os.umask(0o077)
    writable_dir(path, "state dir")  # a ValueError naming the path: a file in its way, no rights
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise RuntimeError(
            f"state dir {str(path)!r} belongs to uid {st.st_uid}, not to this user "
            f"({os.geteuid()}); give the daemon a state dir of its own"
        )
    if st.st_mode & 0o022:  # e.g. /tmp: shared, and not ours to chmod
        raise RuntimeError(
            f"state dir {str(path)!r} is writable by others (mode {st.st_mode & 0o777:o}); "
            "give the daemon a directory of its own (it is created 0700)"
        )
    path.chmod(0o700)  # an older daemon's 0755 dir: its job parameters and results are private
    for db in path.glob("*.sqlite*"):
        if db.is_file() and not db.is_symlink():
            db.chmod(0o600)
    return path


def visible_gpus() -> int:
    """The CUDA devices a job of this daemon sees (0 without CUDA): the default of
    ``max_gpus``. Asked of torch in a process of its own, so that the daemon, which runs
    no model, never holds torch (about 190 MB) or a CUDA context; not asked at all where
    NVML sees no GPU."""
    from profiler.nvml import gpu_count

    if gpu_count() == 0:
        return 0
    ask = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    try:
        done = subprocess.run(
            [sys.executable, "-c", ask], capture_output=True, text=True, timeout=300, check=True
        )
        return int(done.stdout.split()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        log.warning("could not count the CUDA devices (torch in a subprocess); max_gpus = 0")
        return 0


def read_daemon_info(state_dir: Path) -> dict[str, Any] | None:
    """The endpoints a running daemon wrote to ``<state_dir>/daemon.json``, if any."""
    try:
        return json.loads((Path(state_dir) / "daemon.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run(settings: Settings) -> int:
    return Daemon(settings).serve()

"""Who sent a request, which jobs are theirs, and how much of the queue each client may hold.

A client is, in order of preference:

- ``key:<z85 public key>`` when CurveZMQ is on: the key the handshake proved;
- ``addr:<peer IP>`` without CurveZMQ: the TCP peer's address. Every process on one host is
  then one client, and on loopback (the default bind) that is every local user of the
  machine: a ZeroMQ routing id changes with each connection and a name the client sends
  proves nothing, so neither can own a job. A host with users who must not cancel each
  other's jobs turns CurveZMQ on, even on loopback.

Ownership lives next to the jobs, in the ``job_owner`` table of the job store's database,
so it survives a restart with the jobs. Jobs created before owners were recorded have
none and may be cancelled by any operator.
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

import zmq

from .protocol import ProtocolError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS job_owner (job_id TEXT PRIMARY KEY, client TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS job_owner_client ON job_owner (client);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
"""


def client_of(frame: zmq.Frame, curve: bool) -> str:
    """The identity of the peer that sent ``frame`` (see the module docstring)."""
    if curve:
        return "key:" + frame.get("User-Id")
    try:
        return "addr:" + _host(frame.get("Peer-Address"))
    except zmq.ZMQError:  # not a TCP connection (inproc, in tests): one local client
        return "addr:local"


def _host(address: str) -> str:
    """One name per host: every loopback address (127.0.0.0/8, ::1) is 127.0.0.1, since a
    process may connect from any of them; an IPv4-mapped IPv6 address is its IPv4 one."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return "127.0.0.1" if ip.is_loopback else str(ip)


@dataclass(frozen=True)
class QueueQuota:
    per_client: int
    total: int


class JobOwners:
    """The ``job_owner`` table and the queue quotas it allows checking. Daemon thread only."""

    def __init__(self, db: sqlite3.Connection, quota: QueueQuota) -> None:
        self.db = db
        self.quota = quota
        db.executescript(_SCHEMA)
        db.commit()

    def check_queue(self, client: str) -> None:
        """ProtocolError("quota") when ``client`` or everyone together has too many jobs queued."""
        total = self.db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0]
        if total >= self.quota.total:
            raise ProtocolError(
                "quota",
                f"{total} jobs are queued, this daemon's max_queued_total; submit again when "
                "some have run",
            )
        mine = self.db.execute(
            "SELECT COUNT(*) FROM jobs JOIN job_owner ON job_owner.job_id = jobs.id "
            "WHERE jobs.status = 'queued' AND job_owner.client = ?",
            (client,),
        ).fetchone()[0]
        if mine >= self.quota.per_client:
            raise ProtocolError(
                "quota",
                f"you have {mine} jobs queued, this daemon's max_queued_per_client; wait for "
                "them or cancel some",
            )

    def record(self, job_id: str, client: str) -> None:
        with self.db:
            self.db.execute("INSERT INTO job_owner VALUES (?, ?)", (job_id, client))

    def owner(self, job_id: str) -> str | None:
        row = self.db.execute("SELECT client FROM job_owner WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else row[0]

    def check_cancel(self, job_id: str, client: str) -> None:
        owner = self.owner(job_id)
        if owner is not None and owner != client:
            raise ProtocolError(
                "not_allowed",
                f"job {job_id} was submitted by another client; only its submitter may cancel it",
                "job_id",
            )


@dataclass(frozen=True)
class Page:
    jobs: list[dict[str, Any]]
    next: str | None  # pass as `before` for the next page; None on the last page


def list_page(
    store: Any,
    limit: int,
    status: str | None,
    before: str | None,
    max_jobs: int,
    max_bytes: int,
) -> Page:
    """Newest first, at most ``min(limit, max_jobs)`` jobs and about ``max_bytes`` of JSON.

    ``before`` is the id of the last job of the previous page (jobs are ordered by creation
    time, then id, so a page boundary never skips or repeats a job).
    """
    where, args = ["1"], []
    if status:
        where.append("status = ?")
        args.append(status)
    if before:
        row = store.db.execute("SELECT created_at FROM jobs WHERE id = ?", (before,)).fetchone()
        if row is None:
            raise ProtocolError("not_found", f"no job {before!r} to page from", "before")
        where.append("(created_at, id) < (?, ?)")
        args += [row[0], before]
    take = min(limit, max_jobs)
    ids = [
        r[0]
        for r in store.db.execute(
            f"SELECT id FROM jobs WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, id DESC LIMIT ?",
            (*args, take + 1),
        )
    ]
    jobs: list[dict[str, Any]] = []
    size = 0
    for job_id in ids[:take]:
        job = store.get(job_id).to_dict()
        size += len(json.dumps(job))
        if jobs and size > max_bytes:
            break
        jobs.append(job)
    more = len(jobs) < len(ids)
    return Page(jobs, jobs[-1]["id"] if more and jobs else None)

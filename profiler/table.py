"""Latency lookup table (LUT) in SQLite, keyed by device fingerprint + piece signature.

A piece's signature (see ``graph.signature``) covers its operators, shapes,
dtype, layout and batch size, so a second profile of the same model on the
same device is served from here, and the latency of a pruned model can be
predicted from the pieces it keeps without running it. WAL mode lets a
daemon's workers read while one writes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from .records import DeviceInfo, Measurement

TABLE_VERSION = 2  # 2: chained in-place timing; "model" is the traced graph

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    fingerprint TEXT PRIMARY KEY,
    info TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS latency (
    fingerprint TEXT NOT NULL,
    signature TEXT NOT NULL,
    label TEXT NOT NULL,
    measurement TEXT NOT NULL,
    median_s REAL NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (fingerprint, signature)
);
"""


def default_table_path() -> Path:
    import os

    root = os.environ.get("PRUNERD_CACHE") or Path.home() / ".cache" / "prunerd"
    return Path(root) / "latency.sqlite"


class LatencyTable:
    """Measurements by (device fingerprint, signature). Safe to share between threads."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_table_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('version', ?)", (str(TABLE_VERSION),))
            elif int(row[0]) != TABLE_VERSION:
                # An older layout's signatures mean something else: start afresh rather than mislead.
                self._db.execute("DELETE FROM latency")
                self._db.execute(
                    "UPDATE meta SET value=? WHERE key='version'", (str(TABLE_VERSION),)
                )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> LatencyTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, fingerprint: str, signature: str) -> Measurement | None:
        with self._lock:
            row = self._db.execute(
                "SELECT measurement FROM latency WHERE fingerprint=? AND signature=?",
                (fingerprint, signature),
            ).fetchone()
        return None if row is None else Measurement.from_dict(json.loads(row[0]))

    def put(
        self, fingerprint: str, signature: str, measurement: Measurement, label: str = ""
    ) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO latency VALUES (?, ?, ?, ?, ?, ?)",
                (
                    fingerprint,
                    signature,
                    label,
                    json.dumps(measurement.to_dict()),
                    measurement.median_s,
                    time.time(),
                ),
            )

    def put_many(self, fingerprint: str, rows: list[tuple[str, Measurement, str]]) -> None:
        """Store (signature, measurement, label) rows in one transaction."""
        now = time.time()
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO latency VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (fingerprint, sig, label, json.dumps(m.to_dict()), m.median_s, now)
                    for sig, m, label in rows
                ],
            )

    def remember_device(self, info: DeviceInfo) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO devices VALUES (?, ?, ?)",
                (info.fingerprint, json.dumps(info.to_dict()), time.time()),
            )

    def devices(self) -> list[DeviceInfo]:
        with self._lock:
            rows = self._db.execute("SELECT info FROM devices ORDER BY updated_at").fetchall()
        return [DeviceInfo.from_dict(json.loads(r[0])) for r in rows]

    def invalidate(self, fingerprint: str | None = None, older_than_s: float | None = None) -> int:
        """Forget measurements (of one device, or older than an age in seconds, or all); returns how many."""
        clauses, params = [], []
        if fingerprint is not None:
            clauses.append("fingerprint=?")
            params.append(fingerprint)
        if older_than_s is not None:
            clauses.append("created_at<?")
            params.append(time.time() - older_than_s)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock, self._db:
            return self._db.execute(f"DELETE FROM latency{where}", params).rowcount

    def counts(self) -> dict[str, int]:
        """Number of measurements per device fingerprint."""
        with self._lock:
            rows = self._db.execute(
                "SELECT fingerprint, COUNT(*) FROM latency GROUP BY fingerprint"
            ).fetchall()
        return {fp: int(n) for fp, n in rows}

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM latency").fetchone()[0])

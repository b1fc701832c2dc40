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
from dataclasses import dataclass
from pathlib import Path

from .database import open_database
from .plain import to_plain
from .records import DeviceInfo, Measurement, ProfileQuality

# 2: chained in-place timing; "model" is the traced graph.
# 3: each entry keeps its spread and the conditions it was taken under; entries of
#    older tables were stored unchecked (a disturbed run among them), so they are dropped.
TABLE_VERSION = 3

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
    spread REAL NOT NULL,          -- IQR / median of this entry's samples
    ok INTEGER NOT NULL,           -- 1: its profile passed the checks; 0: stored anyway
    conditions TEXT NOT NULL,      -- JSON: the profile's checks (load, other CPU use, problems)
    PRIMARY KEY (fingerprint, signature)
);
"""


@dataclass(frozen=True)
class TableQuality:
    """The latency table's entries for one device: count, failed, median and worst spread."""

    measurements: int
    failed: int
    median_spread: float
    worst_spread: float

    to_dict = to_plain


def _relative_iqr(m: Measurement) -> float:
    return m.iqr_s / m.median_s if m.median_s > 0 else 0.0


def _create_schema(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)
    row = db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
    if row is None:
        db.execute("INSERT INTO meta VALUES ('version', ?)", (str(TABLE_VERSION),))
    elif row[0] != str(TABLE_VERSION):
        # An older layout's signatures mean something else: start afresh rather than mislead.
        db.execute("DROP TABLE IF EXISTS latency")
        db.executescript(_SCHEMA)
        db.execute("UPDATE meta SET value=? WHERE key='version'", (str(TABLE_VERSION),))


def default_table_path() -> Path:
    import os

    root = os.environ.get("PRUNERD_CACHE") or Path.home() / ".cache" / "prunerd"
    return Path(root) / "latency.sqlite"


class LatencyTable:
    """Measurements by (device fingerprint, signature). Safe to share between threads."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_table_path()
        self._lock = threading.Lock()
        self._db = open_database(
            self.path,
            "latency table",
            "move it aside (an empty table is made in its place) or name another with --table",
            timeout_s=30.0,
            setup=_create_schema,
            tables=frozenset({"meta", "devices", "latency"}),
            check_same_thread=False,
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
        self,
        fingerprint: str,
        signature: str,
        measurement: Measurement,
        label: str = "",
        quality: ProfileQuality | None = None,
    ) -> None:
        self.put_many(fingerprint, [(signature, measurement, label)], quality)

    def put_many(
        self,
        fingerprint: str,
        rows: list[tuple[str, Measurement, str]],
        quality: ProfileQuality | None = None,
    ) -> None:
        """Store (signature, measurement, label) rows in one transaction, with the checks of
        the profile they came from (``None``: taken outside a profile, unchecked)."""
        now = time.time()
        ok = 1 if quality is None or quality.ok else 0
        conditions = json.dumps(None if quality is None else quality.to_dict())
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO latency VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        fingerprint,
                        sig,
                        label,
                        json.dumps(m.to_dict()),
                        m.median_s,
                        now,
                        _relative_iqr(m),
                        ok,
                        conditions,
                    )
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

    def invalidate(
        self,
        fingerprint: str | None = None,
        older_than_s: float | None = None,
        *,
        failed_only: bool = False,
        spread_above: float | None = None,
    ) -> int:
        """Forget measurements; returns how many. Filters combine: of one device, older than
        an age in seconds, stored despite failed checks, or scattering more than
        ``spread_above`` (IQR / median). No filter: all."""
        clauses: list[str] = []
        params: list[object] = []
        if failed_only:
            clauses.append("ok=0")
        if spread_above is not None:
            clauses.append("spread>?")
            params.append(spread_above)
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
        return {fp: q.measurements for fp, q in self.quality_summary().items()}

    def quality_summary(self) -> dict[str, TableQuality]:
        """Per device fingerprint: how many entries, how many stored despite failed checks,
        and the median and worst spread (IQR / median) of the entries."""
        with self._lock:
            rows = self._db.execute(
                "SELECT fingerprint, ok, spread FROM latency ORDER BY fingerprint, spread"
            ).fetchall()
        spreads: dict[str, list[float]] = {}
        failed: dict[str, int] = {}
        for fp, ok, spr in rows:
            spreads.setdefault(fp, []).append(float(spr))
            failed[fp] = failed.get(fp, 0) + (0 if ok else 1)
        return {
            fp: TableQuality(len(v), failed[fp], v[len(v) // 2], v[-1]) for fp, v in spreads.items()
        }

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM latency").fetchone()[0])

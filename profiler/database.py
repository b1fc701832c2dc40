"""Opening the SQLite files prunerd keeps: the latency table, the daemon's job store.

sqlite3 reports a damaged file, another kind of file, a directory in its place or a path
it cannot create as a bare ``file is not a database`` or ``unable to open database file``
from deep in a constructor. Here each is a ``DatabaseUnusable`` (a ``ValueError``, which
the command line prints) naming what the file is for, its path, SQLite's reason and what
to do. The file is never moved or replaced: it may hold the only copy of someone's data.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from .files import writable_dir


class DatabaseUnusable(ValueError):
    """An SQLite file prunerd needs cannot be opened or read; the message says what to do."""


def _reason(error: BaseException) -> str:
    text = str(error)
    if "file is not a database" in text:
        return "not an SQLite database (damaged, or another kind of file)"
    if "locked" in text:
        return f"{text}: another process holds it"
    return getattr(error, "strerror", None) or text


class _Foreign(sqlite3.DatabaseError):
    pass


def _check_ours(conn: sqlite3.Connection, tables: frozenset[str]) -> None:
    """Refuse a database that has tables, none of them ours: another program's data, which
    creating our schema beside it would quietly change."""
    have = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if have and not have & tables:
        raise _Foreign(f"an SQLite database of something else (tables: {', '.join(sorted(have))})")


def open_database(
    path: str | Path,
    what: str,
    fix: str,
    timeout_s: float,
    setup: Callable[[sqlite3.Connection], None],
    tables: frozenset[str],
    *,
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """A connection to ``path`` in WAL mode, after ``setup(conn)`` (the schema) has run.

    ``what`` names the file in errors (``"latency table"``), ``fix`` is the advice that
    ends them; ``timeout_s`` is how long a write waits for another process's lock;
    ``tables`` are the tables ``setup`` makes (an existing file with tables but none of
    these is refused). Any failure on the way is a ``DatabaseUnusable``.
    """
    path = Path(path)
    if path.is_dir():
        raise DatabaseUnusable(f"{what} {str(path)!r} is a directory, not a file; {fix}")
    try:
        writable_dir(path.parent, f"directory of the {what}")
    except ValueError as e:
        raise DatabaseUnusable(str(e)) from e
    path.parent.mkdir(parents=True, exist_ok=True)
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(str(path), timeout=timeout_s, check_same_thread=check_same_thread)
        _check_ours(conn, tables)
        conn.execute("PRAGMA journal_mode=WAL")
        setup(conn)
        conn.commit()
    except (sqlite3.Error, OSError) as e:
        if conn is not None:
            conn.close()
        raise DatabaseUnusable(f"{what} {str(path)!r} cannot be used: {_reason(e)}; {fix}") from e
    return conn

"""The grid's cell store: a study's cells with leased claims, so concurrent workers run each cell once.

A worker claims a pending cell inside a transaction that excludes every other writer and holds a lease it renews
while the cell runs. A cell whose lease ran out, or whose worker process on this host is gone (kill -9), goes back to
pending and resumes from its last checkpoint; a worker that is stopped hands its cell back at once (`release`).

Two engines, one set of SQL statements:
  - SQLite, the embedded default: runs/<study>-<scale>/grid.sqlite, one writer at a time by `BEGIN IMMEDIATE`. It
    suits one machine, or a shared disk whose POSIX locks work; many nodes on a network filesystem cannot share it
    safely (NFS locking is advisory and often broken), which is what the second engine is for;
  - PostgreSQL (`grid run --store postgresql://user@host/db`, the URL form Optuna's storage takes, also
    postgresql+psycopg://): one schema per study folder in that database, named after it, and one writer at a time
    by `LOCK TABLE cells, arms IN SHARE ROW EXCLUSIVE MODE` inside the transaction, the same exclusion as SQLite's.
    The driver is psycopg 3, the one SQLAlchemy 2.1 (under Optuna) uses for postgresql:// URLs, so a machine that
    runs Optuna on PostgreSQL can run the store too; it is used directly, not through SQLAlchemy, because the store
    is a dozen statements whose locking differs per engine anyway (_Postgres adapts them).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY, study TEXT, arm TEXT, seed INTEGER, kind TEXT, status TEXT,
    attempts INTEGER DEFAULT 0, worker TEXT, lease_until REAL, started REAL, finished REAL, error TEXT,
    run_dir TEXT, config TEXT, trial INTEGER, seconds REAL, ord INTEGER
);
CREATE TABLE IF NOT EXISTS arms (arm TEXT PRIMARY KEY, best TEXT);
"""
LEASE_S = 60.0
OPEN = ("pending", "running")
TERMINAL = ("finished", "diverged", "failed", "pruned")  # a cell in one of these is not claimed again


def worker_id(pid: int | None = None) -> str:
    """host:pid of this process (or of `pid`, a worker started on this host), as the store records it."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def _dead_here(worker: str | None) -> bool:
    """True when `worker` ran on this host and its process is gone."""
    if not worker or ":" not in worker:
        return False
    host, pid = worker.rsplit(":", 1)
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def _insert(db: sqlite3.Connection, cells: list[dict]) -> None:
    n = db.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
    for i, c in enumerate(cells):
        db.execute(
            "INSERT OR IGNORE INTO cells (cell_id, study, arm, seed, kind, status, run_dir, config, ord) "
            "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
            (c["cell_id"], c["study"], c["arm"], c["seed"], c["kind"], c["run_dir"], json.dumps(c["config"]), n + i),
        )


def is_postgres(where: Path | str) -> bool:
    return str(where).startswith(("postgresql:", "postgresql+", "postgres:"))


def check_store(url: str) -> str:
    """`--store` as given: a PostgreSQL URL (Optuna's form) or sqlite:///PATH; a UserError for anything else."""
    if is_postgres(url) or url.startswith("sqlite:///"):
        return url
    raise UserError(f"--store {url}: expected postgresql://user@host/db (or postgresql+psycopg://...), or "
                    f"sqlite:///path/grid.sqlite; without --store, SQLite in the study folder")


class _Row(dict):
    """A result row read by column name or by position, as sqlite3.Row is."""

    def __init__(self, names: list[str], values: tuple):
        super().__init__(zip(names, values))
        self.values_ = values

    def __getitem__(self, key):
        return self.values_[key] if isinstance(key, int) else super().__getitem__(key)


UPSERT_ARM = " ON CONFLICT (arm) DO UPDATE SET best = EXCLUDED.best"


class _Postgres:
    """A psycopg connection with the small part of sqlite3's API the store and its callers use: execute() with `?`
    placeholders and SQLite's `INSERT OR IGNORE` / `INSERT OR REPLACE INTO arms`, BEGIN IMMEDIATE as a table lock,
    rows by name and position. Autocommit, so that BEGIN ... COMMIT are the store's own, as in SQLite."""

    def __init__(self, url: str, schema: str):
        try:
            import psycopg
        except ImportError:
            raise UserError("--store postgresql://...: the PostgreSQL driver is missing; pip install "
                            "'psycopg[binary]'") from None
        conninfo = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)  # SQLAlchemy's driver suffix
        try:
            self.conn = psycopg.connect(conninfo, autocommit=True, row_factory=self._rows, connect_timeout=30)
        except psycopg.OperationalError as e:
            raise UserError(f"--store {url}: cannot connect ({str(e).strip().splitlines()[0]})") from None
        name = '"' + schema.replace('"', '""') + '"'
        self.conn.execute("BEGIN")
        self.conn.execute("SELECT pg_advisory_xact_lock(7461)")  # two workers creating one schema at once collide
        self.conn.execute(f"CREATE SCHEMA IF NOT EXISTS {name}")
        self.conn.execute(f"SET search_path TO {name}")
        for statement in SCHEMA.replace(" REAL", " DOUBLE PRECISION").split(";"):  # REAL is 4 bytes here
            if statement.strip():
                self.conn.execute(statement)
        self.conn.execute("COMMIT")

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self.conn.info.transaction_status != TransactionStatus.IDLE

    @staticmethod
    def _rows(cursor):
        names = [c.name for c in cursor.description or ()]
        return lambda values: _Row(names, values)

    def execute(self, sql: str, params: tuple = ()):
        if sql == "BEGIN IMMEDIATE":
            self.conn.execute("BEGIN")
            return self.conn.execute("LOCK TABLE cells, arms IN SHARE ROW EXCLUSIVE MODE")
        if sql.startswith("INSERT OR IGNORE "):
            sql = sql.replace("INSERT OR IGNORE ", "INSERT ", 1) + " ON CONFLICT DO NOTHING"
        elif sql.startswith("INSERT OR REPLACE INTO arms "):
            sql = sql.replace("INSERT OR REPLACE ", "INSERT ", 1) + UPSERT_ARM
        return self.conn.execute(sql.replace("?", "%s"), params)


class CellStore:
    def __init__(self, where: Path | str, schema: str | None = None, read_only: bool = False):
        """where: a SQLite file (a path, or sqlite:///PATH) or a PostgreSQL URL; schema: PostgreSQL's namespace for
        this study (its folder name), unused by SQLite, whose file is the study's own. read_only (SQLite): a file
        that must exist, opened so that nothing is written to it or beside it (`grid status`)."""
        self.path, self.schema = where, schema  # what it was opened from: `reopen` opens it again
        if is_postgres(where):
            self.db = _Postgres(str(where), schema or "harness_grid")
            return
        file = Path(str(where).removeprefix("sqlite:///"))
        if read_only and not file.is_file():
            raise UserError(f"{file}: no such cell store; expected a study folder made by `grid run`")
        try:
            if read_only:
                self.db = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True, timeout=120,
                                          isolation_level=None)
                self.db.execute("SELECT COUNT(*) FROM cells").fetchone()
            else:
                self.db = sqlite3.connect(file, timeout=120, isolation_level=None)
                self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:  # not a database, another program's, or cut short
            raise UserError(f"{file}: not a readable SQLite database of grid cells ({e}); move it aside to start the "
                            f"study's store afresh, or give another --runs-dir") from None
        self.db.row_factory = sqlite3.Row

    def reopen(self) -> CellStore:
        """The same store on a new connection (a connection is not shared between threads)."""
        return CellStore(self.path, self.schema)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def add(self, cells: list[dict]) -> None:
        """Insert cells that are not there yet (a re-run of `grid run` keeps the existing ones)."""
        with self.transaction() as db:
            _insert(db, cells)

    def _release_orphans(self, db: sqlite3.Connection) -> None:
        now = time.time()
        for row in db.execute("SELECT cell_id, worker, lease_until FROM cells WHERE status = 'running'").fetchall():
            if row["lease_until"] < now or _dead_here(row["worker"]):
                db.execute("UPDATE cells SET status = 'pending', worker = NULL WHERE cell_id = ?", (row["cell_id"],))

    def claim(self, worker: str, make_more: Callable[[sqlite3.Connection], list[dict]] | None = None) -> dict | None:
        """The next pending cell, now leased to `worker`; None when nothing is claimable right now.
        `make_more(db)` may return new cells (e.g. seed runs once an arm's tuning is done) inside the transaction."""
        with self.transaction() as db:
            self._release_orphans(db)
            row = self._next(db)
            if row is None and make_more is not None:
                new = make_more(db)
                if new:
                    _insert(db, new)
                    row = self._next(db)
            if row is None:
                return None
            now = time.time()
            db.execute(
                "UPDATE cells SET status = 'running', worker = ?, lease_until = ?, attempts = attempts + 1, "
                "started = COALESCE(started, ?) WHERE cell_id = ?",
                (worker, now + LEASE_S, now, row["cell_id"]),
            )
            return {**dict(row), "config": json.loads(row["config"]), "attempts": row["attempts"] + 1}

    @staticmethod
    def _next(db: sqlite3.Connection) -> sqlite3.Row | None:
        return db.execute("SELECT * FROM cells WHERE status = 'pending' ORDER BY kind = 'run', ord LIMIT 1").fetchone()

    def renew(self, cell_id: str, worker: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE cells SET lease_until = ? WHERE cell_id = ? AND worker = ?",
                       (time.time() + LEASE_S, cell_id, worker))

    def release(self, workers: list[str]) -> int:
        """Hand the cells that `workers` hold back to pending at once, as a stopped worker does (harness.grid.stopping),
        instead of after their lease runs out; returns how many went back."""
        sql = ("UPDATE cells SET status = 'pending', worker = NULL, lease_until = NULL "
               "WHERE status = 'running' AND worker = ?")
        if self.db.in_transaction:  # a signal cut a transaction of this connection short: it never committed
            self.db.execute("ROLLBACK")
        with self.transaction() as db:
            return sum(db.execute(sql, (w,)).rowcount for w in workers)

    def set_trial(self, cell_id: str, trial: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE cells SET trial = ? WHERE cell_id = ?", (trial, cell_id))

    def finish(self, cell_id: str, worker: str, status: str, error: str | None = None) -> None:
        assert status in TERMINAL, status
        with self.transaction() as db:
            row = db.execute("SELECT started FROM cells WHERE cell_id = ?", (cell_id,)).fetchone()
            now = time.time()
            db.execute(
                "UPDATE cells SET status = ?, error = ?, finished = ?, seconds = ?, lease_until = NULL "
                "WHERE cell_id = ? AND worker = ?",
                (status, error, now, now - (row["started"] or now), cell_id, worker),
            )

    def restart(self, cell_id: str) -> None:
        """Back to pending as if never run (`grid run --restart-cell`): no attempts, no error, no times."""
        with self.transaction() as db:
            db.execute("UPDATE cells SET status = 'pending', attempts = 0, worker = NULL, lease_until = NULL, "
                       "started = NULL, finished = NULL, seconds = NULL, error = NULL, trial = NULL "
                       "WHERE cell_id = ?", (cell_id,))

    def rows(self) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM cells ORDER BY ord")]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys((*OPEN, *TERMINAL), 0)
        for r in self.db.execute("SELECT status, COUNT(*) AS n FROM cells GROUP BY status"):
            out[r["status"]] = r["n"]
        return out

    def set_best(self, db: sqlite3.Connection, arm: str, best: dict) -> None:
        db.execute("INSERT OR REPLACE INTO arms (arm, best) VALUES (?, ?)", (arm, json.dumps(best)))

    def best(self) -> dict[str, dict]:
        return {r["arm"]: json.loads(r["best"]) for r in self.db.execute("SELECT arm, best FROM arms")}

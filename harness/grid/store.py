"""The grid's cell store: one SQLite file per study with leased claims, so concurrent workers run each cell once.

A worker claims a pending cell inside `BEGIN IMMEDIATE` (one writer at a time) and holds a lease it renews while the
cell runs. A cell whose lease ran out, or whose worker process on this host is gone (kill -9), goes back to
pending and resumes from its last checkpoint. SQLite suits one machine or a shared disk with POSIX locks.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

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


class CellStore:
    def __init__(self, path: Path):
        self.path = path
        self.db = sqlite3.connect(path, timeout=120, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.executescript(SCHEMA)

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

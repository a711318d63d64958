"""The journal: a crash-safe local record of every store write, until the store has it.

Every write a tracker makes (creating a run, its params, metrics and tags, small artifacts,
its final status) is appended here before any store call, in one SQLite file per study (WAL
mode, so an appended entry survives the process being killed). The writer drains entries to
MLflow in order and marks each done only once the store confirmed it. A write that failed
stays, and is retried; nothing is dropped after a warning.

Entries belong to the writer that appended them (its *owner*). An owner holds an exclusive
``flock`` on its own lock file for as long as it lives; the operating system releases it
when the process ends, however it ends. Another tracker of the same study, or
``mlflow-hpo sync``, takes over the entries of owners whose lock is free: a killed worker's
writes are finished by whoever comes next, and a live worker's are never touched.

The files live under ``MLFLOW_HPO_HOME`` (default: the user cache directory,
``~/.cache/mlflow-hpo`` on Linux), in ``journals/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_hpo._core import names

try:  # POSIX: owners are told alive or dead by their flock
    import fcntl
except ImportError:  # pragma: no cover - Windows: other owners are taken to be alive
    fcntl = None  # type: ignore[assignment]

PENDING, DONE, DEAD = 0, 1, 2
_ROWS = 200  # rows per statement: 800 parameters, under SQLite's oldest limit (999)


def _chunks(items: list[Any]) -> list[list[Any]]:
    """``items`` in runs of at most ``_ROWS``, one statement each."""
    return [items[i : i + _ROWS] for i in range(0, len(items), _ROWS)]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS runs (ref TEXT PRIMARY KEY, run_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ops (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ref TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    owner TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    state INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE INDEX IF NOT EXISTS ops_state ON ops (state, owner, seq);
CREATE TABLE IF NOT EXISTS trials (key TEXT PRIMARY KEY, owner TEXT NOT NULL);
"""


def home() -> Path:
    """Where journals live: ``MLFLOW_HPO_HOME``, else the platform's user cache directory."""
    configured = os.environ.get(names.ENV_HOME)
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "win32":  # pragma: no cover
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
        return base / "mlflow-hpo" / "Cache"
    if sys.platform == "darwin":  # pragma: no cover
        return Path.home() / "Library" / "Caches" / "mlflow-hpo"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlflow-hpo"


def journal_dir() -> Path:
    return home() / "journals"


def journal_path(study_key: str) -> Path:
    return journal_dir() / f"{study_key}.db"


@dataclass
class Op:
    """One journalled store write. ``ref`` names the run it writes to (``study`` or
    ``trial:<key>``); ``payload`` is JSON-able. ``task`` marks an in-memory step that is
    ordered with the others but never journalled (saving a model before its upload)."""

    ref: str
    kind: str
    payload: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    attempts: int = 0
    task: Any = None
    result: Any = None
    state: int = PENDING  # in memory: PENDING, DONE, DEAD, or -1 while being written
    counted: bool = False  # its failure was counted once
    slot: int = 0  # its place in the writer's queue
    queued: float = 0.0  # when it was queued (time.monotonic())


class Owner:
    """The lock that says a writer is alive, held until :meth:`release` or process exit."""

    def __init__(self) -> None:
        self.worker = f"{socket.gethostname()}-{os.getpid()}"  # the process, as tags name it
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._file: Any = None
        folder = home() / "owners"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{_safe(self.id)}.lock"
        if fcntl is not None:
            self._file = open(self.path, "w")  # noqa: SIM115 - held for the owner's life
            fcntl.flock(self._file, fcntl.LOCK_EX)
        _LIVE_OWNERS.add(self.id)

    def release(self) -> None:
        _LIVE_OWNERS.discard(self.id)
        if self._file is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self._file.close()
            self._file = None


_LIVE_OWNERS: set[str] = set()


def _safe(owner_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in owner_id)


def owner_alive(owner_id: str) -> bool:
    """Whether the writer ``owner_id`` may still write: ours, on another host (unknown, so
    yes), or holding its lock. A free or missing lock means its process is gone."""
    if owner_id in _LIVE_OWNERS:
        return True
    host = owner_id.split(":", 1)[0]
    if host != socket.gethostname() or fcntl is None:
        return True
    path = home() / "owners" / f"{_safe(owner_id)}.lock"
    try:
        handle = open(path)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return True
    with contextlib.suppress(OSError):
        path.unlink()  # its owner is gone: nobody will hold this lock again
    handle.close()
    return False


class Journal:
    """One study's journal file, shared by every writer of that study on this machine.

    Args:
        path: The SQLite file (created if needed).
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            str(path), timeout=60, isolation_level=None, check_same_thread=False
        )
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")  # one commit, not six

    # ------------------------------------------------------------------ writing
    def _write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> list[int]:
        """Run ``statements`` as one transaction; the last row id of each.

        A single statement runs on its own: SQLite makes it one atomic transaction, taking
        the write lock as it starts, as ``BEGIN IMMEDIATE`` would. That matters more than
        the commit: every call into SQLite releases the interpreter lock, and while the
        writer thread runs Python (MLflow's store) each release can cost the calling
        thread a switch interval (5 ms) before it gets the lock back. A trial's end in
        the user's thread makes one such call, not five.
        """
        rowids = []
        with self._lock:
            if len(statements) == 1:
                sql, args = statements[0]
                return [int(self._conn.execute(sql, args).lastrowid or 0)]
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    rowids.append(int(self._conn.execute(sql, args).lastrowid or 0))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return rowids

    def append(self, ops: list[Op], owner: str) -> None:
        """Record ``ops`` (one transaction) and give each its sequence number."""
        chunks = _chunks([op for op in ops if op.task is None])
        if not chunks:  # only in-memory steps: nothing to journal
            return
        statements = [
            (
                "INSERT INTO ops (ref, kind, payload, owner) VALUES "
                + ", ".join(["(?, ?, ?, ?)"] * len(chunk)),
                tuple(v for op in chunk for v in (op.ref, op.kind, json.dumps(op.payload), owner)),
            )
            for chunk in chunks
        ]
        # One statement inserts its rows in order, with consecutive ids: its last row's id
        # gives every one's.
        for chunk, last in zip(chunks, self._write(statements), strict=True):
            for offset, op in enumerate(reversed(chunk)):
                op.seq = last - offset

    def attempt(self, op: Op) -> None:
        """Note that ``op`` is about to reach the store: a later replay of a create then
        looks for the run first (the store may have confirmed it as the process died)."""
        op.attempts += 1
        self._write([("UPDATE ops SET attempts = ? WHERE seq = ?", (op.attempts, op.seq))])

    def finish(self, done: list[Op], run_ids: dict[str, str] | None = None) -> None:
        """Mark ``done`` as confirmed by the store, and remember new run ids, at once."""
        statements: list[tuple[str, tuple[Any, ...]]] = [
            (
                f"UPDATE ops SET state = ? WHERE seq IN ({', '.join(['?'] * len(chunk))})",
                (DONE, *(op.seq for op in chunk)),
            )
            for chunk in _chunks(done)
        ]
        statements += [
            (
                "INSERT OR REPLACE INTO runs (ref, run_id) VALUES "
                + ", ".join(["(?, ?)"] * len(chunk)),
                tuple(v for pair in chunk for v in pair),
            )
            for chunk in _chunks(list((run_ids or {}).items()))
        ]
        if statements:
            self._write(statements)

    def failed(self, op: Op, error: str, *, dead: bool = False) -> None:
        """Keep ``op`` with its error: pending (retried) or dead (the store refuses it)."""
        state = DEAD if dead else PENDING
        self._write(
            [("UPDATE ops SET state = ?, error = ? WHERE seq = ?", (state, error[:4000], op.seq))]
        )

    def set_meta(self, values: dict[str, str | None]) -> None:
        self._write(
            [
                ("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (k, v))
                for k, v in values.items()
                if v is not None
            ]
        )

    def note_trial(self, key: str, owner: str) -> None:
        """Say which writer runs trial ``key`` (a resume leaves a live owner's trials to it)."""
        self._write([("INSERT OR REPLACE INTO trials (key, owner) VALUES (?, ?)", (key, owner))])

    def adopt(self, owner: str) -> int:
        """Take over the pending entries of writers that are gone; return how many."""
        with self._lock:
            others = [
                row[0]
                for row in self._conn.execute(
                    "SELECT DISTINCT owner FROM ops WHERE state = ? AND owner != ?",
                    (PENDING, owner),
                )
            ]
        dead = [o for o in others if not owner_alive(o)]
        taken = 0
        for gone in dead:
            with self._lock:
                taken += self._conn.execute(
                    "UPDATE ops SET owner = ? WHERE owner = ? AND state = ?",
                    (owner, gone, PENDING),
                ).rowcount
        return taken

    def prune(self) -> None:
        """Forget confirmed entries (keeps the file small in long studies)."""
        self._write([("DELETE FROM ops WHERE state = ?", (DONE,))])

    # ------------------------------------------------------------------ reading
    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._conn.execute(sql, args))

    def pending(self, owner: str) -> list[Op]:
        rows = self._read(
            "SELECT seq, ref, kind, payload, attempts FROM ops "
            "WHERE state = ? AND owner = ? ORDER BY seq",
            (PENDING, owner),
        )
        return [Op(ref, kind, json.loads(p), seq, attempts) for seq, ref, kind, p, attempts in rows]

    def counts(self) -> dict[str, int]:
        """Entries per state, over every owner: ``pending``, ``dead``, and ``trials``
        (trial runs with a pending entry)."""
        rows = dict(self._read("SELECT state, COUNT(*) FROM ops GROUP BY state"))
        trials = self._read(
            "SELECT COUNT(DISTINCT ref) FROM ops WHERE state = ? AND ref LIKE 'trial:%'",
            (PENDING,),
        )[0][0]
        return {"pending": rows.get(PENDING, 0), "dead": rows.get(DEAD, 0), "trials": trials}

    def held_by_live(self, owner: str) -> dict[str, int]:
        """Pending entries of writers other than ``owner`` that are still running, per
        writer: left to them (they write them when the store takes them)."""
        rows = self._read(
            "SELECT owner, COUNT(*) FROM ops WHERE state = ? AND owner != ? GROUP BY owner",
            (PENDING, owner),
        )
        return {str(o): int(n) for o, n in rows if owner_alive(str(o))}

    def dead_errors(self) -> list[str]:
        return [row[0] for row in self._read("SELECT error FROM ops WHERE state = ?", (DEAD,))]

    def run_id(self, ref: str) -> str | None:
        rows = self._read("SELECT run_id FROM runs WHERE ref = ?", (ref,))
        return str(rows[0][0]) if rows else None

    def run_ids(self) -> dict[str, str]:
        return {str(ref): str(run_id) for ref, run_id in self._read("SELECT ref, run_id FROM runs")}

    def meta(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._read("SELECT key, value FROM meta")}

    def trial_owner(self, key: str) -> str | None:
        rows = self._read("SELECT owner FROM trials WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def discard(self) -> None:
        """Delete the file of a study nobody else can write to (a one-process study)."""
        with self._lock, contextlib.suppress(sqlite3.Error):
            # About to be deleted: closing need not make the file durable (no fsync).
            self._conn.execute("PRAGMA synchronous=OFF")
        self.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                Path(f"{self.path}{suffix}").unlink()


def wait_for_file_lock(path: Path, timeout: float = 120.0) -> Any:
    """An exclusive lock on ``path`` (created if needed), waited for up to ``timeout``;
    returns the open handle to close. Without ``fcntl``, returns ``None`` at once."""
    if fcntl is None:  # pragma: no cover
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")  # noqa: SIM115 - the caller closes it
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except OSError:
            if time.monotonic() > deadline:
                handle.close()
                raise
            time.sleep(0.05)

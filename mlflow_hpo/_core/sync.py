"""``mlflow-hpo sync``: write what the journals still hold, and end runs left RUNNING.

Every journal under ``MLFLOW_HPO_HOME`` (or the one of a given study) is opened; the entries
of writers that are gone are taken over and written to the store, in order; then the
study's trial runs still RUNNING whose writer is gone are ended KILLED. Entries of a writer
that is still running are left to it, and the result says which process holds them.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_hpo._core import journal, reconcile
from mlflow_hpo._core.safety import Safety
from mlflow_hpo._core.secrets import redact
from mlflow_hpo._core.store import STUDY, Store, connect
from mlflow_hpo._core.writer import Writer


@dataclass
class SyncResult:
    """What syncing one journal did."""

    path: Path
    study_key: str
    written: int
    pending: int
    dead: int
    ended: int
    errors: list[str]
    # Pending writes of processes still running (a notebook whose store went down), per
    # process ("host pid"): left to them, as they retry until the store takes them.
    held: dict[str, int] = field(default_factory=dict)


def journals(study_key: str | None = None) -> list[Path]:
    """The journal files, or the one of ``study_key``."""
    if study_key is not None:
        path = journal.journal_path(study_key)
        return [path] if path.exists() else []
    folder = journal.journal_dir()
    return sorted(folder.glob("*.db")) if folder.exists() else []


def sync_one(path: Path, tracking_uri: str | None, timeout: float) -> SyncResult:
    """Write the pending entries of one journal (bounded by ``timeout``)."""
    jour = journal.Journal(path)
    meta = jour.meta()
    key = meta.get("study_key", path.stem)
    uri = tracking_uri or meta.get("tracking_uri")
    if not uri:
        return SyncResult(path, key, 0, jour.counts()["pending"], 0, 0, ["no tracking URI"])
    client = connect(uri, uri)
    store = Store(client, jour)
    writer = Writer(jour, store.execute, store.ready, Safety(False), synchronous=False)
    taken = writer.adopt()
    drained = writer.flush(timeout)
    ended = 0
    if drained and store.ready(STUDY):
        study_run = client.get_run(store.run_id(STUDY))
        runs = reconcile.on_resume(client, store, study_run)
        ended = sum(1 for r in runs.values() if r.owner_gone)
    stopped = writer.close(0.0) or writer.halt(grace=30.0)
    counts = jour.counts()
    errors = [redact(e) for e in jour.dead_errors()]
    held = {_process(o): n for o, n in jour.held_by_live(writer.owner.id).items()}
    if stopped:  # else a write still in flight uses it until the process exits
        jour.close()
    return SyncResult(path, key, taken, counts["pending"], counts["dead"], ended, errors, held)


def _process(owner_id: str) -> str:
    """``host pid N`` of a writer's owner id (``host:pid:nonce``); a writer on another
    machine cannot be checked from here, so it is taken as running, and said so."""
    parts = owner_id.split(":")
    if len(parts) < 3:
        return owner_id
    where = "" if parts[0] == socket.gethostname() else ", on another machine: not checked"
    return f"{parts[0]} pid {parts[1]}{where}"


def sync(
    study_key: str | None = None, tracking_uri: str | None = None, timeout: float = 60.0
) -> list[SyncResult]:
    """Sync every journal (or one study's); see the module docstring."""
    return [sync_one(path, tracking_uri, timeout) for path in journals(study_key)]

"""The study summary on the study run: its journal entry, and how often a new best is shown.

The summary (counts per state, the best trial's values, number and params, the Pareto front,
``trials.csv`` at close) is one ``summary`` entry, written once everything queued before it
is in the store. While the study runs, every new best is shown at once (not waited for).
A throttle (``EVERY_S`` > 0) would hold a best back until the next trial, which never comes
after the last one of a study used without ``with``: it stays off.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from mlflow_hpo._core import batch, journal, names
from mlflow_hpo._core.store import STUDY
from mlflow_hpo._core.study import StudyModel

EVERY_S = 0.0  # seconds between two writes of a running study's best (see above)


def summary_op(
    study: StudyModel, with_table: bool, tags: dict[str, Any], tables: dict[str, str]
) -> journal.Op:
    """The summary entry. ``tables`` are CSV files with ``run_id`` and ``trial_key``
    columns; the run ids are filled in when the entry is written."""
    now = batch.now_ms()
    metrics, summary_tags, best_key = study.summary()
    payload: dict[str, Any] = {
        "needs": STUDY,
        "metrics": [[m.key, m.value, now, 0] for m in batch.metrics(metrics, 0, now)],
        "tags": [[t.key, t.value] for t in batch.tags({**tags, **summary_tags})],
        "best_ref": f"trial:{best_key}" if best_key is not None else None,
    }
    if with_table and len(study):
        tables = {names.ARTIFACT_TRIALS: study.table({}), **tables}
    if tables:
        payload["tables"] = tables
    return journal.Op(STUDY, "summary", payload)


class BestShown:
    """When a running study's new best is written (see the module docstring)."""

    def __init__(self) -> None:
        self._next = 0.0  # monotonic time after which a new best is written at once
        self._stale = False  # a new best waits for the next trial (or the close)
        self._lock = threading.Lock()

    def due(self, improved: bool) -> bool:
        """Whether to write the summary now, after a trial that ``improved`` (or not)."""
        now = time.monotonic()
        with self._lock:
            if not (improved or self._stale):
                return False
            due = now >= self._next
            if due:
                self._next = now + EVERY_S
            self._stale = not due
            return due

"""The study summary on the study run, as one journal entry.

The summary (counts per state, the best trial's values, number and params, the Pareto front,
``trials.csv`` at close) is one ``summary`` entry, written once everything queued before it
is in the store. While the study runs, every new best is journalled with the trial that found
it, so a synchronous trial waits for both and the study run is current when the trial's hook
returns; a throttle would hold the last best of a study used without ``with`` back until its
close.
"""

from __future__ import annotations

from typing import Any

from mlflow_hpo._core import batch, journal, names
from mlflow_hpo._core.store import STUDY
from mlflow_hpo._core.study import StudyModel


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

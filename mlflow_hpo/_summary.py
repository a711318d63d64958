"""The study summary on the parent run: best trial, counts per state, ``trials.csv``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from mlflow_hpo import _batch, names

if TYPE_CHECKING:
    from mlflow_hpo._tracker import StudyTracker


@dataclass
class StudySummary:
    """What the parent run shows about the whole study, in backend-neutral form."""

    counts: dict[str, int] = field(default_factory=dict)
    best_key: str | None = None
    best_number: int | None = None
    best_values: dict[str, float] = field(default_factory=dict)
    best_params: dict[str, Any] = field(default_factory=dict)
    # Built on the writer thread, once queued trials have their run ids.
    trials_table: Callable[[dict[str, str]], str] | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    table_name: str = names.ARTIFACT_TRIALS


def write_summary(tracker: StudyTracker, summary: StudySummary) -> None:
    """One ``log_batch`` on the parent, plus ``trials.csv`` when the summary has a table."""
    assert tracker.parent is not None
    parent = tracker.parent
    metrics: dict[str, float] = {
        f"{names.METRIC_N_TRIALS_PREFIX}{state.lower()}": n for state, n in summary.counts.items()
    }
    tags: dict[str, Any] = {
        names.TAG_LOGGING_WARNINGS: tracker.safety.warning_count,
        **summary.tags,
    }
    if summary.best_key is not None:
        metrics.update(
            {f"{names.METRIC_BEST_PREFIX}{k}": v for k, v in summary.best_values.items()}
        )
        tags[names.TAG_BEST_TRIAL_NUMBER] = summary.best_number
        best_run = tracker.run_id_for(summary.best_key)
        if best_run:
            tags[names.TAG_BEST_TRIAL_RUN_ID] = best_run
        tags.update(
            {f"{names.TAG_BEST_PARAM_PREFIX}{k}": v for k, v in summary.best_params.items()}
        )
    tracker.client.log_batch(
        parent.info.run_id, metrics=_batch.metrics(metrics), tags=_batch.tags(tags)
    )
    if summary.trials_table is not None:
        table = summary.trials_table(tracker.all_run_ids())
        with tempfile.TemporaryDirectory(prefix="mlflow-hpo-") as tmp:
            with open(os.path.join(tmp, summary.table_name), "w") as f:
                f.write(table)
            get_artifact_repository(parent.info.artifact_uri).log_artifacts(tmp)

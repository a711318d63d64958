"""Translate Keras Tuner objects (trials, oracles) into the core's neutral types."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

from keras_tuner.src.engine import trial as trial_module

from mlflow_hpo import _batch, names
from mlflow_hpo._summary import StudySummary
from mlflow_hpo._trial import TrialResult

_STATES = {
    trial_module.TrialStatus.COMPLETED: names.STATE_COMPLETE,
    trial_module.TrialStatus.FAILED: names.STATE_FAIL,
    trial_module.TrialStatus.INVALID: names.STATE_FAIL,
}
HYPERBAND_CONTINUES = "tuner/trial_id"


def objective_names(oracle: Any) -> list[str]:
    return [str(oracle.objective.name)]


def directions(oracle: Any) -> list[str]:
    return ["maximize" if oracle.objective.direction == "max" else "minimize"]


def active_values(trial: Any) -> dict[str, Any]:
    """Only the hyperparameters active under ``conditional_scope``, plus Hyperband's
    ``tuner/*`` bookkeeping (fixed values the oracle adds outside the search space)."""
    hp = trial.hyperparameters
    out = {}
    for name, value in hp.values.items():
        if name.startswith("tuner/") or hp.is_active(name):
            out[name] = value
    return out


def to_result(trial: Any, objective: list[str]) -> TrialResult:
    state = _STATES.get(trial.status, names.STATE_KILLED)
    values: dict[str, float] = {}
    if state == names.STATE_COMPLETE and trial.score is not None:
        values = {objective[0]: float(trial.score)}
    tags: dict[str, Any] = {names.TAG_KT_STATUS: trial.status}
    if trial.best_step is not None and state == names.STATE_COMPLETE:
        # Keras Tuner counts from the start of this fit; Hyperband continues at initial_epoch.
        initial = int(trial.hyperparameters.values.get("tuner/initial_epoch", 0) or 0)
        tags[names.TAG_BEST_STEP] = int(trial.best_step) + initial
    error = trial.message if state == names.STATE_FAIL else None
    return TrialResult(
        state=state,
        params=active_values(trial),
        distributions={"space": trial.hyperparameters.get_config().get("space", [])},
        values=values,
        tags=tags,
        error=error
        or ("Keras Tuner marked the trial failed." if state == names.STATE_FAIL else None),
        error_class=_batch.error_class(error) if error else None,
    )


def summary(
    oracle: Any,
    objective: list[str],
    with_table: bool,
    full: bool = True,
    key_of: Callable[[Any], str] = str,
) -> StudySummary:
    """The parent-run summary from the oracle; ``full=False`` (a distributed worker, whose
    oracle is a client) writes only the best trial, leaving counts and table to the chief.
    ``key_of`` maps a trial id to the tracker key of its latest attempt."""
    out = StudySummary()
    trials = list(getattr(oracle, "trials", {}).values()) if full else []
    if trials:
        counts: dict[str, int] = {}
        for t in trials:
            state = _STATES.get(t.status, t.status)
            counts[state] = counts.get(state, 0) + 1
        # Zeros too, so a count from an earlier summary (e.g. "running") never lingers.
        for state in (names.STATE_COMPLETE, names.STATE_FAIL, "RUNNING", "IDLE", "STOPPED"):
            counts.setdefault(state, 0)
        out.counts = counts
    best = oracle.get_best_trials(1)
    if best and best[0].score is not None:
        out.best_key = key_of(best[0].trial_id)
        out.best_number = int(best[0].trial_id)
        out.best_values = {objective[0]: float(best[0].score)}
        out.best_params = active_values(best[0])
    if with_table and trials:
        rows = [(t.trial_id, t.status, t.score, t.best_step, active_values(t)) for t in trials]

        def table(run_ids: dict[str, str]) -> str:
            keys = sorted({k for *_, values in rows for k in values})
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow(["trial_id", "run_id", "status", "score", "best_step", *keys])
            for trial_id, status, score, step, values in rows:
                writer.writerow(
                    [
                        trial_id,
                        run_ids.get(key_of(trial_id), ""),
                        status,
                        score,
                        step,
                        *(values.get(k, "") for k in keys),
                    ]
                )
            return buffer.getvalue()

        out.trials_table = table
    return out

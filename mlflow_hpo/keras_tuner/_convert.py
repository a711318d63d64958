"""Translate Keras Tuner objects (trials, oracles) into the core's neutral types."""

from __future__ import annotations

from typing import Any

from mlflow_hpo._core import batch, compat, names
from mlflow_hpo._core.trial import TrialResult

HYPERBAND_CONTINUES = "tuner/trial_id"


def _states() -> dict[str, str]:
    status = compat.keras_tuner_trial_status()
    return {
        status.COMPLETED: names.STATE_COMPLETE,
        status.FAILED: names.STATE_FAIL,
        status.INVALID: names.STATE_FAIL,
    }


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
    state = _states().get(trial.status, names.STATE_KILLED)
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
        error_class=batch.error_class(error) if error else None,
    )


def finished(oracle: Any, objective: list[str]) -> list[tuple[str, int, TrialResult]]:
    """Every finished trial the oracle knows (a distributed worker's oracle knows only the
    trials it was told of)."""
    states = _states()
    return [
        (str(t.trial_id), int(t.trial_id), to_result(t, objective))
        for t in getattr(oracle, "trials", {}).values()
        if t.status in states
    ]

"""Translate Optuna objects (studies, frozen trials) into the core's neutral types."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mlflow_hpo._core import compat, names, parent
from mlflow_hpo._core.trial import TrialResult

PARENT_ATTR = "mlflow_hpo:parent_run_id"

_STATES = {
    TrialState.COMPLETE: names.STATE_COMPLETE,
    TrialState.PRUNED: names.STATE_PRUNED,
    TrialState.FAIL: names.STATE_FAIL,
}


def ms(moment: datetime | None) -> int | None:
    return int(moment.timestamp() * 1000) if moment is not None else None


def study_key(study: optuna.Study) -> str | None:
    """Key shared by every process that opens this study; ``None`` for in-memory studies."""
    location = compat.optuna_storage_location(study)
    if location is None:
        return None
    description = f"{location}|{compat.optuna_study_id(study)}|{study.study_name}"
    return parent.study_key("optuna", description)


def known_parent(study: optuna.Study) -> str | None:
    value = compat.optuna_study_system_attr(study, PARENT_ATTR)
    return str(value) if value else None


def remember_parent(study: optuna.Study, run_id: str) -> None:
    compat.optuna_set_study_system_attr(study, PARENT_ATTR, run_id)


def directions(study: optuna.Study) -> list[str]:
    return [d.name.lower() for d in study.directions]


def objective_names(metric_name: str | list[str], study: optuna.Study) -> list[str]:
    """One metric name per objective, the way optuna-integration's callback broadcasts."""
    n = len(study.directions)
    if isinstance(metric_name, str):
        if metric_name == "value" and study.metric_names and len(study.metric_names) == n:
            return list(study.metric_names)
        return [metric_name] if n == 1 else [f"{metric_name}_{i}" for i in range(n)]
    return list(metric_name)


def distributions(trial: FrozenTrial) -> dict[str, Any]:
    return {
        name: json.loads(optuna.distributions.distribution_to_json(dist))
        for name, dist in trial.distributions.items()
    }


def to_result(
    trial: FrozenTrial,
    metric_names: list[str],
    *,
    user_attr_prefix: str | None = names.TAG_USER_ATTR_PREFIX,
    state: str | None = None,
    error: str | None = None,
    error_class: str | None = None,
) -> TrialResult:
    """A :class:`TrialResult` for ``trial``; ``state`` overrides (e.g. from the wrapper)."""
    neutral = state or _STATES.get(trial.state, names.STATE_KILLED)
    values: dict[str, float] = {}
    # A pruned trial carries its last intermediate value as "value" in Optuna: not logged.
    if neutral == names.STATE_COMPLETE and trial.values is not None:
        values = dict(zip(metric_names, trial.values, strict=False))
    steps = sorted(trial.intermediate_values.items())
    tags: dict[str, Any] = {}
    if user_attr_prefix is not None:
        tags = {f"{user_attr_prefix}{k}": v for k, v in trial.user_attrs.items()}
    if neutral == names.STATE_FAIL and error is None:
        error = (
            "Optuna marked this trial FAIL without an exception from the objective "
            "(for example it returned NaN, None or the wrong number of values, or its "
            "worker stopped sending heartbeats)."
        )
    return TrialResult(
        state=neutral,
        params=dict(trial.params),
        distributions=distributions(trial),
        values=values,
        histories={names.METRIC_INTERMEDIATE: steps} if steps else {},
        tags=tags,
        start_ms=ms(trial.datetime_start),
        end_ms=ms(trial.datetime_complete),
        error=error,
        error_class=error_class,
        pruned_step=steps[-1][0] if neutral == names.STATE_PRUNED and steps else None,
    )


def finished(
    study: optuna.Study,
    metric_names: list[str],
    user_attr_prefix: str | None,
    skip: Callable[[str], bool] | None = None,
) -> list[tuple[str, int, TrialResult]]:
    """Every finished trial of ``study`` (all workers'), as the core's neutral records;
    ``skip(key)``: trials left out before they are converted (those the caller knows)."""
    return [
        (str(t.number), t.number, to_result(t, metric_names, user_attr_prefix=user_attr_prefix))
        for t in study.get_trials(deepcopy=False)
        if t.state.is_finished() and not (skip is not None and skip(str(t.number)))
    ]

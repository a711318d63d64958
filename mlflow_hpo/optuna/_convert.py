"""Translate Optuna objects (studies, frozen trials) into the core's neutral types."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mlflow_hpo import _parent, names
from mlflow_hpo._summary import StudySummary
from mlflow_hpo._trial import TrialResult

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
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # unwrap _CachedStorage
    if isinstance(backend, optuna.storages.InMemoryStorage):
        return None
    location = getattr(backend, "url", None)
    if location is not None:
        from sqlalchemy.engine import make_url

        location = make_url(location).render_as_string(hide_password=True)
    else:
        journal = getattr(backend, "_backend", None)
        location = getattr(journal, "_file_path", None) or getattr(journal, "_url", None)
    if location is None:
        return None
    description = f"{type(backend).__name__}|{location}|{study._study_id}|{study.study_name}"
    return _parent.study_key("optuna", description)


def known_parent(study: optuna.Study) -> str | None:
    attrs = study._storage.get_study_system_attrs(study._study_id)
    value = attrs.get(PARENT_ATTR)
    return str(value) if value else None


def remember_parent(study: optuna.Study, run_id: str) -> None:
    study._storage.set_study_system_attr(study._study_id, PARENT_ATTR, run_id)


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
            "(for example it returned NaN, None or the wrong number of values)."
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


def summary(study: optuna.Study, metric_names: list[str], with_table: bool) -> StudySummary:
    """The parent-run summary of ``study``, computed by Optuna itself."""
    trials = study.get_trials(deepcopy=False)
    # Every state gets a count, zero included, so a stale "running" count never lingers.
    counts = {state.name: 0 for state in TrialState}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    out = StudySummary(counts=counts)
    out.tags = {f"{names.TAG_USER_ATTR_PREFIX}{k}": v for k, v in study.user_attrs.items()}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        if len(study.directions) == 1:
            best = study.best_trial
        else:
            front = sorted(study.best_trials, key=lambda t: t.number)
            best = front[0]
            out.tags[names.TAG_PARETO_TRIALS] = ",".join(str(t.number) for t in front)
        out.best_key = str(best.number)
        out.best_number = best.number
        out.best_values = dict(zip(metric_names, best.values or [], strict=False))
        out.best_params = dict(best.params)
    if with_table and trials:
        frame = study.trials_dataframe()

        def table(run_ids: dict[str, str]) -> str:
            frame.insert(1, "run_id", [run_ids.get(str(n), "") for n in frame["number"]])
            return str(frame.to_csv(index=False))

        out.trials_table = table
    return out

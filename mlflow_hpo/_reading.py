"""A study read back from MLflow, whichever backend or worker wrote it, as an in-memory
Optuna study (what the reports draw with ``optuna.visualization``).

The trials are read once, page by page, keeping only what the charts need of each run; the
per-step histories are fetched for the best trials only (a chart, not a dump).
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
from collections import Counter
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run

from mlflow_hpo._core import names
from mlflow_hpo._core import parent as parent_module
from mlflow_hpo._core.study import study_objective
from mlflow_hpo._rebuild import trial_record

_EXTRA_PARAMS = {names.PARAM_TRIAL_NUMBER, "iter", "n_resources"}
# Per-step histories, by backend: Optuna's reports, Keras epochs of the objective, CV folds.
_STEP_METRICS = (names.METRIC_INTERMEDIATE, names.METRIC_EPOCH_PREFIX + "{o}", "test_{o}")
_STATES = {"COMPLETE": "COMPLETE", "PRUNED": "PRUNED", "FAIL": "FAIL", "KILLED": "FAIL"}


def _compact(run: Run, hyper: set[str] | None, objective: str) -> dict[str, Any]:
    """What the charts need of a trial run, and nothing else (studies can be large)."""
    params, metrics = run.data.params, run.data.metrics
    keys = (set(params) - _EXTRA_PARAMS) if hyper is None else hyper
    steps = next((p.format(o=objective) for p in _STEP_METRICS if p.format(o=objective) in
                  metrics), None)  # fmt: skip
    skipped = metrics.get(names.METRIC_N_OUTPUT_EXCEPTIONS, 0) > 0
    return {
        "run_id": run.info.run_id,
        "number": int(float(params.get(names.PARAM_TRIAL_NUMBER, 0))),
        "state": _STATES.get(run.data.tags.get(names.TAG_STATE, "")),
        "running": run.info.status == "RUNNING",
        "params": {k: params[k] for k in keys if k in params},
        "value": metrics.get(objective),
        "steps": steps,
        "exceptions": run.data.tags.get(names.TAG_OUTPUT_EXCEPTIONS, "?") if skipped else None,
    }


def read_study(client: MlflowClient, parent: Run, curves: int) -> tuple[Any, Counter[str]]:
    """The study's trials, read once, as an in-memory Optuna study (the per-step values of
    its ``curves`` best trials); and the skipped-layer count of each layer name."""
    import optuna

    tags = parent.data.tags
    objective, direction = study_objective(parent)
    best = {
        k[len(names.TAG_BEST_PARAM_PREFIX) :]
        for k in tags
        if k.startswith(names.TAG_BEST_PARAM_PREFIX)
    }
    trials = [
        _compact(run, best or None, objective)
        for page in parent_module.child_pages(client, parent.info.experiment_id, parent.info.run_id)
        for run in page
    ]
    names_ = sorted({k for t in trials for k in t["params"]})
    typed = {n: _typed([t["params"].get(n) for t in trials]) for n in names_}
    distributions = {n: _distribution(v) for n, v in typed.items()}
    study = optuna.create_study(
        storage=_read_only_storage(),
        direction=optuna.study.StudyDirection[direction.upper()],
        study_name=tags.get(names.TAG_STUDY_NAME),
    )
    valued = [t for t in trials if t["value"] is not None and t["steps"]]
    sign = -1.0 if direction == "maximize" else 1.0
    drawn = {t["run_id"] for t in sorted(valued, key=lambda t: sign * t["value"])[:curves]}
    exceptions: Counter[str] = Counter()
    for index in sorted(range(len(trials)), key=lambda i: trials[i]["number"]):
        trial = trials[index]
        state = trial["state"]
        if state is None or trial["running"]:
            continue
        value = trial["value"]
        if state == "COMPLETE" and value is None:
            state = "FAIL"
        params = {n: v[index] for n, v in typed.items() if v[index] is not None}
        steps = {}
        if trial["run_id"] in drawn:
            history = client.get_metric_history(trial["run_id"], trial["steps"])
            steps = {m.step: m.value for m in history}
        study.add_trial(
            _trial(
                optuna.trial.TrialState[state],
                value if state == "COMPLETE" else None,
                params,
                {n: distributions[n] for n in params},
                steps,
            )
        )
        if trial["exceptions"] is not None:
            exceptions.update(_output_exceptions(client, trial["run_id"], trial["exceptions"]))
    return study, exceptions


def _trial(
    state: Any, value: float | None, params: dict[str, Any], distributions: Any, steps: Any
) -> Any:
    """A finished trial that the study's storage keeps as it is.

    ``study.add_trial`` hands the storage a template, which Optuna's in-memory storage
    deep-copies (params, distributions, intermediate values: a second of a 10,000-trial
    report). This trial is made for that study alone, so a shallow copy is enough.
    """
    now = datetime.datetime.now()
    finished = state.is_finished()
    return _shared_trial_class()(
        number=-1,
        state=state,
        value=value,
        datetime_start=now,
        datetime_complete=now if finished else None,
        params=params,
        distributions=distributions,
        user_attrs={},
        system_attrs={},
        intermediate_values=steps,
        trial_id=-1,
    )


@functools.cache
def _shared_trial_class() -> Any:
    from optuna.trial import FrozenTrial

    class SharedTrial(FrozenTrial):
        def __deepcopy__(self, memo: dict[int, Any]) -> SharedTrial:
            return copy.copy(self)

    return SharedTrial


def _read_only_storage() -> Any:
    """Optuna's in-memory storage, handing out its trials without copying them.

    Every ``optuna.visualization`` chart reads ``study.trials``, a deep copy of all of them
    (half a second per chart at 10,000 trials). The charts only read, and this study is
    made for them alone, so the copies are not needed.
    """
    from optuna.storages import InMemoryStorage

    class ReadOnly(InMemoryStorage):
        def get_all_trials(
            self, study_id: int, deepcopy: bool = True, states: Any = None
        ) -> list[Any]:
            return super().get_all_trials(study_id, deepcopy=False, states=states)

    return ReadOnly()


def _typed(raw: list[str | None]) -> list[Any]:
    """Param strings back to numbers when every value of the param is numeric."""
    present = [v for v in raw if v is not None]
    for kind in (int, float):
        try:
            converted = [kind(v) for v in present]
        except ValueError:
            continue
        if kind is float and not all(v == v for v in converted):  # NaN: keep as labels
            break
        it = iter(converted)
        return [next(it) if v is not None else None for v in raw]
    return list(raw)


def _distribution(values: list[Any]) -> Any:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    present = [v for v in values if v is not None]
    if present and all(isinstance(v, int) for v in present):
        return IntDistribution(min(present), max(present))
    if present and all(isinstance(v, float | int) for v in present):
        low, high = float(min(present)), float(max(present))
        return FloatDistribution(low, high, log=low > 0 and high / low >= 100)
    return CategoricalDistribution(sorted({str(v) for v in present}) or ["-"])


def _output_exceptions(client: MlflowClient, run_id: str, tag: str) -> list[str]:
    """The list from its tag, or (over the tag limit) its artifact."""
    try:
        found = json.loads(tag)
    except ValueError:
        try:
            found = trial_record(
                client,
                client.get_run(run_id),
                names.TAG_OUTPUT_EXCEPTIONS,
                names.ARTIFACT_OUTPUT_EXCEPTIONS,
            )
        except (LookupError, OSError, ValueError):
            return []
    return [str(n) for n in found]

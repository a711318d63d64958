"""``MLflowCallback``: a drop-in for optuna-integration's deprecated callback.

Same constructor arguments, same params, metrics, run names and experiment choice, the same
tags (plus mlflow-hpo's bookkeeping tags, which the journal needs to write each trial
exactly once), and the same ``track_in_mlflow()`` decorator, so switching is one changed
import. It is a thin configuration of the core tracker: flat runs, no study run. What
differs is what was wrong: no global lock (``n_jobs>1`` trials run in parallel and stay
nested), FAILED and PRUNED trials get the matching run status, a pruned trial carries no
objective value, an uncaught exception still ends its run, and a store outage loses nothing.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import mlflow
import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from mlflow_hpo._core import compat, names, parent
from mlflow_hpo._core.batch import error_text
from mlflow_hpo._core.options import Options
from mlflow_hpo._core.tracker import StudyTracker
from mlflow_hpo._core.trial import TrialResult, TrialRun, activate
from mlflow_hpo._core.validate import flag
from mlflow_hpo._core.validate import tracking_uri as check_uri
from mlflow_hpo.errors import ConfigurationError
from mlflow_hpo.optuna._convert import ms

_STATES = {
    TrialState.COMPLETE: names.STATE_COMPLETE,
    TrialState.PRUNED: names.STATE_PRUNED,
    TrialState.FAIL: names.STATE_FAIL,
}


class _FlatTracker(StudyTracker):
    """The core tracker in the drop-in's layout: one top-level run per trial."""

    fixed_run_name: str | None = None
    extra_tags: dict[str, Any]
    nest_under: Callable[[], str | None]

    def base_tags(self, handle: TrialRun) -> dict[str, Any]:
        tags = {
            names.TAG_STUDY_KEY: self.study_key,
            names.TAG_TRIAL_KEY: handle.key,
            names.TAG_OWNER: self.owner,
            **self.extra_tags,
        }
        enclosing = self.nest_under()
        if enclosing:
            tags[names.TAG_PARENT_RUN_ID] = enclosing
        return tags

    def run_name(self, handle: TrialRun) -> str:
        return self.fixed_run_name or str(handle.number)


class MLflowCallback:
    """Drop-in replacement for ``optuna_integration.mlflow.MLflowCallback``.

    Args:
        tracking_uri: The MLflow tracking URI (set globally, as the original does).
        metric_name: Objective metric name, or one name per objective.
        create_experiment: Log into an experiment named after the study.
        mlflow_kwargs: ``experiment_id``, ``run_name``, ``nested`` and ``tags`` for the runs.
        tag_study_user_attrs: Add the study's user attributes as tags of each trial run.
        tag_trial_user_attrs: Add the trial's user attributes as tags.

    Raises:
        ConfigurationError: An argument is invalid.

    Example:
        >>> from mlflow_hpo.optuna import MLflowCallback  # was: optuna_integration.mlflow
        >>> study.optimize(objective, n_trials=10, callbacks=[MLflowCallback()])
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        metric_name: str | Sequence[str] = "value",
        create_experiment: bool = True,
        mlflow_kwargs: dict[str, Any] | None = None,
        tag_study_user_attrs: bool = False,
        tag_trial_user_attrs: bool = True,
    ) -> None:
        if not isinstance(metric_name, str | Sequence) or not metric_name:
            raise ConfigurationError(
                "metric_name", "a string or a sequence of strings", metric_name
            )
        if mlflow_kwargs is not None and not isinstance(mlflow_kwargs, dict):
            raise ConfigurationError(
                "mlflow_kwargs", "None or a dict of start_run arguments", mlflow_kwargs
            )
        self._tracking_uri = check_uri(tracking_uri)
        self._metric_name = metric_name
        self._create_experiment = flag("create_experiment", create_experiment)
        self._mlflow_kwargs = dict(mlflow_kwargs or {})
        self._tag_study_user_attrs = flag("tag_study_user_attrs", tag_study_user_attrs)
        self._tag_trial_user_attrs = flag("tag_trial_user_attrs", tag_trial_user_attrs)
        # Worker threads have no active run of their own: remember the caller's for nesting.
        self._enclosing_run_id = parent.enclosing_run_id()
        self._trackers: dict[int, _FlatTracker] = {}
        self._lock = threading.Lock()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        tracker = self._tracker(study)
        handle = tracker.trial(str(trial.number), trial.number, ms(trial.datetime_start))
        with tracker.safety.guard(f"logging trial {trial.number}"):
            tracker.finish(handle, self._result(trial, study))

    def track_in_mlflow(self) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: the objective's ``mlflow.log_*`` calls land on the trial's run."""

        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(func)
            def wrapper(trial: Trial) -> Any:
                tracker = self._tracker(trial.study)
                handle = tracker.trial(str(trial.number), trial.number, ms(trial.datetime_start))
                handle.run()  # upstream starts the run here: the objective may use its id
                try:
                    with activate(handle):
                        return func(trial)
                except optuna.TrialPruned:
                    raise
                except BaseException as error:
                    # The callback is skipped for exceptions Optuna re-raises: end it here.
                    frozen = compat.optuna_frozen_trial(trial)
                    result = self._result(frozen, trial.study, names.STATE_FAIL)
                    result.error, result.error_class = error_text(error), type(error).__name__
                    with tracker.safety.guard(f"ending failed trial {trial.number}"):
                        tracker.finish(handle, result)
                    raise

            return wrapper

        return decorator

    # ------------------------------------------------------------------ internals
    def _tracker(self, study: optuna.Study) -> _FlatTracker:
        key = compat.optuna_study_id(study)
        with self._lock:
            tracker = self._trackers.get(key)
            if tracker is None:
                tracker = self._open(study)
                self._trackers[key] = tracker
            return tracker

    def _open(self, study: optuna.Study) -> _FlatTracker:
        if self._mlflow_kwargs.get("experiment_id") is not None:
            experiment_id: str | None = str(self._mlflow_kwargs["experiment_id"])
        elif not self._create_experiment:
            experiment_id = compat.default_experiment_id()
        else:
            experiment_id = None  # an experiment named after the study, as upstream
        options = Options.of(
            {
                "tracking_uri": self._tracking_uri,
                "experiment_name": None if experiment_id else study.study_name,
                "reports": False,
                "verbose": 0,
            }
        )
        tracker = _FlatTracker(names.BACKEND_OPTUNA, options, nested=False, capture_fit=False)
        tracker.plain = True
        name = self._mlflow_kwargs.get("run_name")
        tracker.fixed_run_name = str(name) if name is not None else None
        tracker.extra_tags = dict(self._mlflow_kwargs.get("tags") or {})
        tracker.nest_under = self._nest_under
        tracker.open(
            study.study_name,
            directions=[d.name.lower() for d in study.directions],
            objective_names=self._names(len(study.directions)),
            experiment_id=experiment_id,
        )
        return tracker

    def _nest_under(self) -> str | None:
        if not self._mlflow_kwargs.get("nested"):
            return None
        active = mlflow.active_run()
        return str(active.info.run_id) if active is not None else self._enclosing_run_id

    def _names(self, n: int) -> list[str]:
        if isinstance(self._metric_name, str):
            return [self._metric_name] if n == 1 else [f"{self._metric_name}_{i}" for i in range(n)]
        if len(self._metric_name) != n:
            raise ConfigurationError(
                "metric_name",
                f"{n} names, one per objective of the study",
                self._metric_name,
                "Match objective values and names, or use default broadcasting.",
            )
        return list(self._metric_name)

    def _result(
        self, trial: FrozenTrial, study: optuna.Study, state: str | None = None
    ) -> TrialResult:
        state = state or _STATES.get(trial.state, names.STATE_KILLED)
        values: dict[str, float] = {}
        if state == names.STATE_COMPLETE and trial.values is not None:
            values = dict(zip(self._names(len(trial.values)), trial.values, strict=True))
        tags: dict[str, Any] = {
            "number": str(trial.number),
            "datetime_start": str(trial.datetime_start),
            "datetime_complete": str(trial.datetime_complete),
        }
        if trial.state.is_finished() or state != names.STATE_COMPLETE:
            tags["state"] = state if state == names.STATE_FAIL else trial.state.name
        directions = [d.name for d in study.directions]
        tags["direction"] = str(directions) if len(directions) != 1 else directions[0]
        tags.update({f"{k}_distribution": str(v) for k, v in trial.distributions.items()})
        if self._tag_trial_user_attrs:
            tags.update(trial.user_attrs)
        if self._tag_study_user_attrs:
            tags.update(study.user_attrs)
        return TrialResult(
            state=state,
            params=dict(trial.params),
            values=values,
            tags=tags,
            start_ms=ms(trial.datetime_start),
            end_ms=ms(trial.datetime_complete),
        )

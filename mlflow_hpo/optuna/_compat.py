"""``MLflowCallback``: a drop-in for optuna-integration's deprecated callback.

Same constructor arguments, same keys, tags, run names and experiment choice, and the same
``track_in_mlflow()`` decorator, so switching is one changed import. What differs is what
was wrong: runs are written with an explicit ``MlflowClient`` (no global lock, so ``n_jobs>1``
trials run in parallel and stay nested), FAILED and PRUNED trials get the matching run status,
a pruned trial carries no objective value, and an uncaught exception still ends its run.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import mlflow
import optuna
from mlflow import MlflowClient
from mlflow.tracking import fluent
from mlflow.tracking.fluent import ActiveRun
from optuna.trial import FrozenTrial, Trial, TrialState

from mlflow_hpo import _batch, _parent, names
from mlflow_hpo._batch import error_text
from mlflow_hpo._safety import Safety
from mlflow_hpo._trial import active_run_in_thread
from mlflow_hpo._validate import validate_bool, validate_tracking_uri
from mlflow_hpo.errors import ConfigurationError
from mlflow_hpo.optuna._convert import ms

RUN_ID_ATTRIBUTE_KEY = "mlflow_run_id"  # the key optuna-integration uses

_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}


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
        self._tracking_uri = validate_tracking_uri(tracking_uri)
        self._metric_name = metric_name
        self._create_experiment = validate_bool("create_experiment", create_experiment)
        self._mlflow_kwargs = dict(mlflow_kwargs or {})
        self._tag_study_user_attrs = validate_bool("tag_study_user_attrs", tag_study_user_attrs)
        self._tag_trial_user_attrs = validate_bool("tag_trial_user_attrs", tag_trial_user_attrs)
        self._safety = Safety()
        # Worker threads have no active run of their own: remember the caller's for nesting.
        active = fluent.active_run()
        self._enclosing_run_id = active.info.run_id if active is not None else None
        self._experiments: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        with self._safety.guard(f"logging trial {trial.number}"):
            client = MlflowClient(self._tracking_uri)
            run_id = trial.system_attrs.get(RUN_ID_ATTRIBUTE_KEY)
            if run_id is None:
                run_id = self._create_run(client, study, trial.number, trial.datetime_start)
            metrics = []
            if trial.state == TrialState.COMPLETE and trial.values is not None:
                metrics = _batch.metrics(
                    dict(zip(self._names(trial.values), trial.values, strict=True))
                )
            client.log_batch(
                run_id,
                metrics=metrics,
                params=_batch.params(trial.params),
                tags=_batch.tags(self._tags(trial, study)),
            )
            client.set_terminated(
                run_id, _STATUS.get(trial.state, "KILLED"), ms(trial.datetime_complete)
            )

    def track_in_mlflow(self) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: the objective's ``mlflow.log_*`` calls land on the trial's run."""

        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(func)
            def wrapper(trial: Trial) -> Any:
                client = MlflowClient(self._tracking_uri)
                run_id = self._create_run(client, trial.study, trial.number, trial.datetime_start)
                trial.storage.set_trial_system_attr(trial._trial_id, RUN_ID_ATTRIBUTE_KEY, run_id)
                try:
                    with active_run_in_thread(ActiveRun(client.get_run(run_id))):
                        return func(trial)
                except optuna.TrialPruned:
                    raise
                except BaseException as error:
                    # The callback is skipped for exceptions Optuna re-raises: end it here.
                    with self._safety.guard(f"ending failed trial {trial.number}"):
                        client.set_tag(run_id, "state", TrialState.FAIL.name)
                        client.set_tag(run_id, names.TAG_ERROR_CLASS, type(error).__name__)
                        client.log_text(run_id, error_text(error), names.ARTIFACT_ERROR)
                        client.set_terminated(run_id, "FAILED")
                    raise

            return wrapper

        return decorator

    # ------------------------------------------------------------------ internals
    def _experiment_id(self, client: MlflowClient, study: optuna.Study) -> str:
        if self._mlflow_kwargs.get("experiment_id") is not None:
            return str(self._mlflow_kwargs["experiment_id"])
        if not self._create_experiment:
            return str(fluent._get_experiment_id())
        with self._lock:
            if study.study_name not in self._experiments:
                self._experiments[study.study_name] = _parent.resolve_experiment(
                    client, study.study_name, study.study_name
                )
            return self._experiments[study.study_name]

    def _create_run(
        self, client: MlflowClient, study: optuna.Study, number: int, start: Any
    ) -> str:
        if self._tracking_uri is not None and mlflow.get_tracking_uri() != self._tracking_uri:
            mlflow.set_tracking_uri(self._tracking_uri)
        tags = dict(self._mlflow_kwargs.get("tags") or {})
        if self._mlflow_kwargs.get("nested"):
            active = fluent.active_run()
            parent = active.info.run_id if active is not None else self._enclosing_run_id
            if parent:
                tags[names.TAG_PARENT_RUN_ID] = parent
        run = client.create_run(
            self._experiment_id(client, study),
            start_time=ms(start),
            tags=_batch.tag_dict(tags),
            run_name=self._mlflow_kwargs.get("run_name", str(number)),
        )
        return str(run.info.run_id)

    def _names(self, values: Sequence[float]) -> list[str]:
        if isinstance(self._metric_name, str):
            if len(values) > 1:
                return [f"{self._metric_name}_{i}" for i in range(len(values))]
            return [self._metric_name]
        if len(self._metric_name) != len(values):
            raise ValueError(
                f"Running multi-objective optimization with {len(values)} objective values, "
                f"but {len(self._metric_name)} names specified. Match objective values and "
                "names, or use default broadcasting."
            )
        return list(self._metric_name)

    def _tags(self, trial: FrozenTrial, study: optuna.Study) -> dict[str, Any]:
        tags: dict[str, Any] = {
            "number": str(trial.number),
            "datetime_start": str(trial.datetime_start),
            "datetime_complete": str(trial.datetime_complete),
        }
        if trial.state.is_finished():
            tags["state"] = trial.state.name
        directions = [d.name for d in study.directions]
        tags["direction"] = str(directions) if len(directions) != 1 else directions[0]
        tags.update({f"{k}_distribution": str(v) for k, v in trial.distributions.items()})
        if self._tag_trial_user_attrs:
            tags.update(trial.user_attrs)
        if self._tag_study_user_attrs:
            tags.update(study.user_attrs)
        return tags

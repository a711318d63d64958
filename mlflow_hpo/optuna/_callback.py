"""``MlflowStudyCallback``: the Optuna hook (a study callback plus an objective wrapper)."""

from __future__ import annotations

import atexit
import functools
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from mlflow_hpo import _keras, names
from mlflow_hpo._batch import error_text
from mlflow_hpo._tracker import StudyTracker
from mlflow_hpo._trial import TrialRun, activate
from mlflow_hpo.errors import ConfigurationError
from mlflow_hpo.optuna import _convert


def _check_metric_name(metric_name: Any) -> str | list[str]:
    if isinstance(metric_name, str) and metric_name:
        return metric_name
    if (
        isinstance(metric_name, Sequence)
        and not isinstance(metric_name, str)
        and metric_name
        and all(isinstance(m, str) and m for m in metric_name)
        and len(set(metric_name)) == len(metric_name)
    ):
        return list(metric_name)
    raise ConfigurationError(
        "metric_name",
        "a non-empty string, or a list of distinct names (one per objective)",
        metric_name,
    )


class MlflowStudyCallback:
    """Log an Optuna study to MLflow: one parent run, one nested run per trial.

    Pass the instance to ``callbacks=`` and wrap the objective with :meth:`track`. Use it as a
    context manager so the parent run gets its summary and ends with the right status.

    Args:
        experiment_name: MLflow experiment. ``None``: MLflow's active experiment, else the
            study name.
        metric_name: Name of the objective metric, or one name per objective.
        tracking_uri: MLflow store; ``None`` keeps MLflow's configured URI.
        log_models: ``"best"`` (default), ``"all"``, ``"none"`` or an int k (top k).
        synchronous: ``False`` writes from a background thread so logging overlaps training.
        strict: Raise logging errors instead of warning (default: ``MLFLOW_HPO_STRICT``).
        verbose: ``0`` hides the progress line (trials done, best so far, ETA), which is
            shown only when stderr is a terminal.
        reports: Write the study's charts to its run's ``reports/`` folder when it closes;
            ``None`` follows ``MLFLOW_HPO_REPORTS`` (default: on).
        expected_trials: The ``n_trials`` you pass to ``optimize`` (Optuna does not tell
            callbacks), so the progress line can show an ETA.
        tag_trial_user_attrs: Trial user attributes become ``user_attr.*`` tags.

    Raises:
        ConfigurationError: An argument is invalid; raised before any run exists.

    Example:
        >>> from mlflow_hpo.optuna import MlflowStudyCallback
        >>> study = optuna.create_study(direction="maximize")
        >>> with MlflowStudyCallback(experiment_name="digits",
        ...                          metric_name="val_accuracy") as tracker:
        ...     study.optimize(tracker.track(objective), n_trials=30,
        ...                    callbacks=[tracker], n_jobs=2)
    """

    def __init__(
        self,
        experiment_name: str | None = None,
        metric_name: str | Sequence[str] = "value",
        tracking_uri: str | None = None,
        log_models: str | int = "best",
        *,
        synchronous: bool = True,
        strict: bool | None = None,
        verbose: int = 1,
        reports: bool | None = None,
        expected_trials: int | None = None,
        tag_trial_user_attrs: bool = True,
    ) -> None:
        self._metric_name = _check_metric_name(metric_name)
        if expected_trials is not None and (
            isinstance(expected_trials, bool)
            or not isinstance(expected_trials, int)
            or expected_trials < 1
        ):
            raise ConfigurationError(
                "expected_trials", "None or a positive int (optimize's n_trials)", expected_trials
            )
        self._tracker = StudyTracker(
            "optuna",
            experiment_name=experiment_name,
            tracking_uri=tracking_uri,
            log_models=log_models,
            synchronous=synchronous,
            strict=strict,
            verbose=verbose,
            reports=reports,
        )
        self._tracker.progress.total = expected_trials
        self._user_attrs = tag_trial_user_attrs
        self._study: optuna.Study | None = None
        self._names: list[str] = []
        self._in_context = False
        self._best_logged: int | None = None
        self._warned_other_study = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------- public surface
    @property
    def parent_run_id(self) -> str | None:
        """The study's parent run id, once the first trial has started."""
        return self._tracker.parent_run_id

    @property
    def warning_count(self) -> int:
        """How many logging steps failed (each was a warning)."""
        return self._tracker.safety.warning_count

    def flush(self) -> None:
        """Wait until every queued write (``synchronous=False``) is in the store."""
        self._tracker.flush()

    def track(self, objective: Callable[..., Any]) -> Callable[[Trial], Any]:
        """Wrap ``objective`` so each trial runs with its child run active in its thread.

        Inside, ``mlflow.log_*``, Keras callbacks and ``mlflow_hpo.log_model`` land on the
        trial's run. An exception from the objective marks the run FAILED (with
        ``error.txt``) and is re-raised unchanged, also when ``catch=`` does not cover it.
        """
        if not callable(objective):
            raise ConfigurationError("objective", "a callable taking an optuna Trial", objective)

        @functools.wraps(objective)
        def tracked(trial: Trial, *args: Any, **kwargs: Any) -> Any:
            handle = self._start(trial)
            if handle is None:
                return objective(trial, *args, **kwargs)
            _keras.register_live_logger(
                handle, self._tracker.log_live, self._tracker.policy.enabled
            )
            try:
                with activate(handle):
                    return objective(trial, *args, **kwargs)
            except optuna.TrialPruned:
                raise
            except BaseException as error:
                self._fail(trial, handle, error)
                raise
            finally:
                _keras.unregister_live_logger(handle)

        return tracked

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """The study callback: write the finished ``trial`` and refresh the summary."""
        with self._tracker.safety.guard(f"logging trial {trial.number}"):
            if not self._bind(study):
                return
            handle = self._tracker.trial(
                str(trial.number), trial.number, _convert.ms(trial.datetime_start)
            )
            self._tracker.finish(handle, self._result(trial))
            self._after_trial(study)

    def __enter__(self) -> MlflowStudyCallback:
        self._in_context = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "KILLED"
        else:
            status = "FAILED"
        self.close(status)

    def close(self, status: str = "FINISHED") -> None:
        """Write the final summary (with ``trials.csv``) and end the parent run."""
        if self._tracker.closed:
            return
        with self._tracker.safety.guard("closing the study"):
            self._reconcile()
            if self._study is not None:
                self._write_summary(self._study, with_table=True)
        self._tracker.close(status)

    # ------------------------------------------------------------------ internals
    def _bind(self, study: optuna.Study) -> bool:
        """Open the parent for ``study`` on first sight; False if not tracking it."""
        if self._study is not None:
            same = study._study_id == self._study._study_id and (
                study.study_name == self._study.study_name
            )
            if not same and not self._warned_other_study:
                self._warned_other_study = True
                self._tracker.safety.report(
                    f"tracking study {study.study_name!r}",
                    ConfigurationError(
                        "study",
                        f"the study this tracker already logs ({self._study.study_name!r})",
                        study.study_name,
                        "Create one MlflowStudyCallback per study.",
                    ),
                )
            return same and self._tracker.active
        with self._lock:
            if self._study is None:
                names_ = _convert.objective_names(self._metric_name, study)
                if len(names_) != len(study.directions):
                    raise ConfigurationError(
                        "metric_name",
                        f"{len(study.directions)} names, one per objective",
                        self._metric_name,
                        "Pass one name per objective, or a single string.",
                    )
                self._names = names_
                known = _convert.known_parent(study)
                parent = self._tracker.open(
                    study.study_name,
                    key=_convert.study_key(study),
                    known_parent_id=known,
                    directions=_convert.directions(study),
                    objective_names=names_,
                )
                if parent is not None and parent != known:
                    with self._tracker.safety.guard("remembering the parent run id"):
                        _convert.remember_parent(study, parent)
                for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                    if t.values is not None:
                        self._tracker.policy.seed(str(t.number), list(t.values))
                self._study = study
                if not self._in_context:
                    atexit.register(self.close)
        return self._bind(study)

    def _start(self, trial: Trial) -> TrialRun | None:
        with self._tracker.safety.guard(f"starting trial {trial.number}"):
            if self._bind(trial.study):
                _keras.install_fit_hook()
                return self._tracker.trial(
                    str(trial.number), trial.number, _convert.ms(trial.datetime_start)
                )
        return None

    def _result(self, trial: FrozenTrial, **overrides: Any) -> Any:
        prefix = names.TAG_USER_ATTR_PREFIX if self._user_attrs else None
        return _convert.to_result(trial, self._names, user_attr_prefix=prefix, **overrides)

    def _fail(self, trial: Trial, handle: TrialRun, error: BaseException) -> None:
        with self._tracker.safety.guard(f"logging failed trial {trial.number}"):
            frozen = trial.study._storage.get_trial(trial._trial_id)
            interrupted = isinstance(error, KeyboardInterrupt)
            result = self._result(
                frozen,
                state=names.STATE_KILLED if interrupted else names.STATE_FAIL,
                error=error_text(error),
                error_class=type(error).__name__,
            )
            self._tracker.finish(handle, result)

    def _after_trial(self, study: optuna.Study) -> None:
        if not self._in_context:
            self._write_summary(study, with_table=False)
            return
        # Inside ``with`` the full summary waits for the end; only a new best is written now.
        if len(study.directions) == 1:
            try:
                best = study.best_trial.number
            except ValueError:
                return
            if best != self._best_logged:
                self._best_logged = best
                self._write_summary(study, with_table=False)

    def _write_summary(self, study: optuna.Study, with_table: bool) -> None:
        self._tracker.summarize(_convert.summary(study, self._names, with_table))

    def _reconcile(self) -> None:
        """Finish trials whose callback never ran here (no ``callbacks=[tracker]``)."""
        if self._study is None:
            return
        by_number = {t.number: t for t in self._study.get_trials(deepcopy=False)}
        for handle in self._tracker.open_handles():
            frozen = by_number.get(handle.number)
            if frozen is not None and frozen.state.is_finished():
                self._tracker.finish(handle, self._result(frozen))

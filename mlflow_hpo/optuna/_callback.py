"""``MlflowStudyCallback``: the Optuna hook (a study callback plus an objective wrapper)."""

from __future__ import annotations

import atexit
import functools
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from mlflow_hpo._backend import StudyHandle, exit_status, new_tracker, status_at_exit
from mlflow_hpo._core import compat, keras, names
from mlflow_hpo._core.batch import error_text
from mlflow_hpo._core.trial import TrialRun, activate
from mlflow_hpo._core.validate import flag, positive_int
from mlflow_hpo.errors import ConfigurationError
from mlflow_hpo.optuna import _convert

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from mlflow_hpo._core.options import WriteOptions


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


class MlflowStudyCallback(StudyHandle):
    """Log an Optuna study to MLflow: one study run, one nested run per trial.

    Pass the instance to ``callbacks=`` and wrap the objective with :meth:`track`. Use it as a
    context manager so the study run gets its summary and ends with the right status.

    Args:
        experiment_name: MLflow experiment. ``None``: MLflow's active experiment, else the
            study name.
        metric_name: Name of the objective metric, or one name per objective.
        tracking_uri: MLflow store; ``None`` keeps MLflow's configured URI.
        log_models: ``"best"`` (default), ``"all"``, ``"none"`` or an int k (top k).
        expected_trials: The ``n_trials`` you pass to ``optimize`` (Optuna does not tell
            callbacks), so the progress line can show an ETA.
        tag_trial_user_attrs: Trial user attributes become ``user_attr.*`` tags.
        **options: The shared tracking options (:class:`mlflow_hpo.TrackingOptions`):
            ``synchronous``, ``strict``, ``verbose``, ``reports``, ``report_interval``,
            ``close_timeout``.

    Raises:
        ConfigurationError: An argument is invalid; raised before any run exists. At the
            first trial: the study has another number of objectives than ``metric_name``
            names, or the callback already tracks another study.

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
        expected_trials: int | None = None,
        tag_trial_user_attrs: bool = True,
        **options: Unpack[WriteOptions],
    ) -> None:
        self._metric_name = _check_metric_name(metric_name)
        total = positive_int("expected_trials", expected_trials)
        self._user_attrs = flag("tag_trial_user_attrs", tag_trial_user_attrs)
        self._study_tracker = new_tracker(
            names.BACKEND_OPTUNA,
            {
                "experiment_name": experiment_name,
                "tracking_uri": tracking_uri,
                "log_models": log_models,
                **options,
            },
        )
        self._tracker = self._study_tracker
        self._tracker.progress.total = total
        self._study: optuna.Study | None = None
        self._names: list[str] = []
        self._in_context = False
        self._interrupted = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------- public surface
    def track(self, objective: Callable[..., Any]) -> Callable[[Trial], Any]:
        """Wrap ``objective`` so each trial runs with its child run active in its thread.

        Inside, ``mlflow.log_*``, Keras ``fit`` (captured) and ``mlflow_hpo.log_model`` land
        on the trial's run. An exception from the objective marks the run FAILED (with
        ``error.txt``) and is re-raised unchanged, also when ``catch=`` does not cover it.
        """
        if not callable(objective):
            raise ConfigurationError("objective", "a callable taking an optuna Trial", objective)

        @functools.wraps(objective)
        def tracked(trial: Trial, *args: Any, **kwargs: Any) -> Any:
            handle = self._start(trial)
            if handle is None:
                return objective(trial, *args, **kwargs)
            keras.register(handle, self._tracker.log_live, self._tracker.policy.enabled)
            try:
                with activate(handle):
                    return objective(trial, *args, **kwargs)
            except optuna.TrialPruned:
                raise
            except BaseException as error:
                self._fail(trial, handle, error)
                raise
            finally:
                keras.unregister(handle)

        return tracked

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """The study callback: write the finished ``trial``."""
        self._bind(study)
        if not self._tracker.active:
            return
        handle = self._tracker.trial(
            str(trial.number), trial.number, _convert.ms(trial.datetime_start)
        )
        with self._tracker.safety.guard(f"logging trial {trial.number}"):
            self._tracker.finish(handle, self._result(trial))

    def __enter__(self) -> MlflowStudyCallback:
        self._in_context = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(exit_status(exc_type))

    def close(self, status: str = "FINISHED") -> None:
        """Write the final summary (with ``trials.csv``) and end the study run."""
        study = self._study
        tracker = self._tracker

        def count_every_trial() -> None:
            if study is not None:
                self._reconcile_open_handles(study)
                # Other workers' trials; this tracker's own are counted already.
                rest = _convert.finished(study, self._names, None, skip=tracker.is_logged)
                for key, number, result in rest:
                    tracker.observe(key, number, result)

        tags = {}
        if study is not None:
            tags = {f"{names.TAG_USER_ATTR_PREFIX}{k}": v for k, v in study.user_attrs.items()}
        tracker.close(status, tags=tags, before=count_every_trial)

    def _close_at_exit(self) -> None:
        self.close(status_at_exit(self._interrupted))

    # ------------------------------------------------------------------ internals
    def _bind(self, study: optuna.Study) -> None:
        """Open the study run for ``study`` on first sight.

        Raises:
            ConfigurationError: ``study`` is not the study this callback tracks, or its
                number of objectives does not match ``metric_name``.
        """
        with self._lock:
            if self._study is not None:
                same = compat.optuna_study_id(study) == compat.optuna_study_id(self._study)
                if not same or study.study_name != self._study.study_name:
                    raise ConfigurationError(
                        "study",
                        f"the study this callback already logs ({self._study.study_name!r})",
                        study.study_name,
                        "Create one MlflowStudyCallback per study.",
                    )
                if not self._tracker.active and not self._tracker.closed:
                    self._open(study)  # the first open could not reach the store
                return
            names_ = _convert.objective_names(self._metric_name, study)
            if len(names_) != len(study.directions):
                raise ConfigurationError(
                    "metric_name",
                    f"{len(study.directions)} names, one per objective of the study",
                    self._metric_name,
                    "Pass one name per objective, or a single string.",
                )
            self._names = names_
            self._study = study
            self._open(study)
            if not self._in_context:
                atexit.register(self._close_at_exit)

    def _open(self, study: optuna.Study) -> None:
        known = _convert.known_parent(study)
        run_id = self._tracker.open(
            study.study_name,
            key=_convert.study_key(study),
            known_parent_id=known,
            directions=_convert.directions(study),
            objective_names=self._names,
        )
        if run_id is not None and run_id != known and _convert.study_key(study) is not None:
            with self._tracker.safety.guard("remembering the study run id"):
                _convert.remember_parent(study, run_id)
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        for t in completed:
            if t.values is not None:
                self._tracker.policy.seed(str(t.number), list(t.values))
        # Trials finished before this callback joined are written now; a stored study's
        # only once its run was found (the store says which it holds), an in-memory
        # study's always (the store holds none of them).
        in_memory = _convert.study_key(study) is None
        if self._tracker.stored_runs or (completed and (run_id is not None or in_memory)):
            prefix = names.TAG_USER_ATTR_PREFIX if self._user_attrs else None
            self._tracker.reconcile(_convert.finished(study, self._names, prefix))

    def _start(self, trial: Trial) -> TrialRun | None:
        self._bind(trial.study)
        if not self._tracker.active:
            return None
        return self._tracker.trial(
            str(trial.number), trial.number, _convert.ms(trial.datetime_start)
        )

    def _result(self, trial: FrozenTrial, **overrides: Any) -> Any:
        prefix = names.TAG_USER_ATTR_PREFIX if self._user_attrs else None
        return _convert.to_result(trial, self._names, user_attr_prefix=prefix, **overrides)

    def _fail(self, trial: Trial, handle: TrialRun, error: BaseException) -> None:
        interrupted = isinstance(error, KeyboardInterrupt)
        self._interrupted = self._interrupted or interrupted
        with self._tracker.safety.guard(f"logging failed trial {trial.number}"):
            result = self._result(
                compat.optuna_frozen_trial(trial),
                state=names.STATE_KILLED if interrupted else names.STATE_FAIL,
                error=error_text(error),
                error_class=type(error).__name__,
            )
            self._tracker.finish(handle, result)

    def _reconcile_open_handles(self, study: optuna.Study) -> None:
        """Finish trials whose callback never ran here (no ``callbacks=[tracker]``)."""
        open_handles = self._tracker.open_handles()
        if not open_handles:
            return
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        for handle in open_handles:
            frozen = by_number.get(handle.number)
            if frozen is not None and frozen.state.is_finished():
                self._tracker.finish(handle, self._result(frozen))

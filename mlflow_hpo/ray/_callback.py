"""``MlflowTuneCallback``: Ray Tune's own callback hook, writing one study run per experiment.

Every hook runs in the driver process, in its main thread; the trainables run in Ray worker
processes and never talk to MLflow. Tune calls ``on_trial_start``, ``on_trial_result`` per
report, then ``on_trial_complete`` (returned, or stopped by a scheduler or stopper) or
``on_trial_error``, and ``on_experiment_end`` last, also when ``fit()`` is interrupted or
raises. A trial that ends on its own reports ``done=False`` every time; Tune sets
``done=True`` on the result it decides to stop, which is how an early stop is told apart.

Restoring: ``Tuner()`` pickles the callback into ``tuner.pkl``, and ``Tuner.restore`` brings
that copy back, then calls :meth:`set_state` with what :meth:`get_state` returned at the
last experiment snapshot. So the callback pickles as plain data (its arguments and a nonce),
and carries the study run's id, the trial numbers and the finished trials in its state.
"""

from __future__ import annotations

import atexit
import datetime
import sys
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ray import tune
from ray.tune.result import DONE, TRAINING_ITERATION

from mlflow_hpo._backend import StudyHandle, exit_status, new_tracker, status_at_exit
from mlflow_hpo._core import batch, names, parent
from mlflow_hpo._core.safety import warn
from mlflow_hpo._core.secrets import strip_credentials
from mlflow_hpo._core.tracker import StudyTracker
from mlflow_hpo._core.trial import TrialResult, TrialRun
from mlflow_hpo.ray import _convert

if TYPE_CHECKING:
    from ray.tune.experiment import Trial
    from typing_extensions import Unpack

    from mlflow_hpo._core.options import TrackingOptions

_UNSTARTED = ("PENDING", "PAUSED")


class MlflowTuneCallback(tune.Callback, StudyHandle):
    """Log a Ray Tune experiment to MLflow: one study run, one nested run per trial.

    Pass it in ``RunConfig(callbacks=[...])``. Everything is written from the driver, so the
    tracking URI only has to be reachable from there.

    Args:
        metric: The metric Tune optimises (``TuneConfig(metric=...)``; Tune does not show it
            to callbacks, so it is given again here).
        mode: ``"max"`` or ``"min"``, as in ``TuneConfig(mode=...)``.
        max_t: The scheduler's budget (``ASHAScheduler(max_t=...)``) in ``time_attr`` units.
            Tune also stops a trial that reaches it, so a trial stopped at or past it is
            COMPLETE, and one stopped before it is PRUNED. Without it, every trial Tune
            stops is PRUNED, except one that met ``RunConfig(stop={...})``.
        time_attr: The result key ``max_t`` counts (the scheduler's ``time_attr``).
        param_space: The ``param_space`` given to the ``Tuner``, recorded as each trial's
            search space (optional; Tune does not show it to callbacks either).
        **options: The shared tracking options (:class:`mlflow_hpo.TrackingOptions`):
            ``experiment_name``, ``tracking_uri``, ``log_models``, ``synchronous``,
            ``strict``, ``verbose``, ``reports``, ``report_interval``, ``close_timeout``
            (``capture_fit`` does nothing here: Keras ``fit`` runs in the workers).

    Raises:
        ConfigurationError: An argument is invalid (raised here, before any run exists).

    Example:
        >>> from ray import tune
        >>> from ray.tune.schedulers import ASHAScheduler
        >>> from mlflow_hpo.ray import MlflowTuneCallback
        >>> callback = MlflowTuneCallback("val_accuracy", "max", max_t=8,
        ...                               experiment_name="digits-ray")
        >>> tuner = tune.Tuner(
        ...     trainable,
        ...     param_space={"lr": tune.loguniform(1e-3, 1e-1)},
        ...     tune_config=tune.TuneConfig(metric="val_accuracy", mode="max",
        ...                                 scheduler=ASHAScheduler(max_t=8), num_samples=20),
        ...     run_config=tune.RunConfig(name="digits", storage_path="/abs/ray_results",
        ...                               callbacks=[callback]),
        ... )
        >>> results = tuner.fit()
        >>> callback.study_run_id
    """

    def __init__(
        self,
        metric: str | None = None,
        mode: str | None = None,
        *,
        max_t: float | None = None,
        time_attr: str = "training_iteration",
        param_space: Mapping[str, Any] | None = None,
        **options: Unpack[TrackingOptions],
    ) -> None:
        self._metric, self._mode, self._max_t, self._time_attr = _convert.checked_arguments(
            metric, mode, max_t, time_attr, param_space
        )
        self._space = _convert.describe(param_space)
        self._options: dict[str, Any] = dict(options)
        self._nonce = uuid.uuid4().hex  # pickled with the callback: a restore keeps it
        self._study_tracker = self._new_tracker()  # checks the options now
        self._reset()

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        # Tuner() pickles the callback into tuner.pkl before anything runs: its arguments,
        # and never the credentials of a tracking URI (a restore reads them from MLflow's
        # MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN).
        options = dict(self._options)
        if options.get("tracking_uri"):
            options["tracking_uri"] = strip_credentials(options["tracking_uri"])
        return {
            "metric": self._metric,
            "mode": self._mode,
            "max_t": self._max_t,
            "time_attr": self._time_attr,
            "space": self._space,
            "options": options,
            "nonce": self._nonce,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._metric, self._mode = state["metric"], state["mode"]
        self._max_t, self._time_attr = state["max_t"], state["time_attr"]
        self._space, self._options = state["space"], state["options"]
        self._nonce = state["nonce"]
        self._study_tracker = self._new_tracker()
        self._reset()

    def _new_tracker(self) -> StudyTracker:
        # Keras fit() runs in the workers: nothing to capture in the driver.
        return new_tracker(names.BACKEND_RAY, self._options, capture_fit=False)

    def _reset(self) -> None:
        """Forget the previous experiment (one callback object, several ``fit()`` calls)."""
        self._parent_run_id: str | None = None
        self._numbers: dict[str, int] = {}  # trial id -> trial number (start order)
        self._starts: dict[str, int] = {}  # trial id -> first start (ms)
        self._steps: dict[str, int] = {}  # trial id -> last step logged live
        self._outcomes: dict[str, dict[str, Any]] = {}  # finished trials, for the summary
        self._open: dict[str, TrialRun] = {}  # started here, not finished yet
        self._last: dict[str, dict[str, Any]] = {}  # trial id -> its last result
        self._written: set[str] = set()  # finished by this session
        self._restored = False
        self._used = False
        self._stop: dict[str, Any] = {}
        self._time_budget: float | None = None
        self._started_at = time.monotonic()
        self._unbudgeted_stops = False  # Tune stopped a trial, and max_t is unknown

    # ------------------------------------------------------------ state (restore)
    def get_state(self) -> dict[str, Any] | None:
        return {
            "parent_run_id": self._study_tracker.study_run_id or self._parent_run_id,
            "numbers": dict(self._numbers),
            "starts": dict(self._starts),
            "steps": dict(self._steps),
            "outcomes": dict(self._outcomes),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        # Called by Tuner.restore before setup().
        self._parent_run_id = state.get("parent_run_id")
        self._numbers = dict(state.get("numbers", {}))
        self._starts = dict(state.get("starts", {}))
        self._steps = dict(state.get("steps", {}))
        self._outcomes = dict(state.get("outcomes", {}))
        self._restored = True

    # ------------------------------------------------------------------ Tune hooks
    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        if self._used and not self._restored:  # a second fit() with the same callback
            self._study_tracker = self._new_tracker()
            self._reset()
        self._used = True
        self._stop = dict(stop) if isinstance(stop, Mapping) else {}
        budget = info.get("time_budget_s")
        if isinstance(budget, datetime.timedelta):
            budget = budget.total_seconds()
        self._time_budget = float(budget) if budget else None
        self._started_at = time.monotonic()
        if total_num_samples:
            self._study_tracker.progress.total = int(total_num_samples)

    def on_trial_start(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        with self._study_tracker.safety.guard(f"starting trial {trial.trial_id}"):
            self._start(trial)

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        tracker = self._study_tracker
        with tracker.safety.guard(f"logging a result of trial {trial.trial_id}"):
            handle = self._open.get(trial.trial_id) or self._start(trial)
            if handle is None:
                return
            self._last[trial.trial_id] = dict(result)
            step = int(result.get(TRAINING_ITERATION) or 0)
            # After a restore, the steps since the trial's checkpoint are reported again.
            if step > self._steps.get(trial.trial_id, 0):
                tracker.log_live(handle, _convert.metrics_of(result), step)
                self._steps[trial.trial_id] = step

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        # A raise here would turn the trial into an ERROR: every failure stays a warning.
        with self._study_tracker.safety.guard(f"logging trial {trial.trial_id}"):
            self._complete(trial)

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        with self._study_tracker.safety.guard(f"logging failed trial {trial.trial_id}"):
            text = _convert.error_text(trial)
            self._finish(trial, names.STATE_FAIL, error=text, error_class=batch.error_class(text))

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        # Tune calls this from its `except Exception` block when fit() fails.
        error = sys.exc_info()[1]
        if error is not None:
            self._close(exit_status(type(error)), trials, cut=names.STATE_KILLED)
        elif self._open and self._out_of_time():
            self._close("FINISHED", trials, cut=names.STATE_PRUNED)
        elif self._open or any(t.status in _UNSTARTED for t in trials):
            self._close("KILLED", trials, cut=names.STATE_KILLED)  # interrupted: restorable
        else:
            self._close("FINISHED", trials, cut=names.STATE_KILLED)

    def close(self, status: str = "FINISHED") -> None:
        """Write the study's summary (with ``trials.csv``) and end its run (idempotent).

        ``fit()`` does this itself when it ends (``on_experiment_end``), also when it is
        interrupted or raises; trials still open here end KILLED."""
        self._close(status, [], cut=names.STATE_KILLED)

    # ------------------------------------------------------------------ internals
    def _open_study(self, trial: Trial) -> bool:
        """Open the study run on the first trial (the experiment's path is known then).

        Raises:
            ConfigurationError: The experiment is deleted.
        """
        tracker = self._study_tracker
        if tracker.active:
            return True
        if tracker.closed:
            return False
        path = _convert.experiment_path(trial)
        run_id = tracker.open(
            str(trial.experiment_dir_name),
            key=parent.study_key(names.BACKEND_RAY, f"{path}|{self._nonce}"),
            known_parent_id=self._parent_run_id,
            directions=[_convert.MODES[self._mode]],
            objective_names=[self._metric],
            tags={names.TAG_RAY_EXPERIMENT: path},
        )
        self._parent_run_id = run_id or self._parent_run_id
        atexit.register(self._close_at_exit)
        if tracker.stored_runs:  # a restored experiment: its runs say which number is whose
            self._numbers.update({k: s.number for k, s in tracker.stored_runs.items()})
        earlier = self._earlier()
        for key, _, result in earlier:  # a restored experiment: "best" goes on from there
            if result.values:
                tracker.policy.seed(key, list(result.values.values()))
        if earlier and tracker.stored_runs:
            tracker.reconcile(earlier)
        return tracker.active

    def _start(self, trial: Trial) -> TrialRun | None:
        tid = trial.trial_id
        if tid in self._open:
            return self._open[tid]  # started again after a failure (FailureConfig)
        if not self._open_study(trial):
            return None
        tracker = self._study_tracker
        if tid not in self._numbers:
            self._numbers[tid] = max(self._numbers.values(), default=-1) + 1
        number, start = self._numbers[tid], self._starts.setdefault(tid, batch.now_ms())
        if tracker.is_logged(tid):
            # Tune runs it again (a restored, interrupted trial): it goes on in its run.
            handle = tracker.resume_trial(tid, number, start)
        else:
            handle = tracker.trial(tid, number, start)
        self._open[tid] = handle
        self._outcomes.pop(tid, None)
        return handle

    def _complete(self, trial: Trial) -> None:
        last = self._last.get(trial.trial_id)
        if last is None:
            # No result since a restore (it had reported its last step before the
            # interrupt): it returned by itself, and Tune's record has its last result.
            last = self._last[trial.trial_id] = {**(trial.last_result or {}), DONE: False}
        budget = (self._time_attr, self._max_t)
        if not last.get(DONE) or _convert.ran_full(last, budget, self._stop):
            value = _convert.metrics_of(last).get(self._metric)
            self._finish(trial, names.STATE_COMPLETE, value=value)
        else:
            self._unbudgeted_stops = self._unbudgeted_stops or self._max_t is None
            self._finish(trial, names.STATE_PRUNED)

    def _finish(self, trial: Trial, state: str, value: float | None = None, **extra: Any) -> None:
        tid = trial.trial_id
        handle = self._open.pop(tid, None) or self._start(trial)
        self._open.pop(tid, None)
        if handle is None:
            return
        result = self._result(trial, state, **extra)
        if state == names.STATE_COMPLETE and value is not None:
            result.values = {self._metric: value}
        if state == names.STATE_PRUNED:
            step = int(self._last.get(tid, {}).get(TRAINING_ITERATION) or 0)
            result.pruned_step = step
            result.tags[names.TAG_RAY_STOPPED_AT] = step
        tracker = self._study_tracker
        if result.values and tracker.policy.enabled and trial.checkpoint is not None:
            with tracker.safety.guard(f"loading the model of trial {tid} from its checkpoint"):
                handle.model, handle.input_example = _convert.load_model(trial.checkpoint)
        self._last.pop(tid, None)
        tracker.finish(handle, result)
        self._written.add(tid)
        self._outcomes[tid] = _convert.outcome(result)

    def _result(self, trial: Trial, state: str, **extra: Any) -> TrialResult:
        params, constants = _convert.params_of(trial)
        return TrialResult(
            state=state,
            params=params,
            distributions=dict(self._space),
            extra_params=constants,
            tags={names.TAG_RAY_TRIAL_ID: trial.trial_id},
            start_ms=self._starts.get(trial.trial_id),
            end_ms=batch.now_ms(),
            **extra,
        )

    def _earlier(self) -> list[tuple[str, int, TrialResult]]:
        return _convert.earlier(self._outcomes, self._numbers, self._written, self._metric)

    def _out_of_time(self) -> bool:
        """Whether Tune ended the experiment at its ``time_budget_s``."""
        budget = self._time_budget
        return budget is not None and time.monotonic() - self._started_at >= budget

    def _close(self, status: str, trials: list[Trial], *, cut: str) -> None:
        tracker = self._study_tracker
        atexit.unregister(self._close_at_exit)
        with tracker.safety.guard("ending the study"):
            if not tracker.active and not tracker.closed and trials and self._parent_run_id:
                self._open_study(trials[0])  # restored with nothing left to run
            by_id = {t.trial_id: t for t in trials}
            for tid in list(self._open):
                trial = by_id.get(tid)
                if trial is not None:  # cut short: KILLED (restorable) or PRUNED (budget)
                    self._finish(trial, cut)
        if self._unbudgeted_stops and not any(
            o["state"] == names.STATE_COMPLETE for o in self._outcomes.values()
        ):
            warn(
                "mlflow-hpo: Tune stopped every trial it did not fail, so no trial has a "
                f"{self._metric!r} value to rank by. If a scheduler stops trials at its budget "
                "(ASHAScheduler(max_t=...)), pass the same max_t= to MlflowTuneCallback: "
                "trials stopped there are complete, not pruned."
            )
        tracker.close(status)  # the study model holds the earlier sessions' trials too
        self._open.clear()

    def _close_at_exit(self) -> None:
        """``fit()`` never got to ``on_experiment_end`` (a second Ctrl-C): cut short."""
        status = status_at_exit()
        self._close("KILLED" if status == "FINISHED" else status, [], cut=names.STATE_KILLED)

"""``MlflowTrials``: a ``hyperopt.Trials`` whose ``fmin`` records each evaluation in MLflow.

Hyperopt calls ``trials.fmin(...)`` from ``hyperopt.fmin`` when a ``Trials`` object has one,
as ``SparkTrials`` does. The override opens the study run, wraps the objective with
Hyperopt's documented ``pass_expr_memo_ctrl`` protocol (so each evaluation knows its own
trial document, ``ctrl.current_trial``), runs the plain serial search, and closes the study
run with the search's outcome.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hyperopt import Trials, pyll
from hyperopt.exceptions import AllTrialsFailed
from hyperopt.fmin import fmin_pass_expr_memo_ctrl

from mlflow_hpo._backend import StudyHandle, new_tracker
from mlflow_hpo._core import batch, keras, names, parent
from mlflow_hpo._core.safety import warn
from mlflow_hpo._core.secrets import has_credentials, strip_credentials
from mlflow_hpo._core.tracker import StudyTracker
from mlflow_hpo._core.trial import TrialResult, TrialRun, activate
from mlflow_hpo._core.validate import name_string
from mlflow_hpo.errors import ConfigurationError, MlflowHpoError
from mlflow_hpo.hyperopt import _convert

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from mlflow_hpo._core.options import WriteOptions

_CONFIG = "_mlflow_hpo_config"  # pickled with the trials: what rebuilds the tracker
_LIVE = "_mlflow_hpo_live"  # this process's tracker, lock and caches: never pickled
_URIS: dict[str, str] = {}  # nonce -> a tracking URI with credentials (kept out of pickles)
Finished = list[tuple[str, int, TrialResult]]


class _Live:
    """What an :class:`MlflowTrials` holds in this process only."""

    def __init__(self, tracker: StudyTracker) -> None:
        self.tracker = tracker
        self.lock = threading.Lock()
        self.running = False
        self.results: dict[int, TrialResult] = {}  # tid -> what was (or would be) written
        self.seeded: set[str] = set()  # trial keys the model policy has accounted for


class MlflowTrials(Trials, StudyHandle):
    """A ``hyperopt.Trials`` that logs the search to MLflow: one study run per object, one
    nested run per evaluation.

    Pass it as ``trials=`` to ``hyperopt.fmin``. It stays a ``Trials``: ``best_trial``,
    ``losses()``, ``argmin`` and ``space_eval`` work as usual. Inside the objective,
    ``mlflow.log_*``, a Keras ``fit`` (captured: epochs live, the model offered to the
    ``log_models`` policy), ``LayerGuard`` and :func:`mlflow_hpo.log_model` land on the
    evaluation's run. Each ``fmin`` call writes the study summary and ends the study run;
    calling ``fmin`` again (a higher ``max_evals``), also on a pickled and unpickled copy,
    continues the same study run and logs no trial twice.

    Args:
        experiment_name: MLflow experiment. ``None``: MLflow's active experiment, else one
            named after ``study_name``.
        metric_name: The name the loss is logged under (minimised).
        tracking_uri: MLflow store; ``None`` keeps MLflow's configured URI.
        log_models: ``"best"`` (default), ``"all"``, ``"none"`` or an int k (top k).
        study_name: The study run's name (default ``exp_key``, else ``"hyperopt"``).
        exp_key: Hyperopt's own ``Trials(exp_key=...)``.
        **options: The shared tracking options (:class:`mlflow_hpo.TrackingOptions`):
            ``synchronous``, ``strict``, ``verbose``, ``reports``, ``report_interval``,
            ``close_timeout``.

    Raises:
        ConfigurationError: An argument is invalid; raised here, before any run exists.

    Example:
        >>> from hyperopt import fmin, hp, tpe
        >>> from mlflow_hpo.hyperopt import MlflowTrials
        >>> space = {"units": hp.choice("units", [16, 32]), "lr": hp.loguniform("lr", -7, -2)}
        >>> trials = MlflowTrials(experiment_name="digits", log_models="best")
        >>> best = fmin(objective, space, algo=tpe.suggest, max_evals=50, trials=trials)
        >>> trials.study_run_id  # the study run, ended with its summary
    """

    def __init__(
        self,
        experiment_name: str | None = None,
        metric_name: str = "loss",
        tracking_uri: str | None = None,
        log_models: str | int = "best",
        *,
        study_name: str | None = None,
        exp_key: str | None = None,
        **options: Unpack[WriteOptions],
    ) -> None:
        if not isinstance(metric_name, str) or not metric_name.strip():
            raise ConfigurationError(
                "metric_name", "a non-empty string: the name the loss is logged under", metric_name
            )
        name_string("study_name", study_name)
        name_string("exp_key", exp_key)
        given: dict[str, Any] = {
            "experiment_name": experiment_name,
            "tracking_uri": tracking_uri,
            "log_models": log_models,
            **options,
        }
        tracker = new_tracker(names.BACKEND_HYPEROPT, given)
        super().__init__(exp_key=exp_key)
        nonce = uuid.uuid4().hex
        uri = tracker.options.tracking_uri
        if has_credentials(uri):
            assert uri is not None
            _URIS[nonce] = uri
            given["tracking_uri"] = strip_credentials(uri)
        self.__dict__[_CONFIG] = {
            "options": given,
            "metric_name": metric_name,
            "study_name": study_name or exp_key or "hyperopt",
            "nonce": nonce,  # the study's identity, for every copy of these trials
        }
        self._study_tracker = tracker

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        """The trials and the tracking settings; the tracker is rebuilt when needed."""
        state = self.__dict__.copy()
        state.pop(_LIVE, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # -------------------------------------------------------------- study handle
    @property
    def _study_tracker(self) -> StudyTracker:
        return self._live().tracker

    @_study_tracker.setter
    def _study_tracker(self, tracker: StudyTracker) -> None:
        self.__dict__[_LIVE] = _Live(tracker)

    def _config(self) -> dict[str, Any]:
        config = self.__dict__.get(_CONFIG)
        if config is None:  # Trials.view() makes objects without __init__
            raise MlflowHpoError("this Trials view has no tracker; use the MlflowTrials itself")
        return dict(config)

    def _live(self) -> _Live:
        live = self.__dict__.get(_LIVE)
        if live is None:  # unpickled: the same study, a new tracker in this process
            config = self._config()
            options = dict(config["options"])
            options["tracking_uri"] = _URIS.get(config["nonce"], options.get("tracking_uri"))
            live = _Live(new_tracker(names.BACKEND_HYPEROPT, options))
            live = self.__dict__.setdefault(_LIVE, live)
        return live

    @property
    def study_key(self) -> str:
        """The key of this study's journal and runs (``mlflow-hpo sync <key>``)."""
        return parent.study_key(names.BACKEND_HYPEROPT, f"trials|{self._config()['nonce']}")

    # ---------------------------------------------------------------------- fmin
    def fmin(
        self,
        fn: Callable[..., Any],
        space: Any,
        algo: Any = None,
        max_evals: int | None = None,
        timeout: Any = None,
        loss_threshold: float | None = None,
        max_queue_len: int = 1,
        rstate: Any = None,
        verbose: bool = False,
        pass_expr_memo_ctrl: bool | None = None,
        catch_eval_exceptions: bool = False,
        return_argmin: bool = True,
        show_progressbar: Any = True,
        early_stop_fn: Callable[..., Any] | None = None,
        trials_save_file: str = "",
    ) -> Any:
        """Run ``hyperopt.fmin`` on these trials, logging each evaluation (see the class).

        ``hyperopt.fmin(..., trials=self)`` calls this; the arguments are ``fmin``'s. The
        study run ends FINISHED when the search ends, KILLED on Ctrl-C and FAILED when
        another exception leaves ``fmin`` (it propagates unchanged).

        Raises:
            ConfigurationError: Another ``fmin`` is running on these trials.
        """
        settings: dict[str, Any] = {
            "algo": algo,
            "max_evals": max_evals,
            "timeout": timeout,
            "loss_threshold": loss_threshold,
            "max_queue_len": max_queue_len,
            "rstate": rstate,
            "verbose": verbose,
            "catch_eval_exceptions": catch_eval_exceptions,
            "return_argmin": return_argmin,
            "show_progressbar": show_progressbar,
            "early_stop_fn": early_stop_fn,
            "trials_save_file": trials_save_file,
        }
        if _CONFIG not in self.__dict__:
            warn("mlflow-hpo: fmin on a Trials view is not logged; pass the MlflowTrials.")
            return super().fmin(fn, space, pass_expr_memo_ctrl=pass_expr_memo_ctrl, **settings)
        live = self._live()
        with live.lock:
            if live.running:
                raise ConfigurationError(
                    "trials",
                    "an MlflowTrials no other fmin is using",
                    "one that a running fmin is using",
                    "Create one MlflowTrials per search that runs at the same time.",
                )
            live.running = True
        try:
            if isinstance(space, str) and space == "annotated":
                space, fn = _convert.annotated(fn)
            if pass_expr_memo_ctrl is None:
                pass_expr_memo_ctrl = getattr(fn, "fmin_pass_expr_memo_ctrl", False)
            return self._search(live, fn, space, bool(pass_expr_memo_ctrl), settings)
        finally:
            live.running = False

    def _search(
        self,
        live: _Live,
        fn: Callable[..., Any],
        space: Any,
        user_pemc: bool,
        settings: dict[str, Any],
    ) -> Any:
        tracker = live.tracker
        _convert.retire_zombies(self)
        dists: dict[str, Any] = {}
        with tracker.safety.guard("reading the search space"):
            dists = _convert.distributions(space)
        tracker.progress.total = _remaining(settings["max_evals"], len(self))
        self._open(live, space, dists)
        status = "FAILED"
        try:
            wrapped = self._wrap(live, fn, space, dists, user_pemc)
            best = super().fmin(wrapped, space, pass_expr_memo_ctrl=True, **settings)
            status = "FINISHED"
            return best
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except AllTrialsFailed:
            status = "FINISHED"  # the search ran to its end; fmin has no best point to return
            raise
        finally:
            self._close(live, space, dists, status)

    # ------------------------------------------------------------------ internals
    def _open(self, live: _Live, space: Any, dists: dict[str, Any]) -> None:
        config = self._config()
        tracker = live.tracker
        tracker.open(
            config["study_name"],
            key=self.study_key,
            directions=["minimize"],
            objective_names=[config["metric_name"]],
            exclusive=True,  # one fmin at a time per MlflowTrials (checked in fmin)
        )
        finished = self._finished(live, space, dists)
        for key, _, result in finished:
            values = [float(v) for v in result.values.values()]
            if key not in live.seeded and values and not any(math.isnan(v) for v in values):
                tracker.policy.seed(key, values)
            live.seeded.add(key)
        if finished:  # a resumed study: write what the store lacks (a store that was down)
            tracker.reconcile(finished)

    def _finished(self, live: _Live, space: Any, dists: dict[str, Any]) -> Finished:
        """Every finished evaluation of these trials, as the core's records."""
        metric = self._config()["metric_name"]
        out: Finished = []
        for tid, doc in _convert.terminal(self):
            result = live.results.get(tid)
            if result is None:
                with live.tracker.safety.guard(f"reading trial {tid}"):
                    result = live.results[tid] = _convert.to_result(doc, space, metric, dists)
            if result is not None:
                out.append((str(tid), tid, result))
        return out

    def _close(self, live: _Live, space: Any, dists: dict[str, Any], status: str) -> None:
        tracker = live.tracker

        def count_every_trial() -> None:
            for key, number, result in self._finished(live, space, dists):
                tracker.observe(key, number, result)

        tracker.close(status, before=count_every_trial)

    def _wrap(
        self,
        live: _Live,
        fn: Callable[..., Any],
        space: Any,
        dists: dict[str, Any],
        user_pemc: bool,
    ) -> Callable[..., Any]:
        tracker = live.tracker
        metric = self._config()["metric_name"]

        def call(expr: Any, memo: Any, ctrl: Any, note: Callable[[Any], None]) -> Any:
            if user_pemc:
                note(None)
                return fn(expr=expr, memo=memo, ctrl=ctrl)
            config = pyll.rec_eval(expr, memo=memo, print_node_on_error=False)
            note(config)  # before fn runs: it may change the dict it is given
            return fn(config)

        @fmin_pass_expr_memo_ctrl
        def evaluate(expr: Any, memo: Any, ctrl: Any) -> Any:
            doc = getattr(ctrl, "current_trial", None)
            if doc is None or not tracker.active:
                return call(expr, memo, ctrl, lambda config: None)
            tid, start_ms, spec = _convert.started(doc)
            handle = tracker.trial(str(tid), tid, start_ms)
            if handle.already_logged:
                return call(expr, memo, ctrl, lambda config: None)
            found: dict[str, Any] = {}

            def note(config: Any) -> None:
                with tracker.safety.guard(f"reading the params of trial {handle.number}"):
                    found["params"], found["extra"] = _convert.params(space, spec, config)
                    handle.params = dict(found["params"])

            keras.register(handle, tracker.log_live, tracker.policy.enabled)
            try:
                with activate(handle):
                    rval = call(expr, memo, ctrl, note)
                # Checked here, as Domain.evaluate will: a bad result is this trial's error.
                result = _convert.normalize(rval)
            except BaseException as error:
                killed = isinstance(error, KeyboardInterrupt)
                failed = TrialResult(
                    state=names.STATE_KILLED if killed else names.STATE_FAIL,
                    error=batch.error_text(error),
                    error_class=type(error).__name__,
                )
                self._end(live, handle, failed, found, dists)
                raise
            finally:
                keras.unregister(handle)
            state, values, histories, tags = _convert.from_result(result, metric)
            done = TrialResult(state=state, values=values, histories=histories, tags=tags)
            self._end(live, handle, done, found, dists)
            return rval

        return evaluate

    def _end(
        self,
        live: _Live,
        handle: TrialRun,
        result: TrialResult,
        found: dict[str, Any],
        dists: dict[str, Any],
    ) -> None:
        result.params = found.get("params", {})
        result.extra_params = found.get("extra", {})
        result.distributions = dists
        result.start_ms = handle.start_ms
        result.end_ms = batch.now_ms()
        live.results[handle.number] = result
        live.seeded.add(handle.key)
        with live.tracker.safety.guard(f"logging trial {handle.number}"):
            live.tracker.finish(handle, result)


def _remaining(max_evals: Any, done: int) -> int | None:
    """Evaluations this ``fmin`` call will run, for the progress line's ETA."""
    if isinstance(max_evals, bool) or not isinstance(max_evals, int):
        return None
    left = max_evals - done
    return left if 0 < left < 10**9 else None

"""The backend-neutral core: one parent run per study, one child run per trial.

Backends translate their library's events into four calls: :meth:`StudyTracker.open` when
the study is first seen, :meth:`StudyTracker.trial` when a trial starts,
:meth:`StudyTracker.finish` when it ends, and :meth:`StudyTracker.summarize` /
:meth:`StudyTracker.close` at the end. Everything that touches the store goes through an
explicit :class:`~mlflow.MlflowClient` with run ids and through the safety contract.
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.tracking import fluent

from mlflow_hpo import _batch, _models, _parent, _record, names
from mlflow_hpo import reports as _reports
from mlflow_hpo._progress import Progress, check_verbose
from mlflow_hpo._safety import Safety
from mlflow_hpo._summary import StudySummary, write_summary
from mlflow_hpo._trial import TrialResult, TrialRun
from mlflow_hpo._validate import validate_bool, validate_experiment_name, validate_tracking_uri
from mlflow_hpo._writer import RunWriter
from mlflow_hpo.errors import ConfigurationError, MlflowHpoWarning

BACKENDS = ("optuna", "keras_tuner", "sklearn")


class StudyTracker:
    """Owns the parent run of one study and the child runs of its trials.

    Args:
        backend: ``"optuna"``, ``"keras_tuner"`` or ``"sklearn"``.
        experiment_name: MLflow experiment; ``None`` uses MLflow's active experiment or the
            study name.
        tracking_uri: Store to write to; ``None`` uses MLflow's configured URI.
        log_models: ``"best"``, ``"all"``, ``"none"`` or an int k (see ``_models``).
        synchronous: ``False`` writes on a background thread; ``flush()`` waits.
        strict: Raise logging errors instead of warning (default: ``MLFLOW_HPO_STRICT``).
        verbose: ``0`` hides the progress line (shown only on a terminal anyway).
        reports: Write the study's charts (``reports/``) when it closes; ``None`` follows
            ``MLFLOW_HPO_REPORTS`` (default: on).

    Raises:
        ConfigurationError: An argument is invalid (nothing has been written yet).
    """

    def __init__(
        self,
        backend: str,
        *,
        experiment_name: str | None = None,
        tracking_uri: str | None = None,
        log_models: str | int = "best",
        synchronous: bool = True,
        strict: bool | None = None,
        verbose: int = 1,
        reports: bool | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ConfigurationError("backend", f"one of {BACKENDS}", backend)
        self.backend = backend
        self.experiment_name = validate_experiment_name(experiment_name)
        self.tracking_uri = validate_tracking_uri(tracking_uri)
        self.policy = _models.ModelPolicy(_models.validate_policy(log_models))
        self.safety = Safety(strict)
        self.writer = RunWriter(self.safety, validate_bool("synchronous", synchronous))
        self.progress = Progress(check_verbose(verbose))
        # Charts on the study run when it closes; MLFLOW_HPO_REPORTS only sets the default.
        self.reports = _reports.enabled() if reports is None else validate_bool("reports", reports)
        self.objective_names: list[str] = ["value"]
        self.parent: Run | None = None
        self.experiment_id: str | None = None
        self.closed = False
        self._client: MlflowClient | None = None
        self._lock = threading.RLock()
        self._known: dict[str, str] = {}  # trial key -> run id, in the store already
        self._handles: dict[str, TrialRun] = {}  # trial key -> handle made in this process
        self._open_failed = False
        # MLflow's active run is per thread: capture the caller's now, because the parent may
        # be opened later from an Optuna worker thread that has no active run of its own.
        self.enclosing_run_id = _parent.enclosing_run_id()

    # ----------------------------------------------------------------- parent run
    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    @property
    def parent_run_id(self) -> str | None:
        return self.parent.info.run_id if self.parent is not None else None

    @property
    def active(self) -> bool:
        return self.parent is not None and not self.closed

    def open(
        self,
        study_name: str,
        *,
        key: str | None = None,
        known_parent_id: str | None = None,
        directions: list[str] | None = None,
        objective_names: list[str] | None = None,
        tags: dict[str, Any] | None = None,
    ) -> str | None:
        """Find or create the parent run (idempotent, thread-safe); return its id."""
        with self._lock:
            if self.closed:  # a new session of the same study (e.g. search() called again)
                self.closed, self.parent = False, None
            if self.parent is not None or self._open_failed:
                return self.parent_run_id
            self.policy.directions = list(directions or ["minimize"])
            self.objective_names = list(objective_names or ["value"])
            with self.safety.guard("opening the study's parent run"):
                self._open(study_name, key, known_parent_id, tags or {})
            self.progress.start(
                study_name, self.objective_names[0], self.policy.directions[0] == "maximize"
            )
            self._open_failed = self.parent is None
            return self.parent_run_id

    def _open(
        self, study_name: str, key: str | None, known_parent_id: str | None, tags: dict[str, Any]
    ) -> None:
        if self.tracking_uri is not None and mlflow.get_tracking_uri() != self.tracking_uri:
            # Fluent calls in the objective and Model.log read the global URI.
            mlflow.set_tracking_uri(self.tracking_uri)
        enclosing = self.enclosing_run_id or _parent.enclosing_run_id()
        if enclosing is not None:
            # A nested run must live in its parent's experiment, or the UI cannot nest it.
            self.experiment_id = self.client.get_run(enclosing).info.experiment_id
            if self.experiment_name is not None:
                warnings.warn(
                    f"mlflow-hpo: experiment_name={self.experiment_name!r} is ignored: the study "
                    f"nests under the enclosing run {enclosing}, so it goes to that run's "
                    "experiment.",
                    MlflowHpoWarning,
                    stacklevel=4,
                )
        else:
            self.experiment_id = _parent.resolve_experiment(
                self.client, self.experiment_name, study_name
            )
        parent_tags = {
            names.TAG_ROLE: names.ROLE_STUDY,
            names.TAG_BACKEND: self.backend,
            names.TAG_STUDY_NAME: study_name,
            names.TAG_DIRECTIONS: ",".join(self.policy.directions),
            names.TAG_OBJECTIVES: ",".join(self.objective_names),
            **tags,
        }
        if key is not None:
            parent_tags[names.TAG_STUDY_KEY] = key
        run, reused = _parent.open_parent(
            self.client,
            self.experiment_id,
            enclosing_run_id=enclosing,
            study_name=study_name,
            key=key,
            known_parent_id=known_parent_id,
            tags=parent_tags,
        )
        # A reused parent may live in another experiment (e.g. a different experiment_name
        # this session): its children must go where it is.
        self.experiment_id = run.info.experiment_id
        if fluent._active_experiment_id is None and not os.environ.get("MLFLOW_EXPERIMENT_ID"):
            # mlflow.start_run(nested=True) in an objective then lands beside its trial run.
            mlflow.set_experiment(experiment_id=self.experiment_id)
        self.parent = run
        if reused:
            self._known.update(self._stored_run_ids())

    # ------------------------------------------------------------------ trial runs
    def trial(self, key: str, number: int, start_ms: int | None = None) -> TrialRun:
        """The handle of trial ``key``; the same handle if it was asked for before."""
        with self._lock:
            handle = self._handles.get(key)
            if handle is None:
                handle = TrialRun(key, number, self._create_trial_run, start_ms or _batch.now_ms())
                self._handles[key] = handle
            return handle

    def known_run_ids(self) -> dict[str, str]:
        """Trial key -> run id for every trial run this tracker has seen or created."""
        with self._lock:
            return dict(self._known)

    def all_run_ids(self) -> dict[str, str]:
        """Trial key -> run id for every trial run of the study in the store (one search),
        including those other processes wrote (e.g. distributed workers)."""
        return {**self._stored_run_ids(), **self.known_run_ids()}

    def _stored_run_ids(self) -> dict[str, str]:
        """Trial key -> run id of the parent's children as the store has them."""
        if self.parent is None or self.experiment_id is None:
            return {}
        children = _parent.child_runs(self.client, self.experiment_id, self.parent.info.run_id)
        return {
            child.data.tags[names.TAG_TRIAL_KEY]: child.info.run_id
            for child in children
            if names.TAG_TRIAL_KEY in child.data.tags
        }

    def is_logged(self, key: str) -> bool:
        """Whether trial ``key`` already has a run (from this or an earlier process)."""
        with self._lock:
            handle = self._handles.get(key)
            return key in self._known or (handle is not None and handle.finished)

    def _create_trial_run(self, handle: TrialRun, extra_tags: dict[str, Any] | None) -> Run:
        if self.parent is None or self.experiment_id is None:
            raise RuntimeError("the study's parent run could not be opened")
        with self._lock:
            existing = self._known.get(handle.key)
        if existing is not None:
            run = self.client.get_run(existing)
            handle.already_logged = run.info.status != "RUNNING"
            return run
        tags = {
            names.TAG_ROLE: names.ROLE_TRIAL,
            names.TAG_BACKEND: self.backend,
            names.TAG_PARENT_RUN_ID: self.parent.info.run_id,
            names.TAG_TRIAL_KEY: handle.key,
            **(extra_tags or {}),
        }
        key = self.parent.data.tags.get(names.TAG_STUDY_KEY)
        if key:
            tags[names.TAG_STUDY_KEY] = key
        run = self.client.create_run(
            self.experiment_id,
            start_time=handle.start_ms,
            tags=_batch.tag_dict(tags),
            run_name=names.TRIAL_RUN_NAME.format(number=handle.number),
        )
        handle.tags_written = extra_tags is not None
        with self._lock:
            self._known[handle.key] = run.info.run_id
        return run

    def log_live(self, handle: TrialRun, values: dict[str, Any], step: int) -> None:
        """Log metrics of a running trial now (e.g. a Keras epoch), keyed by ``step``.

        A live metric named like an objective is renamed ``epoch_<name>``: the objective
        column must hold the objective value only (a pruned trial has none), never the last
        epoch's value.
        """
        if not self.active or handle.already_logged:
            return
        renamed = {
            (f"{names.METRIC_EPOCH_PREFIX}{k}" if k in self.objective_names else k): v
            for k, v in values.items()
        }
        points = _batch.metrics(renamed, step)
        self.writer.submit(
            "logging live metrics",
            lambda: self.client.log_batch(handle.run_id, metrics=points),
        )

    def finish(self, handle: TrialRun, result: TrialResult) -> None:
        """Write a finished trial (once) and end its run with the mapped status."""
        with self._lock:
            if handle.finished or not self.active:
                return
            handle.finished = True
        if result.state == names.STATE_COMPLETE and result.values:
            name, value = next(iter(result.values.items()))
            self.progress.trial_done(float(value), name)
        else:
            self.progress.trial_done(None)
        keep_model = False
        with self.safety.guard("choosing whether to log the model"):
            if result.state == names.STATE_COMPLETE and result.values:
                values = [float(result.values[n]) for n in result.values]
                has_model = handle.model is not None or handle.model_loader is not None
                keep_model = self.policy.decide(handle.key, values) and has_model
                if keep_model and handle.model_loader is not None:
                    # Load here, in the tuning thread: Keras Tuner's load_model calls
                    # keras.backend.clear_session(), whose reset of Keras's name counters
                    # would break a model the tuner builds meanwhile if run on the writer.
                    handle.model = handle.model_loader()
        self.writer.submit(
            f"logging trial {handle.number}",
            lambda: self._write_trial(handle, result, keep_model),
        )

    def _write_trial(self, handle: TrialRun, result: TrialResult, keep_model: bool) -> None:
        try:
            _record.write_trial(self, handle, result, keep_model)
        finally:
            # Weights can be large: never keep them once written, nor finished handles.
            handle.model = None
            handle.model_loader = None
            with self._lock:
                if self._handles.get(handle.key) is handle:
                    del self._handles[handle.key]

    # ------------------------------------------------------------- study summary
    def run_id_for(self, key: str) -> str | None:
        """Run id of trial ``key``: known locally, else looked up by tag (other workers)."""
        with self._lock:
            known = self._known.get(key)
        if known or self.parent is None or self.experiment_id is None:
            return known
        return _parent.find_trial_run(self.client, self.experiment_id, self.parent.info.run_id, key)

    def summarize(self, summary: StudySummary) -> None:
        """Write the study summary to the parent run (queued behind pending trials)."""
        if not self.active:
            return
        self.writer.submit(
            "writing the study summary",
            lambda: write_summary(self, summary),
        )

    # ------------------------------------------------------------------- closing
    def open_handles(self) -> list[TrialRun]:
        """Trials this process started and has not finished yet."""
        with self._lock:
            return [h for h in self._handles.values() if not h.finished]

    def interrupt_open_trials(self, state: str = names.STATE_KILLED) -> None:
        """End every trial this process started but never finished (an interrupted run)."""
        for handle in self.open_handles():
            self.finish(handle, TrialResult(state=state))

    def flush(self) -> None:
        """Wait until everything queued has been written."""
        self.writer.flush()

    def close(self, status: str = "FINISHED", end_parent: bool = True) -> None:
        """End open trials as KILLED, flush, and end the parent run with ``status``.

        ``end_parent=False`` (a distributed worker) leaves the parent to the process that
        owns it; this process's warning count still goes on as its own tag.
        """
        with self._lock:
            if self.closed or self.parent is None:
                self.closed = True
                return
        self.interrupt_open_trials()
        self.progress.close()
        with self.safety.guard("flushing queued writes"):
            self.writer.flush()
        with self._lock:
            self.closed = True
        if end_parent and self.reports:
            with self.safety.guard("writing the study reports"):
                _reports.write_for_run(self.client, self.parent)
        with self.safety.guard("ending the study's parent run"):
            parent_id = self.parent.info.run_id
            if end_parent:
                self.client.set_tag(
                    parent_id, names.TAG_LOGGING_WARNINGS, str(self.safety.warning_count)
                )
                self.client.set_terminated(parent_id, status)
            elif self.safety.warning_count:
                self.client.set_tag(
                    parent_id,
                    f"{names.TAG_LOGGING_WARNINGS}.{os.getpid()}",
                    str(self.safety.warning_count),
                )
        self.writer.close()

"""A study session: its journal, its writer and its study run, from open to close.

:class:`StudySession` is the part of the tracker that knows the study as a whole: it opens the
study run (waiting for the store, bounded), writes the summary, and closes: the study run's
status first, then the followers (reports), then a bounded wait for the journal, after which
whatever is still waiting is reported once, with the command that writes it.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run

from mlflow_hpo._core import batch, compat, journal, keras, names, parent, reconcile
from mlflow_hpo._core.models import ModelPolicy
from mlflow_hpo._core.options import Options, TrackingOptions
from mlflow_hpo._core.progress import Progress
from mlflow_hpo._core.safety import Safety, warn
from mlflow_hpo._core.secrets import has_credentials, strip_credentials
from mlflow_hpo._core.store import STUDY, Store, connect, quiet_urls
from mlflow_hpo._core.study import StudyModel
from mlflow_hpo._core.summary import summary_op
from mlflow_hpo._core.writer import WAIT_CAP, Writer
from mlflow_hpo.errors import ConfigurationError


class StudyHook(Protocol):
    """Something that follows a study: the reports refresher is one."""

    def on_trial(self, session: StudySession) -> None: ...

    def on_close(self, session: StudySession, timeout: float) -> None: ...

    def wait(self, timeout: float | None = None) -> None: ...


class StudySession:
    """The study-wide half of :class:`~mlflow_hpo._core.tracker.StudyTracker`.

    Args:
        backend: One of ``names.BACKENDS``.
        options: The shared tracking options (:class:`TrackingOptions`).
        nested: ``False`` writes trial runs without a study run (the ``MLflowCallback``
            drop-in's layout).
        capture_fit: Capture Keras ``fit`` inside trials (epochs, data, model).
        hooks: Followers of the study (reports).

    Raises:
        ConfigurationError: An option is invalid (nothing has been written yet).
    """

    def __init__(
        self,
        backend: str,
        options: Options | TrackingOptions | None = None,
        *,
        nested: bool = True,
        capture_fit: bool = True,
        hooks: list[StudyHook] | None = None,
    ) -> None:
        if backend not in names.BACKENDS:
            raise ConfigurationError("backend", f"one of {names.BACKENDS}", backend)
        self.options = options if isinstance(options, Options) else Options.of(options or {})
        self.backend = backend
        self.nested = nested
        self.capture_fit = capture_fit
        self.hooks = list(hooks or [])
        self.safety = Safety(self.options.strict)
        self.policy = ModelPolicy(self.options.log_models)
        self.progress = Progress(self.options.verbose)
        self.objective_names: list[str] = ["value"]
        self.directions: list[str] = ["minimize"]
        self.study = StudyModel(self.directions, self.objective_names)
        self.study_name = ""
        self.study_key: str | None = None
        self.parent: Run | None = None
        self.experiment_id: str | None = None
        self.opened = False
        self.closed = False
        self._closing = False
        self.journal: journal.Journal | None = None
        self.writer: Writer | None = None
        self.store: Store | None = None
        self._client: MlflowClient | None = None
        self._lock = threading.RLock()
        self._ephemeral = False
        self._quiet = False
        self._logged: set[str] = set()  # trial keys with a finished run in the store
        self.stored_runs: dict[str, reconcile.StoredRun] = {}  # a resumed study's runs
        self._chose_experiment = False  # mlflow.set_experiment was ours (undone at close)
        self._study_created: journal.Op | None = None  # the study run, made by the writer
        # MLflow's active run is per thread: capture the caller's now, because the study may
        # be opened later from a worker thread that has no active run of its own.
        self.enclosing_run_id = parent.enclosing_run_id()

    # ----------------------------------------------------------------- properties
    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            uri = self.options.tracking_uri or mlflow.get_tracking_uri()
            self._client = connect(self.options.tracking_uri, uri)
        return self._client

    @property
    def study_run_id(self) -> str | None:
        if self.store is not None and self.store.ready(STUDY):
            return self.store.run_id(STUDY)
        return None

    @property
    def active(self) -> bool:
        return self.opened and not self.closed

    @property
    def owner(self) -> str:
        return self.writer.owner.id if self.writer is not None else ""

    # ------------------------------------------------------------------- opening
    def open(
        self,
        study_name: str,
        *,
        key: str | None = None,
        known_parent_id: str | None = None,
        directions: list[str] | None = None,
        objective_names: list[str] | None = None,
        tags: dict[str, Any] | None = None,
        experiment_id: str | None = None,
        exclusive: bool = False,
    ) -> str | None:
        """Start a session of the study: its journal, writer and study run (idempotent).

        ``exclusive``: no other process can open this study key at the same time (a key made
        up for one object), so its study run needs no race with rivals.

        Waits for the store (bounded); a store that is down leaves the study run to the
        writer, and trials are journalled meanwhile.

        Raises:
            ConfigurationError: The experiment is deleted, or the objectives do not fit.
        """
        with self._lock:
            if self.active:
                return self.study_run_id
            objectives = [batch.key(n) for n in (objective_names or ["value"])]
            if len(set(objectives)) != len(objectives):
                raise ConfigurationError(
                    "metric_name",
                    "distinct objective names (after MLflow's key rules)",
                    objective_names,
                )
            self.closed = False
            self.directions = list(directions or ["minimize"])
            self.objective_names = objectives
            self.policy.directions = self.directions
            self.study = StudyModel(self.directions, self.objective_names)
            self.study_name = study_name
            self._ephemeral = key is None
            self.study_key = key or parent.study_key(self.backend, uuid.uuid4().hex)
            self._start_writer()
            assert self.writer is not None
            open_op = self._open_op(study_name, known_parent_id, tags or {}, experiment_id)
            open_op.payload["settle"] = not exclusive
            # A study only this process knows has no run to find or race for: only its
            # experiment is waited for (a deleted one raises now), and the writer makes its
            # run while the first trial runs.
            deferred = self._ephemeral and self.nested
            self._study_created = None
            if deferred:
                self._study_created = journal.Op(STUDY, "open_study", dict(open_op.payload))
                open_op.payload["experiment_only"] = True
            self.writer.submit([open_op], wait=False)
            self.writer.wait([open_op], WAIT_CAP)
            if isinstance(open_op.result, ConfigurationError):
                self.writer.close(0)
                raise open_op.result
            self.opened = True
            if isinstance(open_op.result, dict):
                self._opened(open_op.result)
            if self._study_created is not None:
                if self.experiment_id is not None:
                    self._study_created.payload["experiment_id"] = self.experiment_id
                self.writer.submit([self._study_created], wait=False)
            if self.capture_fit:
                keras.want()
            self.progress.start(study_name, self.objective_names[0], self._maximize)
            return None if deferred else self.study_run_id

    def wait_study_run(self) -> str | None:
        """The study run's id, once the writer has made it (bounded: ``None`` while the
        store is down)."""
        created, writer = self._study_created, self.writer
        if self.study_run_id is None and created and writer and not writer.behind:
            writer.wait([created], WAIT_CAP)
        return self.study_run_id

    @property
    def _maximize(self) -> bool:
        return self.directions[0] == "maximize"

    def _start_writer(self) -> None:
        assert self.study_key is not None
        self.journal = journal.Journal(journal.journal_path(self.study_key))
        uri = self.options.tracking_uri or mlflow.get_tracking_uri()
        self.journal.set_meta(
            {
                "tracking_uri": strip_credentials(uri),
                "uri_has_credentials": "1" if has_credentials(uri) else None,
                "backend": self.backend,
                "study_name": self.study_name,
                "study_key": self.study_key,
            }
        )
        if self._client is None:
            self._client = connect(self.options.tracking_uri, uri)
        self.store = Store(self.client, self.journal)
        http = uri.startswith(("http://", "https://"))
        self._quiet = http
        if http:
            quiet_urls(True)
        self.writer = Writer(
            self.journal,
            self.store.execute,
            self.store.ready,
            self.safety,
            synchronous=self.options.synchronous,
            workers=4 if http and not self.options.synchronous else 1,
        )
        if self.writer.adopt():  # a resumed study, or a dead worker's leftovers
            self.writer.flush(WAIT_CAP)

    def _open_op(
        self,
        study_name: str,
        known_parent_id: str | None,
        tags: dict[str, Any],
        experiment_id: str | None,
    ) -> journal.Op:
        if self.options.tracking_uri and mlflow.get_tracking_uri() != self.options.tracking_uri:
            # Fluent calls in the objective and Model.log read the global URI.
            mlflow.set_tracking_uri(self.options.tracking_uri)
        enclosing = self.enclosing_run_id or parent.enclosing_run_id()
        if enclosing is not None and self.options.experiment_name is not None and self.nested:
            warn(
                f"mlflow-hpo: experiment_name={self.options.experiment_name!r} is ignored: the "
                f"study nests under the enclosing run {enclosing}, so it goes to that run's "
                "experiment."
            )
        payload: dict[str, Any] = {
            "study_name": study_name,
            "key": self.study_key,
            "known_parent_id": known_parent_id,
            "nested": self.nested,
            "shared": not self._ephemeral,
            "fallback_name": study_name,
            "tags": batch.tag_dict(
                {
                    names.TAG_ROLE: names.ROLE_STUDY,
                    names.TAG_BACKEND: self.backend,
                    names.TAG_STUDY_NAME: study_name,
                    names.TAG_STUDY_KEY: self.study_key,
                    names.TAG_DIRECTIONS: ",".join(self.directions),
                    names.TAG_OBJECTIVES: ",".join(self.objective_names),
                    **tags,
                }
            ),
        }
        nesting = enclosing if self.nested else None
        payload.update(
            parent.experiment_choice(
                experiment_id, nesting, self.options.experiment_name, study_name
            )
        )
        return journal.Op(STUDY, "open_study", payload)

    def _opened(self, result: dict[str, Any]) -> None:
        """The study run is in the store: point MLflow at it, and pick up a resumed study."""
        self.experiment_id = result["experiment_id"]
        self.parent = result.get("run")
        if compat.active_experiment_id() is None and not os.environ.get("MLFLOW_EXPERIMENT_ID"):
            # mlflow.start_run(nested=True) in an objective then lands beside its trial run
            # (until the study closes: the process's choice is undone then).
            mlflow.set_experiment(experiment_id=self.experiment_id)
            self._chose_experiment = True
        if result.get("reused") and self.parent is not None and self.store is not None:
            with self.safety.guard("reading the study's existing trial runs"):
                self.stored_runs = reconcile.on_resume(self.client, self.store, self.parent)
                self._logged |= {k for k, v in self.stored_runs.items() if v.status != "RUNNING"}
                for key, stored in self.stored_runs.items():  # the summary counts them too
                    if stored.status != "RUNNING":
                        self.study.add(reconcile.record_of(key, stored, self.objective_names))

    # ------------------------------------------------------------------ summary
    def new_best(self, improved: bool) -> list[journal.Op]:
        """The summary entry that shows a new best on the study run while the study runs,
        written with the trial that found it (a synchronous trial waits for both)."""
        if not (improved and self.nested and self.opened):
            return []
        with self.safety.guard("preparing the study summary"):
            return [summary_op(self.study, False, {}, {})]
        return []  # the guard reported the failure

    # ------------------------------------------------------------------ closing
    def close(
        self,
        status: str = "FINISHED",
        *,
        end_parent: bool = True,
        tags: dict[str, Any] | None = None,
        tables: dict[str, str] | None = None,
        before: Callable[[], None] | None = None,
    ) -> None:
        """End the session: open trials KILLED, the summary, the study run's ``status``
        (first), the reports (after), then a bounded wait for the journal.

        ``end_parent=False`` (a distributed worker) leaves the study run to its owner.
        ``before`` runs first (a backend counting trials it did not run).
        """
        with self._lock:
            if self.closed or self._closing or not self.opened:
                self.closed = True
                return
            self._closing = True  # a second close (atexit, a second Ctrl-C) does nothing
        writer = self.writer
        assert writer is not None
        drained, timeout = False, self.options.close_timeout
        try:
            if before is not None:
                with self.safety.guard("reading the study's final state"):
                    before()
            self._end_open_trials()
            self.closed = True
            self.progress.close()
            ops = []
            if self.nested:
                worker = writer.owner.worker
                count = self.safety.warning_count
                summary_tags = dict(tags or {})
                if self._ephemeral:  # the only worker: its count is the total (one write)
                    summary_tags[f"{names.TAG_WORKER_WARNINGS_PREFIX}{worker}"] = count
                    summary_tags[names.TAG_LOGGING_WARNINGS] = count
                ops.append(summary_op(self.study, True, summary_tags, tables or {}))
                if not self._ephemeral:
                    payload = {"needs": STUDY, "worker": worker, "count": count}
                    ops.append(journal.Op(STUDY, "worker_warnings", payload))
                if end_parent:
                    ops.append(journal.Op(STUDY, "terminate", {"needs": STUDY, "status": status}))
            writer.submit(ops, wait=False)
            drained = writer.flush(timeout)
            if not drained:
                self._report_pending()
        finally:
            self.closed = True
            self.opened = self._closing = False
            if self.capture_fit:
                keras.release()
            if self._quiet:
                quiet_urls(False)
            if self._chose_experiment and self.experiment_id is not None:
                self._chose_experiment = False
                compat.clear_active_experiment(self.experiment_id)
            self._finish_writer(writer)
        # The reports are drawn in the background once the study run has its final status,
        # after the writer has stopped, so that drawing never competes with the close.
        for hook in self.hooks if drained and end_parent else []:
            with self.safety.guard("writing the study reports"):
                hook.on_close(self, timeout)

    def _end_open_trials(self) -> None:
        """Overridden by the tracker: trials this session started end KILLED."""

    def _finish_writer(self, writer: Writer) -> None:
        drained = writer.close(0.0)
        if drained and self._ephemeral and self.journal is not None:
            counts = self.journal.counts()
            if not counts["pending"] and not counts["dead"]:
                self.journal.discard()

    def _report_pending(self) -> None:
        if self.journal is None:
            return
        counts = self.journal.counts()
        warn(
            f"mlflow-hpo: the tracking store did not take everything within "
            f"close_timeout={self.options.close_timeout:g}s: {counts['trials']} trial run(s) "
            f"({counts['pending']} writes) wait in the journal {self.journal.path}. They are "
            f"written when the study is resumed, or now with: mlflow-hpo sync {self.study_key}"
        )

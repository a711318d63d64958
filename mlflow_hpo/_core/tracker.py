"""The backend-neutral core: one study run per study, one child run per trial.

Backends translate their library's events into a few calls: :meth:`StudyTracker.open` when
the study is first seen, :meth:`StudyTracker.trial` when a trial starts,
:meth:`StudyTracker.finish` when it ends, and :meth:`StudyTracker.close` at the end.
Everything written goes through the study's journal, and from there to the store with an
explicit ``MlflowClient`` and run ids (see ``session``, ``writer`` and ``store``).
"""

from __future__ import annotations

import functools
import math
from typing import Any

from mlflow.entities import Run

from mlflow_hpo._core import batch, datasets, journal, names, reconcile, record
from mlflow_hpo._core.datasets import DatasetCache
from mlflow_hpo._core.models import model_ops
from mlflow_hpo._core.safety import warn
from mlflow_hpo._core.session import StudySession
from mlflow_hpo._core.store import STUDY
from mlflow_hpo._core.study import TrialRecord
from mlflow_hpo._core.trial import TrialResult, TrialRun
from mlflow_hpo._core.writer import WAIT_CAP
from mlflow_hpo.errors import MlflowHpoError


class StudyTracker(StudySession):
    """Owns the study run of one study and the child runs of its trials.

    See :class:`~mlflow_hpo._core.session.StudySession` for the arguments.
    """

    def __init__(self, backend: str, options: Any = None, **kwargs: Any) -> None:
        super().__init__(backend, options, **kwargs)
        self._handles: dict[str, TrialRun] = {}  # trial key -> handle of this session
        self._missing_objective_warned = False
        self.plain = False  # the drop-in's layout: no mlflow-hpo params, metrics, tags
        self._models: set[str] = set()  # trial keys whose model this session logged
        self.datasets = DatasetCache()
        self._evaluated_on: dict[str, str] | None = None  # the latest validation dataset

    # ------------------------------------------------------------------ trials
    def trial(self, key: str, number: int, start_ms: int | None = None) -> TrialRun:
        """The handle of trial ``key``; the same handle if it was asked for before.

        Its run is made when first needed (a live value, user code asking for it) or at its
        end, with every tag known then: on a database store, tags written later would cost
        a further transaction.
        """
        with self._lock:
            handle = self._handles.get(key)
            if handle is None:
                handle = TrialRun(key, number, start_ms or batch.now_ms(), self._ensure_run)
                if key in self._logged:  # written already: whatever comes now is a repeat
                    handle.finished = handle.already_logged = True
                    return handle
                handle.upload_folder = functools.partial(self.upload_folder, handle)
                self._handles[key] = handle
                if self.journal is not None and not self._ephemeral:
                    with self.safety.guard("noting the trial in the journal"):
                        self.journal.note_trial(key, self.owner)
            return handle

    def is_logged(self, key: str) -> bool:
        """Whether trial ``key`` already has a finished run (this or an earlier process)."""
        with self._lock:
            handle = self._handles.get(key)
            return key in self._logged or (handle is not None and handle.finished)

    def base_tags(self, handle: TrialRun) -> dict[str, Any]:
        return {
            names.TAG_ROLE: names.ROLE_TRIAL,
            names.TAG_BACKEND: self.backend,
            names.TAG_STUDY_KEY: self.study_key,
            names.TAG_TRIAL_KEY: handle.key,
            names.TAG_OWNER: self.owner,
        }

    def run_name(self, handle: TrialRun) -> str:
        return names.TRIAL_RUN_NAME.format(number=handle.number)

    def _create(self, handle: TrialRun) -> list[journal.Op]:
        """The create entry of ``handle``'s run if it has none yet (under the handle lock)."""
        if handle.created:
            return []
        handle.created = True
        tags = self.base_tags(handle)
        op = record.create_op(handle, tags, nested=self.nested, run_name=self.run_name(handle))
        handle.create_op = op
        ops = [op]
        if handle.datasets and not self.plain:  # known already: written while it runs
            with self.safety.guard(f"describing the data of trial {handle.number}"):
                ops += self._dataset_ops(handle)
                handle.inputs_logged = True
        return ops

    def describe_data(self, noted: list[tuple[Any, Any, str]]) -> None:
        """Describe the arrays every trial fits on now (MLflow's digest and the source's
        context: a git lookup the first time): a backend calls this before its search, so
        that neither the first trial nor each of Keras Tuner's collections pays for it."""
        datasets.inputs(self.datasets, noted)

    def _ensure_run(self, handle: TrialRun) -> Run:
        """The run of ``handle``, created now if needed (user code asked for it)."""
        if not self.active or self.writer is None or self.store is None:
            raise MlflowHpoError("the study is not open, so the trial has no run")
        with handle.lock:
            ops = self._create(handle)
        if ops:
            self.writer.submit(ops, wait=False)
        create = handle.create_op
        if create is not None:
            self.writer.wait([create], WAIT_CAP)
            if isinstance(create.result, Run):
                return create.result
        if self.store.ready(handle.ref):
            return self.client.get_run(self.store.run_id(handle.ref))
        raise MlflowHpoError(
            f"the run of trial {handle.number} is not in the store yet (the store is slow or "
            "down); what the trial logs through mlflow-hpo is journalled meanwhile"
        )

    def log_live(self, handle: TrialRun, values: dict[str, Any], step: int) -> None:
        """Log metrics of a running trial now (e.g. a Keras epoch), keyed by ``step``.

        A live metric named like an objective is renamed ``epoch_<name>``: the objective
        column must hold the objective value only (a pruned trial has none), never the last
        epoch's value.
        """
        if not self.active or handle.already_logged or handle.finished or self.writer is None:
            return
        renamed = {
            (f"{names.METRIC_EPOCH_PREFIX}{k}" if batch.key(k) in self.objective_names else k): v
            for k, v in values.items()
        }
        for name in renamed:  # a final value of the same name joins this history's end
            key = batch.key(name)
            handle.live_steps[key] = max(step, handle.live_steps.get(key, 0))
        with handle.lock:
            ops = [*self._create(handle), record.live_op(handle, renamed, step)]
        self.writer.submit(ops, wait=False)

    def resume_trial(self, key: str, number: int, start_ms: int | None = None) -> TrialRun:
        """The handle of trial ``key`` that already has a run (ended by an interrupt, say)
        and runs again under the same key: its run is set back to RUNNING and continues."""
        with self._lock:
            self._logged.discard(key)
            self._handles.pop(key, None)
        handle = self.trial(key, number, start_ms)
        if self.store is not None and self.writer is not None and self.store.ready(handle.ref):
            handle.created = True
            self.writer.submit([journal.Op(handle.ref, "reopen", {})], wait=False)
        return handle

    def log_params(self, handle: TrialRun, params: dict[str, Any]) -> None:
        """Log a running trial's params now (a scikit-learn candidate's first fold)."""
        if not self.active or handle.finished or self.writer is None:
            return
        points = [[p.key, p.value] for p in batch.params(params)]
        with handle.lock:
            ops = [*self._create(handle), journal.Op(handle.ref, "log_batch", {"params": points})]
        self.writer.submit(ops, wait=False)

    def upload_folder(self, handle: TrialRun, folder: str, path: str | None = None) -> None:
        """Journal the upload of a local ``folder`` (removed once uploaded) to the trial."""
        if not self.active or self.writer is None:
            return
        with handle.lock:
            ops = self._create(handle)
        ops.append(journal.Op(handle.ref, "upload_folder", {"folder": folder, "path": path}))
        self.writer.submit(ops)

    def finish(self, handle: TrialRun, result: TrialResult, *, rewrite: bool = False) -> None:
        """Write a finished trial (once) and end its run with the mapped status.

        ``rewrite``: the trial has a run already that does not hold what the tuning library
        knows (reconciling a resumed study); it is completed and ended again.
        """
        with self._lock:
            if handle.finished or not self.active or self.writer is None:
                return
            if handle.key in self._logged and not rewrite:
                return
            handle.finished = True
            if self._handles.get(handle.key) is handle:
                del self._handles[handle.key]  # weights can be large: drop the handle
        values = self._objective_values(result)
        improved = self.study.add(self._record(handle.key, handle.number, result, values))
        self.progress.trial_done(values[0] if values else None, self.objective_names[0])
        keep = self._keep_model(handle, values)
        with handle.lock:
            ops = record.final_ops(
                handle,
                result,
                base_tags=self.base_tags(handle),
                backend=self.backend,
                nested=self.nested,
                run_name=self.run_name(handle),
                plain=self.plain,
            )
        if handle.datasets and not self.plain and not handle.inputs_logged:
            with self.safety.guard(f"describing the data of trial {handle.number}"):
                ops[-1:-1] = self._dataset_ops(handle)
        if keep:
            try:
                objective = dict(zip(self.objective_names, values, strict=False))
                # Uploaded before the run ends: a FINISHED run shows its model.
                ops[-1:-1] = model_ops(self, handle, objective, result.params, self._evaluated_on)
                self._models.add(handle.key)
                evicted = self.policy.kept(handle.key, handle.ref)
                ops += [journal.Op(ref, "delete_model", {}) for ref in evicted]
            except Exception as error:  # the trial's record is written all the same
                self._model_failed(handle, error)
        handle.model = handle.model_loader = None
        self.writer.submit([*ops, *self.new_best(improved)], settle=True)
        self._logged.add(handle.key)
        for hook in self.hooks:
            with self.safety.guard("refreshing the study reports"):
                hook.on_trial(self)

    def _keep_model(self, handle: TrialRun, values: list[float]) -> bool:
        """Whether the policy keeps this trial's model, loaded now if it has a loader."""
        has_model = handle.model is not None or handle.model_loader is not None
        if not values or not has_model or not self.policy.decide(handle.key, values):
            return False
        if handle.model_loader is not None:
            # Loaded here, in the tuning thread: Keras Tuner's load_model calls
            # keras.backend.clear_session(), which must not run beside a build.
            try:
                handle.model = handle.model_loader()
            except Exception as error:
                self._model_failed(handle, error)
                return False
        return handle.model is not None

    def _model_failed(self, handle: TrialRun, error: BaseException) -> None:
        """A model that cannot be loaded or saved is a counted warning, never an error, and
        never the loss of the trial's record."""
        self.safety.count()
        if self.safety.strict:
            raise error
        warn(
            f"mlflow-hpo: saving the model of trial {handle.number} failed "
            f"({type(error).__name__}: {error}); the trial is logged without it."
        )

    def _dataset_ops(self, handle: TrialRun) -> list[journal.Op]:
        """The trial's dataset inputs, and those the study run does not list yet."""
        entries = datasets.inputs(self.datasets, handle.datasets)
        if not entries:
            return []
        evaluated = [e for e in entries if e["context"] == "validation"] or entries
        self._evaluated_on = {
            "name": evaluated[0]["dataset"]["name"],
            "digest": evaluated[0]["dataset"]["digest"],
        }
        ops = [journal.Op(handle.ref, "log_inputs", {"inputs": entries})]
        new = []
        for entry in entries:
            mark = f"{entry['context']}:{entry['dataset']['digest']}"
            if mark not in self.datasets.logged_to_study:
                self.datasets.logged_to_study.add(mark)
                new.append(entry)
        if new and self.nested:
            ops.append(journal.Op(STUDY, "log_inputs", {"needs": STUDY, "inputs": new}))
        return ops

    def has_model(self, key: str) -> bool:
        """Whether trial ``key``'s run has a logged model (this session or an earlier)."""
        stored = self.stored_runs.get(key)
        return key in self._models or (stored is not None and stored.has_model)

    def add_model(
        self,
        key: str,
        number: int,
        model: Any,
        values: dict[str, float],
        params: dict[str, Any],
        *,
        example: Any = None,
    ) -> None:
        """Log ``model`` on the run of trial ``key``, written earlier (a model chosen once
        the search knows which trials are kept)."""
        if not self.active or self.writer is None:
            return
        handle = TrialRun(key, number, batch.now_ms(), self._ensure_run)
        handle.created = True
        handle.model, handle.input_example = model, example
        with self.safety.guard(f"saving the model of trial {number}"):
            ops = model_ops(self, handle, values, params, self._evaluated_on)
            self._models.add(key)
            self.writer.submit(ops)

    def _record(
        self, key: str, number: int, result: TrialResult, values: list[float]
    ) -> TrialRecord:
        return TrialRecord(
            key, number, result.state, values, dict(result.params), result.start_ms, result.end_ms
        )

    def _objective_values(self, result: TrialResult, *, quiet: bool = False) -> list[float]:
        """The objective values of a COMPLETE trial, in objective order (else ``[]``)."""
        if result.state != names.STATE_COMPLETE:
            return []
        keyed = {batch.key(k): float(v) for k, v in result.values.items()}
        values = [keyed[n] for n in self.objective_names if n in keyed]
        if len(values) == len(self.objective_names):
            # A NaN objective is logged as it is, but ranks nothing and keeps no model.
            return [] if any(math.isnan(v) for v in values) else values
        if not quiet and not self._missing_objective_warned:
            self._missing_objective_warned = True
            warn(
                f"mlflow-hpo: a completed trial did not log the objective "
                f"{', '.join(self.objective_names)} (it logged {sorted(keyed) or 'nothing'}), "
                "so it cannot be ranked. Log the objective, or name the metric you do log."
            )
        return []

    def observe(self, key: str, number: int, result: TrialResult) -> None:
        """Count a trial this tracker did not write (another worker's) in the summary."""
        if key in self._handles:
            return
        values = self._objective_values(result, quiet=True)
        self.study.add(self._record(key, number, result, values))

    def reconcile(self, finished: list[tuple[str, int, TrialResult]]) -> None:
        """Compare what the tuning library says finished with what the store holds (after
        a resume): a trial with no run yet, or whose run is still RUNNING with nobody left
        to end it, is written now, from the library's record."""
        if self.store is None or self.writer is None or not self.active:
            return
        with self.safety.guard("reconciling the study with the store"):
            pending = self._unwritten(finished, self.stored_runs)
            if pending and self.parent is not None:
                # What the store held when the study opened is stale by now: a worker that
                # has since finished (its owner gone) wrote its trials meanwhile. Its owner
                # is known gone first, then the store is read: what it holds now is final.
                self.stored_runs = reconcile.on_resume(self.client, self.store, self.parent)
                pending = self._unwritten(pending, self.stored_runs)
            for key, number, result in pending:
                handle = TrialRun(key, number, result.start_ms or 0, self._ensure_run)
                handle.created = self.store.ready(handle.ref)
                result.tags[names.TAG_END_REASON] = reconcile.REASON_FROM_LIBRARY
                self.finish(handle, result, rewrite=True)

    def _unwritten(
        self, finished: list[tuple[str, int, TrialResult]], stored: dict[str, Any]
    ) -> list[tuple[str, int, TrialResult]]:
        return list(
            reconcile.unwritten(
                finished, stored, running_here=set(self._handles), jour=self.journal, me=self.owner
            )
        )

    # ------------------------------------------------------------------ closing
    def open_handles(self) -> list[TrialRun]:
        """Trials this process started and has not finished yet."""
        with self._lock:
            return [h for h in self._handles.values() if not h.finished]

    def interrupt_open_trials(self, state: str = names.STATE_KILLED) -> None:
        """End every trial this process started but never finished (an interrupted run),
        with the params it was started with."""
        for handle in self.open_handles():
            self.finish(handle, TrialResult(state=state, params=dict(handle.params)))

    def _end_open_trials(self) -> None:
        self.interrupt_open_trials()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything written so far is in the store (``timeout``: bounded)."""
        return self.writer.flush(timeout) if self.writer is not None else True

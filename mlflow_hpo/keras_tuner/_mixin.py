"""``MlflowTunerMixin``: tracks any Keras Tuner tuner through its own hook contract.

Keras Tuner calls ``search`` -> ``on_trial_begin`` -> ``run_trial`` (``fit`` per execution,
``on_epoch_begin``/``on_epoch_end`` per epoch) -> ``on_trial_end``: the mixin uses exactly
these public hooks, and never wraps Keras's ``fit``. It opens the study's run in ``search``
(where it also notes the data the trials fit on), makes each trial the current trial
between ``on_trial_begin`` and ``on_trial_end`` (so ``LayerGuard`` in ``build(hp)`` finds
it), logs each epoch from ``on_epoch_end``, and writes the trial once the oracle has scored
it. Nothing here counts directories: the trial id comes from the trial itself.

Models: with ``log_models="best"`` or a top k, the kept models are logged once the search
knows which trials are kept, from the checkpoints Keras Tuner keeps for every trial (one save
per kept model, not one per improvement); a resumed search recomputes them from the oracle.
``log_models="all"`` logs each trial's best epoch as the trial ends.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import uuid
from contextlib import ExitStack
from typing import Any

import keras_tuner

from mlflow_hpo._backend import StudyHandle, new_tracker
from mlflow_hpo._core import batch, compat, keras, names, parent
from mlflow_hpo._core.options import TrackingOptions
from mlflow_hpo._core.trial import TrialResult, TrialRun, activate
from mlflow_hpo._core.validate import flag
from mlflow_hpo.keras_tuner import _convert

STATE_FILE = "mlflow_hpo.json"  # in the tuner's project directory, beside oracle.json


class MlflowTunerMixin(StudyHandle):
    """Mix into any ``keras_tuner`` tuner to log its search to MLflow.

    ``class MyTuner(MlflowTunerMixin, keras_tuner.Tuner)`` works with a custom ``run_trial``.

    Args:
        experiment_name: MLflow experiment (default: MLflow's active one, else the
            ``project_name``).
        tracking_uri: MLflow store; ``None`` keeps MLflow's configured URI.
        log_models: ``"best"`` (default: the best trial's model, logged when the search
            ends), ``"all"`` (every trial's, as it ends), ``"none"`` or an int k (the top k,
            logged when the search ends). The model is the trial's best epoch (the checkpoint
            Keras Tuner keeps), as an MLflow ``keras`` model with its signature.
        freeze_gc: Keras Tuner runs a full ``gc.collect()`` before every build. The tracking
            store brings in SQLAlchemy and Alembic (~150k long-lived objects) that each of
            those collections would walk again. With ``True`` (default) the search runs
            between ``gc.freeze()`` and ``gc.unfreeze()``, unless the application froze the
            collector itself (then it is left as it is).
        **kwargs: The shared tracking options (:class:`mlflow_hpo.TrackingOptions`), and
            everything else for the tuner, unchanged.

    Raises:
        ConfigurationError: A tracking argument is invalid (before the tuner is created).

    Example:
        >>> from mlflow_hpo.keras_tuner import Hyperband
        >>> tuner = Hyperband(build_model, objective="val_accuracy", max_epochs=9,
        ...                   directory="kt", project_name="digits",
        ...                   experiment_name="digits-kt")
        >>> tuner.search(x, y, validation_split=0.2)
    """

    def __init__(
        self,
        *args: Any,
        experiment_name: str | None = None,
        tracking_uri: str | None = None,
        log_models: str | int = "best",
        freeze_gc: bool = True,
        **kwargs: Any,
    ) -> None:
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in TrackingOptions.__annotations__}
        options.update(
            experiment_name=experiment_name, tracking_uri=tracking_uri, log_models=log_models
        )
        # Epochs and models come from the tuner's own hooks: fit() is never wrapped.
        self._study_tracker = new_tracker(names.BACKEND_KERAS_TUNER, options, capture_fit=False)
        self._mlflow = self._study_tracker
        self._mlflow_open_trials: dict[str, tuple[TrialRun, ExitStack]] = {}
        self._mlflow_attempts: dict[str, int] = {}
        self._mlflow_keys: dict[str, str] = {}  # trial id -> key of its latest attempt
        self._mlflow_freeze_gc = flag("freeze_gc", freeze_gc)
        self._mlflow_example: Any = None
        self._mlflow_data: list[tuple[Any, Any, str]] = []
        self._mlflow_models: dict[str, int] = {}  # trial id -> id() of its current model
        super().__init__(*args, **kwargs)

    # Names used before the handle was shared by every backend.
    @property
    def mlflow_parent_run_id(self) -> str | None:
        return self.study_run_id

    @property
    def mlflow_tracker(self) -> Any:
        return self._mlflow

    # ------------------------------------------------------------ Keras Tuner hooks
    def search(self, *fit_args: Any, **fit_kwargs: Any) -> Any:
        with self._mlflow.safety.guard("opening the study run"):
            self._mlflow_open()
        with self._mlflow.safety.guard("noting the search's data"):
            self._mlflow_note_data(fit_args, fit_kwargs)
        freeze = self._mlflow_freeze_gc and gc.get_freeze_count() == 0
        if freeze:
            gc.collect()  # never freeze garbage
            gc.freeze()
        status = "FINISHED"
        try:
            return super().search(*fit_args, **fit_kwargs)  # type: ignore[misc]
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException as error:
            # e.g. Keras Tuner's FatalError: on_trial_end never runs for the trial it hit.
            status = "FAILED"
            for handle, _ in list(self._mlflow_open_trials.values()):
                failed = TrialResult(
                    state=names.STATE_FAIL,
                    error=batch.error_text(error),
                    error_class=type(error).__name__,
                )
                self._mlflow.finish(handle, failed)
            raise
        finally:
            try:
                for _, stack in list(self._mlflow_open_trials.values()):
                    stack.close()
                self._mlflow_open_trials.clear()
                # Still frozen: what rebuilding a kept model collects is the search's alone.
                with self._mlflow.safety.guard("logging the kept models"):
                    self._mlflow_log_kept()
                self._mlflow.close(
                    status,
                    end_parent=not compat.keras_tuner_is_worker(),
                    before=self._mlflow_count_all,
                )
            finally:
                if freeze:
                    gc.unfreeze()

    def on_trial_begin(self, trial: Any) -> None:
        super().on_trial_begin(trial)  # type: ignore[misc]
        if not self._mlflow.active:
            return
        handle = self._mlflow.trial(self._mlflow_key(trial), int(trial.trial_id))
        handle.params = _convert.active_values(trial)
        handle.datasets = list(self._mlflow_data)
        if self._mlflow_example is not None:
            handle.input_example = self._mlflow_example
        stack = ExitStack()
        stack.enter_context(activate(handle))
        self._mlflow_open_trials[trial.trial_id] = (handle, stack)

    def on_epoch_begin(self, trial: Any, model: Any, epoch: int, logs: Any = None) -> None:
        super().on_epoch_begin(trial, model, epoch, logs)  # type: ignore[misc]
        entry = self._mlflow_open_trials.get(trial.trial_id)
        if entry is not None and self._mlflow_models.get(trial.trial_id) != id(model):
            self._mlflow_models[trial.trial_id] = id(model)  # each execution builds anew
            entry[0].fits += 1

    def on_epoch_end(self, trial: Any, model: Any, epoch: int, logs: Any = None) -> None:
        super().on_epoch_end(trial, model, epoch, logs)  # type: ignore[misc]
        entry = self._mlflow_open_trials.get(trial.trial_id)
        if entry is None or not logs:
            return
        handle = entry[0]
        if self._mlflow_keeps_all:
            handle.model = model  # the best epoch's checkpoint is loaded into it at the end
        with self._mlflow.safety.guard(f"logging an epoch of trial {trial.trial_id}"):
            self._mlflow_log_epoch(handle, dict(logs), int(epoch))

    def on_trial_end(self, trial: Any) -> None:
        entry = self._mlflow_open_trials.pop(trial.trial_id, None)
        self._mlflow_models.pop(trial.trial_id, None)
        if entry is not None:
            entry[1].close()
        try:
            super().on_trial_end(trial)  # type: ignore[misc]  # the oracle scores it here
        finally:
            if entry is not None:
                with self._mlflow.safety.guard(f"logging trial {trial.trial_id}"):
                    self._mlflow_finish(trial, entry[0])

    # ------------------------------------------------------------------ internals
    @property
    def _mlflow_keeps_all(self) -> bool:
        return self._mlflow.policy.policy == "all"

    def _mlflow_key(self, trial: Any) -> str:
        """Trial id, plus the attempt when the trial runs again: the oracle retries INVALID
        trials, and a resumed search re-runs the trial an interrupt left unfinished, both
        under the same trial id. An attempt that already has a run is never written over."""
        trial_id = str(trial.trial_id)
        attempt = self._mlflow_attempts.get(trial_id, 0)
        while True:
            key = trial_id if attempt == 0 else f"{trial_id}-retry{attempt}"
            attempt += 1
            if not self._mlflow.is_logged(key):
                break
        self._mlflow_attempts[trial_id] = attempt
        self._mlflow_keys[trial_id] = key
        return key

    def _mlflow_key_of(self, trial_id: Any) -> str:
        """The key of the latest attempt of ``trial_id`` (what summaries point at)."""
        return self._mlflow_keys.get(str(trial_id), str(trial_id))

    def _mlflow_note_data(self, fit_args: tuple[Any, ...], fit_kwargs: dict[str, Any]) -> None:
        """What every trial fits on: its dataset inputs and its models' input example."""
        x = fit_args[0] if fit_args else fit_kwargs.get("x")
        y = fit_args[1] if len(fit_args) > 1 else fit_kwargs.get("y")
        if x is None or not hasattr(x, "shape") or not hasattr(x, "__getitem__"):
            return  # a tf.data pipeline or a generator: nothing to take rows from cheaply
        self._mlflow_example = x[:5]
        self._mlflow_data = [(x, y, "training")]
        validation = fit_kwargs.get("validation_data")
        if isinstance(validation, tuple | list) and len(validation) >= 2:
            self._mlflow_data.append((validation[0], validation[1], "validation"))
        self._mlflow.describe_data(self._mlflow_data)  # before the search freezes the gc

    def _mlflow_log_epoch(self, handle: TrialRun, logs: dict[str, Any], epoch: int) -> None:
        if getattr(self, "executions_per_trial", 1) > 1:
            prefix = names.METRIC_EXECUTION_PREFIX.format(index=handle.fits - 1)
            logs = {f"{prefix}{k}": v for k, v in logs.items()}
        self._mlflow.log_live(handle, logs, epoch)

    def _mlflow_location(self) -> tuple[str, str | None]:
        """Where the study lives, and the file that remembers its study run (if any)."""
        project_dir = os.path.abspath(str(getattr(self, "project_dir", ".")))
        if compat.keras_tuner_is_distributed():
            address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
            return f"grpc://{address}|{getattr(self, 'project_name', '')}", None
        return project_dir, os.path.join(project_dir, STATE_FILE)

    def _mlflow_open(self) -> None:
        location, state_path = self._mlflow_location()
        state: dict[str, Any] = {}
        if state_path is not None and os.path.exists(state_path):
            try:
                with open(state_path) as f:
                    state = dict(json.load(f))
            except (OSError, ValueError, TypeError):
                state = {}  # unreadable: start a new study rather than no tracking at all
        # A project directory recreated by overwrite=True is a new study: new nonce, new key.
        state.setdefault("study_nonce", uuid.uuid4().hex)
        oracle = self.oracle  # type: ignore[attr-defined]
        if isinstance(getattr(oracle, "max_trials", None), int):
            self._mlflow.progress.total = oracle.max_trials
        description = f"{location}|{state['study_nonce']}" if state_path else location
        run_id = self._mlflow.open(
            str(getattr(self, "project_name", None) or "keras_tuner"),
            key=parent.study_key(names.BACKEND_KERAS_TUNER, description),
            known_parent_id=state.get("parent_run_id"),
            directions=_convert.directions(oracle),
            objective_names=_convert.objective_names(oracle),
            tags={names.TAG_KT_TUNER: type(self).__name__, names.TAG_KT_PROJECT_DIR: location},
            # One process per project directory unless distributed (Keras Tuner's own files
            # would clash): its study run is looked for, but no rival waited for.
            exclusive=not compat.keras_tuner_is_distributed(),
        )
        if state_path is not None:
            state["parent_run_id"] = run_id or state.get("parent_run_id")
            os.makedirs(os.path.dirname(state_path), exist_ok=True)
            with open(f"{state_path}.tmp", "w") as f:
                json.dump(state, f)
            os.replace(f"{state_path}.tmp", state_path)  # never a half-written file
        if self._mlflow.policy.enabled:
            importlib.import_module("mlflow.keras")  # loaded before the search freezes the gc
        finished = _convert.finished(oracle, self._mlflow.objective_names)
        for key, _, result in finished:  # a resumed search
            if result.values:
                self._mlflow.policy.seed(key, list(result.values.values()))
        if finished and self._mlflow.stored_runs:
            self._mlflow.reconcile(finished)

    def _mlflow_finish(self, trial: Any, handle: TrialRun) -> None:
        oracle = self.oracle  # type: ignore[attr-defined]
        final = oracle.get_trial(trial.trial_id)
        # Over gRPC (distributed) the oracle's copy has no message: the local trial does.
        final.message = final.message or trial.message
        result = _convert.to_result(final, self._mlflow.objective_names)
        continues = final.hyperparameters.values.get(_convert.HYPERBAND_CONTINUES)
        if continues:
            store = self._mlflow.store
            known = store.known() if store is not None else {}
            run_id = known.get(f"trial:{self._mlflow_key_of(continues)}")
            if run_id:
                result.tags[names.TAG_CONTINUES_RUN_ID] = run_id
        result.tags[names.TAG_KT_TUNER_ID] = getattr(self, "tuner_id", "")
        result.start_ms = handle.start_ms
        result.end_ms = batch.now_ms()
        if result.state == names.STATE_COMPLETE and self._mlflow_keeps_all:
            if self._mlflow_has_model(final):
                handle.model_loader = lambda: self._mlflow_best_epoch(handle, final)
        else:
            handle.model = None  # kept models are logged when the search ends
        self._mlflow.finish(handle, result)

    def _mlflow_best_epoch(self, handle: TrialRun, trial: Any) -> Any:
        """The trial's model with its best epoch's weights (Keras Tuner's checkpoint).

        Loading the checkpoint into the model ``fit`` just trained avoids ``load_model``'s
        rebuild, ``clear_session`` and full garbage collection (over a second per trial).
        """
        if isinstance(self, keras_tuner.Tuner) and handle.model is not None:
            with keras.weights_only():
                handle.model.load_weights(compat.keras_tuner_checkpoint(self, trial.trial_id))
            return handle.model
        return self.load_model(trial)  # type: ignore[attr-defined]  # e.g. SklearnTuner

    def _mlflow_has_model(self, trial: Any) -> bool:
        """Whether ``load_model`` can rebuild this trial's model: a custom ``run_trial``
        without a hypermodel, or one that saved no checkpoint, has none to log."""
        if getattr(self, "hypermodel", None) is None:
            return False
        if isinstance(self, keras_tuner.Tuner):
            return os.path.exists(compat.keras_tuner_checkpoint(self, trial.trial_id))
        return True

    def _mlflow_log_kept(self) -> None:
        """Log the models the policy keeps, now that the search knows them."""
        tracker = self._mlflow
        policy = tracker.policy.policy
        if not tracker.active or policy in ("all", "none") or compat.keras_tuner_is_worker():
            return
        oracle = self.oracle  # type: ignore[attr-defined]
        keep = 1 if policy == "best" else int(policy)
        for trial in oracle.get_best_trials(keep):
            key = self._mlflow_key_of(trial.trial_id)
            if trial.score is None or tracker.has_model(key) or not self._mlflow_has_model(trial):
                continue
            with keras.weights_only():
                model = None
                if isinstance(self, keras_tuner.Tuner):
                    model = compat.keras_tuner_rebuild(self, trial)
                if model is None:
                    model = self.load_model(trial)  # type: ignore[attr-defined]
            values = {tracker.objective_names[0]: float(trial.score)}
            tracker.add_model(
                key, int(trial.trial_id), model, values, _convert.active_values(trial),
                example=self._mlflow_example,
            )  # fmt: skip

    def _mlflow_count_all(self) -> None:
        """Count every trial the oracle knows in the summary (a chief knows all workers')."""
        oracle = self.oracle  # type: ignore[attr-defined]
        for trial_id, number, result in _convert.finished(oracle, self._mlflow.objective_names):
            self._mlflow.observe(self._mlflow_key_of(trial_id), number, result)

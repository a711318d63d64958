"""``MlflowTunerMixin``: tracks any Keras Tuner tuner through its own hook contract.

Keras Tuner calls ``search`` -> ``on_trial_begin`` -> ``run_trial`` (``fit`` per execution)
-> ``on_trial_end``. The mixin opens the study's parent run in ``search``, makes each trial
the current trial between ``on_trial_begin`` and ``on_trial_end`` (so ``LayerGuard`` in
``build(hp)`` and the ``fit`` hook find it), and writes the trial once the oracle has scored
it. Nothing here counts directories: the trial id comes from the trial itself.
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
from keras_tuner.src.distribute import utils as dist_utils

from mlflow_hpo import _batch, _keras, _parent, names
from mlflow_hpo._tracker import StudyTracker
from mlflow_hpo._trial import TrialResult, TrialRun, activate
from mlflow_hpo._validate import validate_bool
from mlflow_hpo.keras_tuner import _convert

STATE_FILE = "mlflow_hpo.json"  # in the tuner's project directory, beside oracle.json


class MlflowTunerMixin:
    """Mix into any ``keras_tuner`` tuner to log its search to MLflow.

    ``class MyTuner(MlflowTunerMixin, keras_tuner.Tuner)`` works with a custom ``run_trial``.

    Args:
        experiment_name: MLflow experiment (default: MLflow's active one, else the
            ``project_name``).
        tracking_uri: MLflow store; ``None`` keeps MLflow's configured URI.
        log_models: ``"best"`` (default), ``"all"``, ``"none"`` or an int k (top k). The model
            logged is the trial's best epoch (the checkpoint Keras Tuner keeps), rebuilt
            with ``tuner.load_model``, as an MLflow ``keras`` model.
        synchronous: ``False`` writes from a background thread.
        strict: Raise logging errors instead of warning (default: ``MLFLOW_HPO_STRICT``).
        verbose: ``0`` hides the progress line (trials done, best so far, ETA), which is
            shown only when stderr is a terminal.
        reports: Write the study's charts to its run's ``reports/`` folder when it closes;
            ``None`` follows ``MLFLOW_HPO_REPORTS`` (default: on).
        freeze_gc: Keras Tuner runs a full ``gc.collect()`` before every build. The tracking
            store brings in SQLAlchemy and Alembic (~150k long-lived objects) that each of
            those collections would walk again. With ``True`` (default) the search runs
            between ``gc.freeze()`` and ``gc.unfreeze()``, so objects alive when it starts
            are skipped by the collections inside it and collected normally afterwards.
        *args, **kwargs: Passed to the tuner unchanged.

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
        synchronous: bool = True,
        strict: bool | None = None,
        verbose: int = 1,
        reports: bool | None = None,
        freeze_gc: bool = True,
        **kwargs: Any,
    ) -> None:
        self._mlflow = StudyTracker(
            "keras_tuner",
            experiment_name=experiment_name,
            tracking_uri=tracking_uri,
            log_models=log_models,
            synchronous=synchronous,
            strict=strict,
            verbose=verbose,
            reports=reports,
        )
        self._mlflow_open_trials: dict[str, tuple[TrialRun, ExitStack]] = {}
        self._mlflow_attempts: dict[str, int] = {}
        self._mlflow_keys: dict[str, str] = {}  # trial id -> key of its latest attempt
        self._mlflow_best: str | None = None
        self._mlflow_freeze_gc = validate_bool("freeze_gc", freeze_gc)
        super().__init__(*args, **kwargs)

    @property
    def mlflow_parent_run_id(self) -> str | None:
        """The study's parent run id, once ``search`` has started."""
        return self._mlflow.parent_run_id

    @property
    def mlflow_tracker(self) -> StudyTracker:
        return self._mlflow

    # ------------------------------------------------------------ Keras Tuner hooks
    def search(self, *fit_args: Any, **fit_kwargs: Any) -> Any:
        with self._mlflow.safety.guard("opening the study's parent run"):
            self._mlflow_open()
        if self._mlflow_freeze_gc:
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
                self._mlflow.finish(
                    handle,
                    TrialResult(
                        state=names.STATE_FAIL,
                        error=_batch.error_text(error),
                        error_class=type(error).__name__,
                    ),
                )
            raise
        finally:
            if self._mlflow_freeze_gc:
                gc.unfreeze()
            for handle, stack in list(self._mlflow_open_trials.values()):
                stack.close()
                _keras.unregister_live_logger(handle)
            self._mlflow_open_trials.clear()
            with self._mlflow.safety.guard("writing the study summary"):
                self._mlflow_summary(with_table=True)
            # Distributed workers finish at different times: only the chief ends the parent.
            worker = dist_utils.has_chief_oracle() and not dist_utils.is_chief_oracle()
            self._mlflow.close(status, end_parent=not worker)

    def on_trial_begin(self, trial: Any) -> None:
        super().on_trial_begin(trial)  # type: ignore[misc]
        with self._mlflow.safety.guard(f"starting trial {trial.trial_id}"):
            if not self._mlflow.active:
                return
            handle = self._mlflow.trial(self._mlflow_key(trial), int(trial.trial_id))
            stack = ExitStack()
            stack.enter_context(activate(handle))
            _keras.install_fit_hook()
            # Epochs come from the fit hook; so does the trained model, into which the best
            # epoch's checkpoint is loaded if the policy keeps it.
            _keras.register_live_logger(
                handle, self._mlflow_log_epoch, capture_model=self._mlflow.policy.enabled
            )
            self._mlflow_open_trials[trial.trial_id] = (handle, stack)

    def on_trial_end(self, trial: Any) -> None:
        entry = self._mlflow_open_trials.pop(trial.trial_id, None)
        if entry is not None:
            entry[1].close()
            _keras.unregister_live_logger(entry[0])
        try:
            super().on_trial_end(trial)  # type: ignore[misc]  # the oracle scores it here
        finally:
            if entry is not None:
                with self._mlflow.safety.guard(f"logging trial {trial.trial_id}"):
                    self._mlflow_finish(trial, entry[0])

    # ------------------------------------------------------------------ internals
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

    def _mlflow_log_epoch(self, handle: TrialRun, logs: dict[str, Any], epoch: int) -> None:
        if getattr(self, "executions_per_trial", 1) > 1:
            prefix = names.METRIC_EXECUTION_PREFIX.format(index=handle.fits - 1)
            logs = {f"{prefix}{k}": v for k, v in logs.items()}
        self._mlflow.log_live(handle, logs, epoch)

    def _mlflow_location(self) -> tuple[str, str | None]:
        """Where the study lives, and the file that remembers its parent run (if any)."""
        project_dir = os.path.abspath(str(getattr(self, "project_dir", ".")))
        if dist_utils.has_chief_oracle():
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
        parent = self._mlflow.open(
            str(getattr(self, "project_name", None) or "keras_tuner"),
            key=_parent.study_key(
                "keras_tuner", f"{location}|{state['study_nonce']}" if state_path else location
            ),
            known_parent_id=state.get("parent_run_id"),
            directions=_convert.directions(oracle),
            objective_names=_convert.objective_names(oracle),
            tags={names.TAG_KT_TUNER: type(self).__name__, names.TAG_KT_PROJECT_DIR: location},
        )
        if state_path is not None and parent is not None:
            state["parent_run_id"] = parent
            os.makedirs(os.path.dirname(state_path), exist_ok=True)
            with open(f"{state_path}.tmp", "w") as f:
                json.dump(state, f)
            os.replace(f"{state_path}.tmp", state_path)  # never a half-written file
        if self._mlflow.policy.enabled:
            importlib.import_module("mlflow.keras")  # loaded before the search freezes the gc
        for trial in getattr(oracle, "trials", {}).values():  # a resumed search
            if trial.score is not None:
                self._mlflow.policy.seed(str(trial.trial_id), [float(trial.score)])

    def _mlflow_finish(self, trial: Any, handle: TrialRun) -> None:
        oracle = self.oracle  # type: ignore[attr-defined]
        final = oracle.get_trial(trial.trial_id)
        # Over gRPC (distributed) the oracle's copy has no message: the local trial does.
        final.message = final.message or trial.message
        result = _convert.to_result(final, self._mlflow.objective_names)
        continues = final.hyperparameters.values.get(_convert.HYPERBAND_CONTINUES)
        if continues:
            run_id = self._mlflow.run_id_for(self._mlflow_key_of(continues))
            if run_id:
                result.tags[names.TAG_CONTINUES_RUN_ID] = run_id
        result.tags[names.TAG_KT_TUNER_ID] = getattr(self, "tuner_id", "")
        result.start_ms = handle.start_ms
        result.end_ms = _batch.now_ms()
        if (
            result.state == names.STATE_COMPLETE
            and self._mlflow.policy.enabled
            and self._mlflow_has_model(final)
        ):
            handle.model_loader = lambda: self._mlflow_best_epoch_model(handle, final)
        self._mlflow.finish(handle, result)
        best = oracle.get_best_trials(1)
        best_id = best[0].trial_id if best else None
        if best_id != self._mlflow_best:
            self._mlflow_best = best_id
            self._mlflow_summary(with_table=False)

    def _mlflow_best_epoch_model(self, handle: TrialRun, trial: Any) -> Any:
        """The trial's model with its best epoch's weights (Keras Tuner's checkpoint).

        Loading the checkpoint into the model ``fit`` just trained avoids ``load_model``'s
        rebuild, ``clear_session`` and full garbage collection (over a second per trial).
        """
        if isinstance(self, keras_tuner.Tuner) and handle.model is not None:
            handle.model.load_weights(self._get_checkpoint_fname(trial.trial_id))
            return handle.model
        return self.load_model(trial)  # type: ignore[attr-defined]  # e.g. SklearnTuner

    def _mlflow_has_model(self, trial: Any) -> bool:
        """Whether ``load_model`` can rebuild this trial's model: a custom ``run_trial``
        without a hypermodel, or one that saved no checkpoint, has none to log."""
        if getattr(self, "hypermodel", None) is None:
            return False
        if isinstance(self, keras_tuner.Tuner):
            checkpoint = self._get_checkpoint_fname(trial.trial_id)
            return os.path.exists(checkpoint)
        return True

    def _mlflow_summary(self, with_table: bool) -> None:
        if self._mlflow.active:
            oracle = self.oracle  # type: ignore[attr-defined]
            # A distributed worker's oracle is a client: only the chief knows every trial.
            worker = dist_utils.has_chief_oracle() and not dist_utils.is_chief_oracle()
            self._mlflow.summarize(
                _convert.summary(
                    oracle,
                    self._mlflow.objective_names,
                    with_table,
                    full=not worker,
                    key_of=self._mlflow_key_of,
                )
            )

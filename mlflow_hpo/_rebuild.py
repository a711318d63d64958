"""Rebuild a trial's model from the builder and the trial's records; log weights alone.

The common recipe rebuilds a model by reading a trial JSON and a weights file by hand.
Here the trial run already holds both: ``hyperparameters.json`` (typed values and the
backend) and either a logged model or a ``model.weights.h5`` artifact.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run

from mlflow_hpo._core import names
from mlflow_hpo._core.safety import warn
from mlflow_hpo._core.trial import current_trial
from mlflow_hpo.errors import ConfigurationError, MlflowHpoError


class RebuildError(MlflowHpoError):
    """A trial cannot be rebuilt or promoted; the message names the fix."""


def trial_run_of(trial_run: Any, client: MlflowClient) -> Run:
    if isinstance(trial_run, Run):
        return trial_run
    if isinstance(trial_run, str) and trial_run:
        return client.get_run(trial_run)
    raise ConfigurationError("trial_run", "a trial's run id or its mlflow Run", trial_run)


def trial_record(client: MlflowClient, run: Run, tag: str, artifact: str) -> Any:
    """A small JSON record of a trial: its tag, or (too big for a tag) its artifact.

    Raises:
        LookupError: The run has neither.
    """
    text = run.data.tags.get(tag)
    if text is not None:
        return json.loads(text)
    try:
        path = client.download_artifacts(run.info.run_id, artifact)
    except Exception as error:
        raise LookupError(f"run {run.info.run_id} has no {tag} tag nor {artifact}") from error
    with open(path) as f:
        return json.load(f)


def recorded_values(client: MlflowClient, run: Run) -> tuple[dict[str, Any], str]:
    """The trial's typed hyperparameter values and its backend."""
    try:
        record = trial_record(
            client, run, names.TAG_HYPERPARAMETERS, names.ARTIFACT_HYPERPARAMETERS
        )
    except LookupError as error:
        raise RebuildError(
            f"Run {run.info.run_id} has no recorded hyperparameters "
            f"({names.TAG_HYPERPARAMETERS} tag or {names.ARTIFACT_HYPERPARAMETERS}), so they "
            "are unknown. Pass the run of a trial logged by mlflow-hpo (a child of a study run)."
        ) from error
    return dict(record.get("values", {})), str(record.get("backend", ""))


def hp_for(values: dict[str, Any], backend: str, builder: Any) -> Any:
    """What ``builder`` is called with: the backend's own kind of fixed hyperparameters."""
    if getattr(builder, "_mlflow_hpo_space", False) or backend == "sklearn":
        return dict(values)
    if backend == "optuna":
        import optuna

        return optuna.trial.FixedTrial(values)
    if backend == "keras_tuner":
        import keras_tuner

        hp = keras_tuner.HyperParameters()
        for name, value in values.items():
            hp.Fixed(name, value)
        return hp
    return dict(values)


def has_weights(client: MlflowClient, run: Run) -> bool:
    return any(a.path == names.ARTIFACT_WEIGHTS for a in client.list_artifacts(run.info.run_id))


def rebuild(builder: Any, trial_run: Any, *, tracking_uri: str | None = None) -> Any:
    """Call ``builder`` with the trial's recorded values and load the trial's weights.

    Args:
        builder: The model builder the search used: ``build(trial)`` for Optuna (called with
            an ``optuna.trial.FixedTrial``), ``build(hp)`` for Keras Tuner (a
            ``HyperParameters`` holding the values), ``build(params)`` for scikit-learn (a
            dict), or a :mod:`mlflow_hpo.space` builder (the values). A builder that returns
            ``(model, output_exception_list)`` is unwrapped.
        trial_run: The trial's run id or ``Run``.
        tracking_uri: Store to read from; ``None`` uses MLflow's configured URI.

    Returns:
        The model, with the trial's weights if it is a Keras model (from the
        ``model.weights.h5`` artifact, else from the trial's logged model).

    Raises:
        RebuildError: The run has no recorded hyperparameters, or a Keras trial has neither
            weights nor a model.
    """
    client = MlflowClient(tracking_uri)
    run = trial_run_of(trial_run, client)
    values, backend = recorded_values(client, run)
    model = builder(hp_for(values, backend, builder))
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[1], list | tuple):
        model = model[0]
    if not _is_keras(model):
        return model  # scikit-learn estimators have no weights: the configured estimator
    if has_weights(client, run):
        path = client.download_artifacts(run.info.run_id, names.ARTIFACT_WEIGHTS)
        model.load_weights(path)
        return model
    model_uri = run.data.tags.get(names.TAG_MODEL_URI)
    if model_uri:
        import mlflow.keras

        model.set_weights(mlflow.keras.load_model(model_uri).get_weights())
        return model
    raise RebuildError(
        f"Trial run {run.info.run_id} has no weights and no model, so there is nothing to "
        f"load into the rebuilt model. Log them during the search: log_models='best' (or "
        f"'all') on the tracker, or mlflow_hpo.log_weights(model) in the objective."
    )


def _is_keras(model: Any) -> bool:
    import sys

    if "keras" not in sys.modules:
        return False
    import keras

    return isinstance(model, keras.Model)


def log_weights(model: Any) -> None:
    """Log the Keras ``model``'s weights on the current trial's run, now.

    For models whose full save does not reload (custom layers): :func:`rebuild` and
    ``promote_best(builder=...)`` rebuild them from the builder and these weights.
    """
    handle = current_trial()
    if handle is None:
        warn(
            "mlflow_hpo.log_weights() was called outside a tracked trial, so nothing was "
            "logged. Call it inside an objective wrapped by a mlflow-hpo tracker."
        )
        return
    # Saved now, uploaded through the journal: weights survive a store outage too.
    folder = tempfile.mkdtemp(prefix="mlflow-hpo-weights-")
    model.save_weights(os.path.join(folder, names.ARTIFACT_WEIGHTS))
    handle.upload_folder(folder)

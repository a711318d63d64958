"""A study, from MLflow, in TensorBoard's HParams format.

``mlflow-hpo export-tensorboard STUDY DIR`` (or :func:`export`) writes one TensorBoard run
per trial under ``DIR`` (``trial-<n>``): its hyperparameters (TensorBoard's own ``hparams``
summary API), its objective, and its per-step curves (Keras epochs, ``trial.report``
values, CV folds) as scalars; and, at ``DIR`` itself, the experiment's configuration (the
hyperparameters and the objective). ``tensorboard --logdir DIR`` then shows the study in the
HParams dashboard: table view, parallel coordinates, scatter plots. Needs the ``keras``
extra (TensorFlow writes the event files).

Example:
    >>> from mlflow_hpo.tensorboard import export
    >>> export("digits-cnn", "tb/digits", experiment_name="digits")
"""

from __future__ import annotations

import json
import os
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run

from mlflow_hpo._core import names, parent
from mlflow_hpo._core.study import study_objective
from mlflow_hpo.errors import MissingExtraError

_BOOKKEEPING = {names.METRIC_N_OUTPUT_EXCEPTIONS, names.METRIC_DURATION}


def _api() -> tuple[Any, Any]:
    try:
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hp_api
    except ImportError as error:
        raise MissingExtraError("tensorflow and tensorboard", "keras") from error
    return tf, hp_api


def export(
    study: Any,
    directory: str,
    *,
    experiment_name: str | None = None,
    tracking_uri: str | None = None,
) -> list[str]:
    """Write ``study`` (its run id, ``Run``, or name with ``experiment_name``) to
    ``directory`` for TensorBoard's HParams dashboard; return the trial folders written.

    Raises:
        ConfigurationError: ``study`` is not a study of this store.
        MissingExtraError: TensorFlow or TensorBoard is not installed.
    """
    from mlflow_hpo.registry import find_study

    tf, hp_api = _api()
    client = MlflowClient(tracking_uri)
    study_run = find_study(client, study, experiment_name)
    objective, _ = study_objective(study_run)
    written: list[str] = []
    domains: dict[str, set[Any]] = {}
    for page in parent.child_pages(client, study_run.info.experiment_id, study_run.info.run_id):
        for run in page:
            values = _values(run)
            for name, value in values.items():
                domains.setdefault(name, set()).add(value)
            folder = os.path.join(directory, run.info.run_name or run.info.run_id)
            with tf.summary.create_file_writer(folder).as_default():
                hp_api.hparams(values, trial_id=run.info.run_name or run.info.run_id)
                for key in run.data.metrics:
                    if key in _BOOKKEEPING:
                        continue
                    history = client.get_metric_history(run.info.run_id, key)
                    for point in history:
                        tf.summary.scalar(key, point.value, step=point.step)
            written.append(folder)
    hparams = [hp_api.HParam(name, _domain(hp_api, seen)) for name, seen in domains.items()]
    with tf.summary.create_file_writer(directory).as_default():
        hp_api.hparams_config(hparams=hparams, metrics=[hp_api.Metric(objective)])
    return written


def _values(run: Run) -> dict[str, Any]:
    """The trial's typed hyperparameters (its record), as TensorBoard takes them."""
    record = run.data.tags.get(names.TAG_HYPERPARAMETERS)
    values = json.loads(record).get("values", {}) if record else dict(run.data.params)
    values.pop(names.PARAM_TRIAL_NUMBER, None)
    return {
        k: v if isinstance(v, bool | int | float | str) else json.dumps(v)
        for k, v in values.items()
        if v is not None
    }


def _domain(hp_api: Any, seen: set[Any]) -> Any:
    if all(isinstance(v, bool) for v in seen) or all(isinstance(v, str) for v in seen):
        return hp_api.Discrete(sorted(seen))
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in seen):
        low, high = float(min(seen)), float(max(seen))
        return hp_api.RealInterval(low, high) if low < high else hp_api.Discrete([low])
    return None

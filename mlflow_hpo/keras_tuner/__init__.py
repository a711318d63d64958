"""Keras Tuner backend: drop-in tracked tuners and ``MlflowTunerMixin``.

Requires the ``keras`` extra: ``pip install "mlflow-hpo[keras]"``.

Example:
    >>> from mlflow_hpo.keras_tuner import Hyperband   # was: from keras_tuner import Hyperband
    >>> tuner = Hyperband(build, objective="val_accuracy", max_epochs=9,
    ...                   experiment_name="digits-kt")
"""

from __future__ import annotations

try:
    import keras_tuner as _kt
except ImportError as _error:  # pragma: no cover - only without the extra
    from mlflow_hpo.errors import MissingExtraError

    raise MissingExtraError("keras-tuner", "keras") from _error

from mlflow_hpo.keras_tuner._mixin import MlflowTunerMixin


class RandomSearch(MlflowTunerMixin, _kt.RandomSearch):
    """``keras_tuner.RandomSearch`` that logs every trial to MLflow."""


class Hyperband(MlflowTunerMixin, _kt.Hyperband):
    """``keras_tuner.Hyperband`` that logs every trial, with its bracket and round."""


class BayesianOptimization(MlflowTunerMixin, _kt.BayesianOptimization):
    """``keras_tuner.BayesianOptimization`` that logs every trial to MLflow."""


class GridSearch(MlflowTunerMixin, _kt.GridSearch):
    """``keras_tuner.GridSearch`` that logs every trial to MLflow."""


class SklearnTuner(MlflowTunerMixin, _kt.SklearnTuner):
    """``keras_tuner.SklearnTuner`` that logs every trial (and its fitted estimator)."""


__all__ = [
    "BayesianOptimization",
    "GridSearch",
    "Hyperband",
    "MlflowTunerMixin",
    "RandomSearch",
    "SklearnTuner",
]

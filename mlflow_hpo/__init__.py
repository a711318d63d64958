"""mlflow-hpo: record, compare and promote hyperparameter searches in MLflow.

``import mlflow_hpo`` stays light: it imports MLflow only. Backends load their library when
their subpackage is imported (``mlflow_hpo.optuna``, ``mlflow_hpo.keras_tuner``,
``mlflow_hpo.sklearn``, ``mlflow_hpo.hyperopt``, ``mlflow_hpo.ray``), and a missing extra says
which ``pip install "mlflow-hpo[...]"`` to run.
"""

from __future__ import annotations

import importlib
from typing import Any

from mlflow_hpo._core.options import TrackingOptions, WriteOptions
from mlflow_hpo._core.trial import current_trial, log_model
from mlflow_hpo._rebuild import log_weights, rebuild
from mlflow_hpo.errors import (
    ConfigurationError,
    MissingExtraError,
    MlflowHpoError,
    MlflowHpoWarning,
)

__version__ = "0.2.0"

_LAZY = {"LayerGuard": "mlflow_hpo.layers"}

__all__ = [
    "ConfigurationError",
    "LayerGuard",
    "MissingExtraError",
    "MlflowHpoError",
    "MlflowHpoWarning",
    "TrackingOptions",
    "WriteOptions",
    "__version__",
    "current_trial",
    "log_model",
    "log_weights",
    "rebuild",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mlflow_hpo' has no attribute {name!r}")

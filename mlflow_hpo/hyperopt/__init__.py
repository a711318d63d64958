"""Hyperopt backend: ``MlflowTrials``, a ``hyperopt.Trials`` that logs to MLflow.

Requires the ``hyperopt`` extra: ``pip install "mlflow-hpo[hyperopt]"``.
"""

from __future__ import annotations

try:
    import hyperopt as _hyperopt  # noqa: F401
except ImportError as _error:  # pragma: no cover - only without the extra
    from mlflow_hpo.errors import MissingExtraError

    raise MissingExtraError("hyperopt", "hyperopt") from _error

from mlflow_hpo.hyperopt._trials import MlflowTrials

__all__ = ["MlflowTrials"]

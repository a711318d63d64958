"""Optuna backend: ``MlflowStudyCallback`` and the drop-in ``MLflowCallback``.

Requires the ``optuna`` extra: ``pip install "mlflow-hpo[optuna]"``.
"""

from __future__ import annotations

try:
    import optuna as _optuna  # noqa: F401
except ImportError as _error:  # pragma: no cover - only without the extra
    from mlflow_hpo.errors import MissingExtraError

    raise MissingExtraError("optuna", "optuna") from _error

from mlflow_hpo.optuna._callback import MlflowStudyCallback
from mlflow_hpo.optuna._dropin import MLflowCallback

__all__ = ["MLflowCallback", "MlflowStudyCallback"]

"""scikit-learn backend: ``track_search`` for any search CV.

Requires the ``sklearn`` extra: ``pip install "mlflow-hpo[sklearn]"``.
"""

from __future__ import annotations

try:
    import sklearn as _sklearn  # noqa: F401
except ImportError as _error:  # pragma: no cover - only without the extra
    from mlflow_hpo.errors import MissingExtraError

    raise MissingExtraError("scikit-learn", "sklearn") from _error

from mlflow_hpo.sklearn._search import track_search

__all__ = ["track_search"]

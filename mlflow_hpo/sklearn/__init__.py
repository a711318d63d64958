"""scikit-learn backend: ``track_search`` for any search CV, ``MlflowScorer`` for live folds,
and ``tracked_sampler`` for hand-written ``ParameterSampler`` loops.

Requires the ``sklearn`` extra: ``pip install "mlflow-hpo[sklearn]"``.
"""

from __future__ import annotations

try:
    import sklearn as _sklearn  # noqa: F401
except ImportError as _error:  # pragma: no cover - only without the extra
    from mlflow_hpo.errors import MissingExtraError

    raise MissingExtraError("scikit-learn", "sklearn") from _error

from mlflow_hpo.sklearn._sampler import TrackedSampler, tracked_sampler
from mlflow_hpo.sklearn._sampler_trial import SamplerTrial
from mlflow_hpo.sklearn._scorer import MlflowScorer
from mlflow_hpo.sklearn._search import track_search

__all__ = ["MlflowScorer", "SamplerTrial", "TrackedSampler", "track_search", "tracked_sampler"]

"""Ray Tune backend: ``MlflowTuneCallback``.

Requires the ``ray`` extra: ``pip install "mlflow-hpo[ray]"``.
"""

from __future__ import annotations

try:
    import ray.tune as _tune  # noqa: F401
except ImportError as _error:  # pragma: no cover - only without the extra
    from mlflow_hpo.errors import MissingExtraError

    raise MissingExtraError("ray[tune]", "ray") from _error

from mlflow_hpo.ray._callback import MlflowTuneCallback

__all__ = ["MlflowTuneCallback"]

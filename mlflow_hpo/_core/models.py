"""Which trials keep their model, and how a model object becomes an MLflow model.

The ``log_models`` policy:

* ``"best"`` (default): log a trial's model only when the trial improves on every completed
  trial before it (for several objectives: when no earlier trial dominates it);
* ``"all"``: every completed trial;
* ``"none"``: never (the Keras ``fit`` hook is not even installed);
* an ``int`` k: keep the top k; models pushed out of the top k are deleted again.

Models are logged through MLflow's own flavors (``keras``, ``sklearn``) as logged models
attached to the trial run, so they reload with ``mlflow.<flavor>.load_model`` without the
builder code. Requirements are the flavor's defaults: MLflow's inference would start a
subprocess and cost seconds per trial.
"""

from __future__ import annotations

import inspect
import sys
import threading
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run

from mlflow_hpo import names
from mlflow_hpo.errors import ConfigurationError

MODES = ("best", "all", "none")


def validate_policy(log_models: Any) -> str | int:
    """Return a checked ``log_models`` value or raise :class:`ConfigurationError`."""
    if isinstance(log_models, str) and log_models in MODES:
        return log_models
    if isinstance(log_models, int) and not isinstance(log_models, bool) and log_models >= 1:
        return log_models
    raise ConfigurationError(
        "log_models",
        'one of "best", "all", "none" or a positive int k (keep the top k)',
        log_models,
        'Use log_models="none" to log no weights at all.',
    )


def _better(a: float, b: float, direction: str) -> bool:
    return a > b if direction == "maximize" else a < b


def dominates(a: list[float], b: list[float], directions: list[str]) -> bool:
    """True when ``a`` is at least as good as ``b`` everywhere and better somewhere."""
    pairs = list(zip(a, b, directions, strict=False))
    no_worse = all(not _better(y, x, d) for x, y, d in pairs)
    return no_worse and any(_better(x, y, d) for x, y, d in pairs)


@dataclass
class _Kept:
    key: str
    values: list[float]
    model_id: str | None = None


class ModelPolicy:
    """Decides, thread-safely, whether a completed trial's model is logged.

    Args:
        policy: A value accepted by :func:`validate_policy`.
    """

    def __init__(self, policy: str | int) -> None:
        self.policy = policy
        self.directions: list[str] = ["minimize"]
        self._completed: dict[str, _Kept] = {}
        self._best: float | None = None  # single objective: the best value so far
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.policy != "none"

    def seed(self, key: str, values: list[float]) -> None:
        """Remember a completed trial this process did not run (a resumed study)."""
        with self._lock:
            if key not in self._completed:
                self._record(key, values)

    def _record(self, key: str, values: list[float]) -> bool:
        """Store the trial; return whether it beats the single-objective best so far."""
        self._completed[key] = _Kept(key, values)
        improved = self._best is None or _better(values[0], self._best, self.directions[0])
        if improved:
            self._best = values[0]
        return improved

    def decide(self, key: str, values: list[float]) -> bool:
        """Record a completed trial and say whether its model should be logged."""
        with self._lock:
            improved = self._record(key, values)  # O(1): studies can run 10^4+ trials
            if self.policy in ("none", "all"):
                return self.policy == "all"
            others = (k for k in self._completed.values() if k.key != key)
            if self.policy == "best":
                if len(self.directions) > 1:
                    return not any(dominates(k.values, values, self.directions) for k in others)
                return improved
            better = sum(1 for k in others if _better(k.values[0], values[0], self.directions[0]))
            return better < int(self.policy)

    def kept(self, key: str, model_id: str) -> list[str]:
        """Note a logged model; return the ids of models now outside the top k."""
        with self._lock:
            if key in self._completed:
                self._completed[key].model_id = model_id
            if not isinstance(self.policy, int):
                return []
            ranked = sorted(
                self._completed.values(),
                key=lambda k: k.values[0],
                reverse=self.directions[0] == "maximize",
            )
            evicted = [k.model_id for k in ranked[self.policy :] if k.model_id]
            for k in ranked[self.policy :]:
                k.model_id = None
            return evicted


def flavor_for(model: Any) -> tuple[Any, Any]:
    """Return ``(flavor_module, model_to_save)`` for a Keras model or sklearn estimator.

    SciKeras wrappers are unwrapped to their fitted Keras model, which is what a user wants
    to reload for inference.

    Raises:
        ConfigurationError: The object is neither.
    """
    if "keras" in sys.modules:
        import keras

        if isinstance(model, keras.Model):
            import mlflow.keras

            return mlflow.keras, model
        inner = getattr(model, "model_", None)
        if isinstance(inner, keras.Model) and "scikeras" in type(model).__module__:
            import mlflow.keras

            return mlflow.keras, inner
    if "sklearn" in sys.modules:
        from sklearn.base import BaseEstimator

        if isinstance(model, BaseEstimator):
            import mlflow.sklearn

            return mlflow.sklearn, model
    raise ConfigurationError(
        "model",
        "a keras.Model or a scikit-learn estimator",
        type(model).__name__,
        "Log other model types yourself with the matching mlflow.<flavor>.log_model().",
    )


def log_model(
    client: MlflowClient, model: Any, run: Run, tags: dict[str, str], params: dict[str, str]
) -> tuple[str, str]:
    """Log ``model`` as a logged model of ``run``; return ``(models:/ URI, model id)``.

    The logged model is created here, in the run's experiment: ``Model.log`` alone would put
    it in MLflow's *active* experiment, which differs when the tracker chose the experiment.
    ``Model.log`` resolves the store from MLflow's global tracking URI, which the tracker sets
    when it is given ``tracking_uri`` (as optuna-integration's callback does).
    """
    from mlflow.models import Model

    flavor, obj = flavor_for(model)
    logged = client.create_logged_model(
        experiment_id=run.info.experiment_id,
        name=names.MODEL_ARTIFACT,
        source_run_id=run.info.run_id,
        tags=tags,
        params=params,
    )
    # Flavors name their model argument differently (keras: model, sklearn: sk_model).
    model_argument = next(iter(inspect.signature(flavor.save_model).parameters))
    # The flavor's default requirements: inferring them would cost seconds per model.
    extra: dict[str, Any] = {"pip_requirements": flavor.get_default_pip_requirements()}
    if flavor.__name__ == "mlflow.sklearn":
        # MLflow's skops default refuses common estimators (trees, forests) unless every
        # type is listed as trusted; cloudpickle reloads any estimator, as MLflow 2 did.
        extra["serialization_format"] = flavor.SERIALIZATION_FORMAT_CLOUDPICKLE
        extra["pip_requirements"] = flavor.get_default_pip_requirements(include_cloudpickle=True)
    info = Model.log(
        artifact_path=None,
        name=names.MODEL_ARTIFACT,
        flavor=flavor,
        **{model_argument: obj},
        run_id=run.info.run_id,
        model_id=logged.model_id,
        **extra,
    )
    return str(info.model_uri), str(logged.model_id)

"""``SamplerTrial``: what the body of a ``tracked_sampler`` loop gets for its sample."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mlflow_hpo._core.tracker import StudyTracker
from mlflow_hpo._core.trial import TrialRun
from mlflow_hpo.errors import ConfigurationError


class SamplerTrial:
    """One sample of a tracked loop: log metrics and the model of this trial.

    Attributes:
        number: The trial number (0, 1, ...), also the run's name ``trial-<number>``.
        params: The sampled hyperparameters.
    """

    def __init__(self, tracker: StudyTracker, handle: TrialRun, params: dict[str, Any]):
        self._tracker = tracker
        self._handle = handle
        self.number = handle.number
        self.params = params
        self.values: dict[str, float] = {}

    @property
    def run_id(self) -> str:
        """The trial's MLflow run id (the run is created now if it was not yet)."""
        return self._handle.run_id

    def log(self, step: int | None = None, **metrics: float) -> None:
        """Log metrics of this trial.

        Without ``step``: the trial's final values (the objective among them), written when
        the trial ends; a later call overrides a name. With ``step`` (e.g. the epoch): one
        point of each metric's history, written now.
        """
        bad = {k: v for k, v in metrics.items() if not _is_number(v)}
        if bad:
            raise ConfigurationError("metrics", "numbers (int or float)", bad)
        if step is not None:
            self._tracker.log_live(self._handle, metrics, int(step))
            return
        self.values.update({k: float(v) for k, v in metrics.items()})

    def log_model(self, model: Any, *, input_example: Any = None) -> None:
        """Offer the trained model; the ``log_models`` policy decides whether it is logged.

        ``input_example`` (a few rows of the model's input) gives the logged model its
        signature; a captured Keras ``fit`` provides one already.

        Raises:
            ConfigurationError: ``model`` is neither a Keras model nor a scikit-learn
                estimator.
        """
        from mlflow_hpo._core.models import flavor_for

        flavor_for(model)
        self._handle.model = model
        self._handle.model_explicit = True
        if input_example is not None:
            self._handle.input_example = input_example

    def add_output_exceptions(self, layer_names: Iterable[str]) -> None:
        """Record layers the builder had to skip (the "output exception list")."""
        if isinstance(layer_names, str):
            raise ConfigurationError("layer_names", "a list of layer names", layer_names)
        self._handle.add_output_exceptions(list(layer_names))

    def build(self, builder: Any, *args: Any, **kwargs: Any) -> Any:
        """Call ``builder(params, ...)`` and return the model.

        A builder that returns ``(model, output_exception_list)``, as in the common recipe,
        has the list recorded on the trial; a builder using ``LayerGuard`` needs nothing.
        """
        built = builder(self.params, *args, **kwargs)
        if (
            isinstance(built, tuple)
            and len(built) == 2
            and isinstance(built[1], list | tuple)
            and all(isinstance(n, str) for n in built[1])
        ):
            self.add_output_exceptions(built[1])
            return built[0]
        return built


def _is_number(value: Any) -> bool:
    if isinstance(value, bool | str | bytes):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True

"""``LayerGuard``: add layers to a model only while the output shape stays valid.

The hand-written recipe tracks one spatial dimension and re-implements each layer's shape
arithmetic (``floor(dim / pool)``, ``dim - kernel + 1``). ``LayerGuard`` asks Keras instead:
each candidate layer's ``compute_output_shape`` on the current shape. A layer whose output
would be empty or invalid is skipped, and its name is recorded in :attr:`LayerGuard.exceptions`
(the "output exception list"). Inside a tracked trial of any backend the list is attached to
that trial's run automatically, so builder code stays backend-neutral.
"""

from __future__ import annotations

from typing import Any

from mlflow_hpo._core.trial import current_trial
from mlflow_hpo.errors import ConfigurationError, MissingExtraError


def _keras() -> Any:
    try:
        import keras
    except ImportError as error:  # pragma: no cover - exercised without the extra only
        raise MissingExtraError("keras", "keras") from error
    return keras


class LayerGuard:
    """Guards a ``keras.Sequential`` while it is being built.

    Args:
        model: A ``keras.Sequential`` whose input shape is known (it starts with
            ``keras.Input`` or its first layer has an input shape).

    Raises:
        ConfigurationError: ``model`` is not a ``keras.Sequential`` with a known input shape.

    Example:
        >>> import keras
        >>> from mlflow_hpo.layers import LayerGuard
        >>> model = keras.Sequential([keras.Input((8, 8, 1))])
        >>> guard = LayerGuard(model)
        >>> for i in range(1, 4):
        ...     guard.add(keras.layers.Conv2D(4, 3), name=f"Conv_L{i}")
        ...     guard.add(keras.layers.MaxPooling2D(2), name=f"Pooling_L{i}")
        >>> guard.exceptions
        ['Pooling_L2', 'Conv_L3', 'Pooling_L3']
    """

    def __init__(self, model: Any) -> None:
        keras = _keras()
        if not isinstance(model, keras.Sequential):
            raise ConfigurationError(
                "model",
                "a keras.Sequential",
                type(model).__name__,
                "Wrap the layers you add conditionally in a Sequential.",
            )
        shape = _current_shape(model)
        if shape is None:
            raise ConfigurationError(
                "model",
                "a keras.Sequential with a known input shape",
                "a Sequential without an input",
                "Start it with keras.Input(shape): keras.Sequential([keras.Input((8, 8, 1))]).",
            )
        self.model = model
        self.shape: tuple[Any, ...] = tuple(shape)
        self.exceptions: list[str] = []
        self._trial = current_trial()
        if self._trial is not None:
            self._trial.new_guard()

    def fits(self, layer: Any) -> tuple[Any, ...] | None:
        """The output shape ``layer`` would produce, or ``None`` if it would be invalid."""
        try:
            out = layer.compute_output_shape(self.shape)
        except Exception:
            return None
        if isinstance(out, list):  # multi-output layers: not shape-guardable here
            return None
        out = tuple(out)
        if any(d is not None and int(d) <= 0 for d in out[1:]):
            return None
        return out

    def add(self, layer: Any, name: str | None = None) -> bool:
        """Add ``layer`` if the output shape stays valid, else record ``name``.

        Args:
            layer: Any Keras layer.
            name: What to record when the layer is skipped (default: ``layer.name``).

        Returns:
            Whether the layer was added.
        """
        out = self.fits(layer)
        if out is None:
            label = name or layer.name
            self.exceptions.append(label)
            # Kept on the model too: a SciKeras search builds it where no trial is current,
            # and the scorer or the refitted best estimator carries it back to its run.
            self.model._mlflow_hpo_output_exceptions = tuple(self.exceptions)
            if self._trial is not None:
                self._trial.add_output_exceptions([label])
            return False
        self.model.add(layer)
        self.shape = out
        return True


def output_exceptions_of(model: Any) -> list[str]:
    """The output exception list a ``LayerGuard`` left on ``model``: a Keras model, a
    SciKeras wrapper (its ``model_``) or a pipeline ending in one; ``[]`` if none."""
    for candidate in (model, getattr(model, "model_", None)):
        found = getattr(candidate, "_mlflow_hpo_output_exceptions", None)
        if isinstance(found, tuple):
            return list(found)
    steps = getattr(model, "steps", None)
    if isinstance(steps, list) and steps:
        return output_exceptions_of(steps[-1][1])
    return []


def _current_shape(model: Any) -> tuple[Any, ...] | None:
    try:
        if model.layers:
            return tuple(model.layers[-1].output.shape)
        inputs = getattr(model, "_layers", None) or []
        for layer in inputs:
            batch_shape = getattr(layer, "batch_shape", None)
            if batch_shape is not None:
                return tuple(batch_shape)
    except (AttributeError, ValueError):
        return None
    return None

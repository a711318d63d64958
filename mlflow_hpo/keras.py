"""Keras inside a tracked trial: the explicit epoch callback.

By default a tracked trial captures ``keras.Model.fit`` on its own (the ``capture_fit``
option). With ``capture_fit=False``, or to be explicit, pass the callback yourself:

Example:
    >>> import mlflow_hpo.keras
    >>> def objective(trial):
    ...     model = build(trial)
    ...     model.fit(x, y, validation_data=(xv, yv),
    ...               callbacks=[mlflow_hpo.keras.callback()])
    ...     mlflow_hpo.log_model(model, input_example=x[:5])
    ...     return model.evaluate(xv, yv)[1]
"""

from __future__ import annotations

from typing import Any

from mlflow_hpo._core import keras as _keras
from mlflow_hpo.errors import MissingExtraError

__all__ = ["callback"]


def callback() -> Any:
    """A ``keras.callbacks.Callback`` that logs each epoch's logs (``step=epoch``) to the
    trial current when training starts; outside a tracked trial it does nothing.

    Raises:
        MissingExtraError: Keras is not installed.
    """
    try:
        import keras  # noqa: F401
    except ImportError as error:  # pragma: no cover - only without the extra
        raise MissingExtraError("keras", "keras") from error
    return _keras.callback()

"""The Keras side of the core: capture ``fit`` inside a tracked trial, log its epochs.

``keras.Model.fit`` is wrapped once per process (like MLflow's autologging patches). The
wrapper does nothing unless a tracked trial is current in the calling thread; then it adds
an epoch-logging callback and, after ``fit`` returns, offers the model to the trial so the
``log_models`` policy can keep it without an extra line in the user's objective. Our own
steps run under the safety contract: if they fail, ``fit`` runs exactly as the user called it.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

from mlflow_hpo._trial import TrialRun, current_trial
from mlflow_hpo.errors import MlflowHpoWarning

LiveLog = Callable[[TrialRun, dict[str, Any], int], None]

_PATCH_LOCK = threading.Lock()
# id(handle) -> (log epochs, capture the model?) for trials of a live tracker
_LIVE: dict[int, tuple[LiveLog, bool]] = {}


def register_live_logger(handle: TrialRun, log: LiveLog, capture_model: bool = True) -> None:
    """Route the epochs of ``handle``'s ``fit`` calls to ``log`` (the owning tracker)."""
    _LIVE[id(handle)] = (log, capture_model)


def unregister_live_logger(handle: TrialRun) -> None:
    _LIVE.pop(id(handle), None)


def epoch_logger(handle: TrialRun, log: LiveLog) -> Any:
    """A ``keras.callbacks.Callback`` that logs each epoch's logs with ``step=epoch``."""
    import keras

    class EpochLogger(keras.callbacks.Callback):
        _mlflow_hpo = True

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if logs:
                log(handle, dict(logs), int(epoch))

    return EpochLogger()


def _with_logger(
    original: Any, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any], logger: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``fit``'s arguments with ``logger`` added to ``callbacks``, however they were given."""
    import keras

    bound = inspect.signature(original).bind(model, *args, **kwargs)
    callbacks = bound.arguments.get("callbacks")
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks.callbacks.append(logger)  # Keras uses a given CallbackList as it is
        logger.set_model(model)
    else:
        bound.arguments["callbacks"] = [*(callbacks or []), logger]
    return bound.args[1:], bound.kwargs


def install_fit_hook() -> None:
    """Wrap ``keras.Model.fit`` once, if Keras is imported; a no-op otherwise."""
    if "keras" not in sys.modules:
        return
    import keras

    with _PATCH_LOCK:
        original = keras.Model.fit
        if getattr(original, "_mlflow_hpo_hook", False):
            return

        @functools.wraps(original)
        def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
            handle = current_trial()
            live = _LIVE.get(id(handle)) if handle is not None else None
            if handle is None or live is None:
                return original(self, *args, **kwargs)
            log, capture_model = live
            handle.fits += 1
            call_args, call_kwargs = args, kwargs
            try:
                call_args, call_kwargs = _with_logger(
                    original, self, args, kwargs, epoch_logger(handle, log)
                )
            except Exception as error:
                warnings.warn(
                    f"mlflow-hpo: could not add epoch logging to fit() ({error}); "
                    "fit runs unchanged.",
                    MlflowHpoWarning,
                    stacklevel=2,
                )
            history = original(self, *call_args, **call_kwargs)
            if capture_model and not handle.model_explicit:
                handle.model = self
            return history

        fit._mlflow_hpo_hook = True  # type: ignore[attr-defined]
        keras.Model.fit = fit

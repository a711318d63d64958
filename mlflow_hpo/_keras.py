"""The Keras side of the core: capture ``fit`` inside a tracked trial, log its epochs.

``keras.Model.fit`` is wrapped once per process (like MLflow's autologging patches). The
wrapper does nothing unless a tracked trial is current in the calling thread; then it adds
an :class:`EpochLogger` callback and, after ``fit`` returns, offers the model to the trial
so the ``log_models`` policy can keep it without an extra line in the user's objective.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from typing import Any

from mlflow_hpo._trial import TrialRun, current_trial

_PATCH_LOCK = threading.Lock()
_LIVE_LOGGERS: dict[int, Callable[[TrialRun, dict[str, Any], int], None]] = {}


def register_live_logger(
    handle: TrialRun, log: Callable[[TrialRun, dict[str, Any], int], None]
) -> None:
    """Route the epochs of ``handle``'s ``fit`` calls to ``log`` (the owning tracker)."""
    _LIVE_LOGGERS[id(handle)] = log


def unregister_live_logger(handle: TrialRun) -> None:
    _LIVE_LOGGERS.pop(id(handle), None)


def epoch_logger(handle: TrialRun) -> Any:
    """A ``keras.callbacks.Callback`` that logs each epoch's logs with ``step=epoch``."""
    import keras

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            log = _LIVE_LOGGERS.get(id(handle))
            if log is not None and logs:
                log(handle, dict(logs), int(epoch))

    return EpochLogger()


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
            if handle is None or id(handle) not in _LIVE_LOGGERS:
                return original(self, *args, **kwargs)
            callbacks = list(kwargs.pop("callbacks", None) or [])
            if not any(getattr(c, "_mlflow_hpo", False) for c in callbacks):
                logger = epoch_logger(handle)
                logger._mlflow_hpo = True
                callbacks.append(logger)
            history = original(self, *args, callbacks=callbacks, **kwargs)
            if not handle.model_explicit:
                handle.model = self
            return history

        fit._mlflow_hpo_hook = True  # type: ignore[attr-defined]
        keras.Model.fit = fit

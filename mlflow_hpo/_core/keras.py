"""The Keras side of the core: a tracked trial's ``fit`` epochs, data and model.

Two ways in, both logging to the current trial:

* :func:`callback` gives an explicit ``keras.callbacks.Callback`` to pass to ``fit``;
* the automatic capture wraps ``keras.Model.fit`` while at least one tracker that wants it is
  open, and puts Keras's own ``fit`` back when the last one closes (as MLflow's
  ``safe_patch`` does). The wrapper does nothing unless a tracked trial is current in the
  calling thread; then it adds the epoch callback, notes a few rows of the data (the model's
  input example and signature) and the data itself (the run's dataset inputs), and offers
  the trained model to the trial, so the ``log_models`` policy can keep it.

Our own steps run under the safety contract: if they fail, ``fit`` runs exactly as called.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from mlflow_hpo._core import compat
from mlflow_hpo._core.safety import warn
from mlflow_hpo._core.trial import TrialRun, current_trial

LiveLog = Callable[[TrialRun, dict[str, Any], int], None]
EXAMPLE_ROWS = 5

_LOCK = threading.RLock()
_WANTED = 0  # open trackers that want fit() captured
_ORIGINAL: Any = None  # Keras's own fit while ours is installed
# id(handle) -> (log epochs, capture the model?) for trials of an open tracker
_LIVE: dict[int, tuple[LiveLog, bool]] = {}


def register(handle: TrialRun, log: LiveLog, capture_model: bool = True) -> None:
    """Route the epochs of ``handle``'s ``fit`` calls to ``log`` (the owning tracker)."""
    _LIVE[id(handle)] = (log, capture_model)
    install()


def unregister(handle: TrialRun) -> None:
    _LIVE.pop(id(handle), None)


def want() -> None:
    """A tracker that captures ``fit`` opens: ``fit`` is wrapped now if Keras is imported,
    else as soon as it is (an objective may import Keras itself)."""
    global _WANTED
    with _LOCK:
        _WANTED += 1
    compat.after_import("keras", _on_keras_import)


def _on_keras_import(module: Any) -> None:
    install()


def release() -> None:
    """A tracker closes; the last one puts Keras's own ``fit`` back."""
    global _WANTED, _ORIGINAL
    with _LOCK:
        _WANTED = max(0, _WANTED - 1)
        if _WANTED == 0 and _ORIGINAL is not None:
            import keras

            keras.Model.fit = _ORIGINAL
            _ORIGINAL = None


def installed() -> bool:
    return _ORIGINAL is not None


def callback(handle: TrialRun | None = None, log: LiveLog | None = None) -> Any:
    """A ``keras.callbacks.Callback`` logging each epoch's logs with ``step=epoch`` to the
    trial current when training starts (or to ``handle``), through its tracker."""
    import keras

    class MlflowHpoEpochs(keras.callbacks.Callback):
        """Logs each epoch of ``fit`` to the current mlflow-hpo trial."""

        _mlflow_hpo = True

        def __init__(self) -> None:
            super().__init__()
            self._handle = handle
            self._log = log

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            if self._handle is None:
                self._handle = current_trial()
            if self._handle is not None and self._log is None:
                live = _LIVE.get(id(self._handle))
                self._log = live[0] if live else None

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if logs and self._handle is not None and self._log is not None:
                self._log(self._handle, dict(logs), int(epoch))

    return MlflowHpoEpochs()


def _with_logger(
    original: Any, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any], handle: TrialRun
) -> tuple[tuple[Any, ...], dict[str, Any], inspect.BoundArguments]:
    """``fit``'s arguments with our callback added (unless the user passed one)."""
    import keras

    bound = inspect.signature(original).bind(model, *args, **kwargs)
    callbacks = bound.arguments.get("callbacks")
    given = (
        callbacks.callbacks if isinstance(callbacks, keras.callbacks.CallbackList) else callbacks
    )
    if any(getattr(c, "_mlflow_hpo", False) for c in given or []):
        return args, kwargs, bound
    logger = callback(handle)
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks.callbacks.append(logger)  # Keras uses a given CallbackList as it is
        logger.set_model(model)
    else:
        bound.arguments["callbacks"] = [*(callbacks or []), logger]
    return bound.args[1:], bound.kwargs, bound


def note_data(handle: TrialRun, bound: inspect.BoundArguments) -> None:
    """Keep references to what ``fit`` trains on (no copy): the first rows become the
    model's input example, the arrays the run's dataset inputs."""
    arguments = bound.arguments
    x, y = arguments.get("x"), arguments.get("y")
    if x is None or not hasattr(x, "__getitem__") or not hasattr(x, "shape"):
        return  # a tf.data pipeline or a generator: no rows to take cheaply
    if handle.input_example is None:
        handle.input_example = x[:EXAMPLE_ROWS]
    validation = arguments.get("validation_data")
    handle.datasets = [(x, y, "training")]
    if isinstance(validation, tuple | list) and len(validation) >= 2:
        handle.datasets.append((validation[0], validation[1], "validation"))


def install() -> None:
    """Wrap ``keras.Model.fit`` if a tracker wants it and Keras is imported (idempotent)."""
    global _ORIGINAL
    if "keras" not in sys.modules:
        return
    with _LOCK:
        if _WANTED == 0 or _ORIGINAL is not None:
            return
        import keras

        original = keras.Model.fit

        @functools.wraps(original)
        def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
            handle = current_trial()
            live = _LIVE.get(id(handle)) if handle is not None else None
            if handle is None or live is None:
                return original(self, *args, **kwargs)
            capture_model = live[1]
            handle.fits += 1
            call_args, call_kwargs = args, kwargs
            try:
                call_args, call_kwargs, bound = _with_logger(original, self, args, kwargs, handle)
                note_data(handle, bound)
            except Exception as error:
                warn(f"mlflow-hpo: could not add epoch logging to fit() ({error}); fit runs as is.")
            history = original(self, *call_args, **call_kwargs)
            if capture_model and not handle.model_explicit:
                handle.model = self
            return history

        _ORIGINAL = original
        keras.Model.fit = fit


@contextmanager
def weights_only() -> Iterator[None]:
    """Load a checkpoint or a saved model for its weights: Keras's note that the optimizer's
    saved state does not match the fresh optimizer (it is rebuilt on the next ``fit``) is
    expected then, and not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipping variable loading for optimizer")
        yield

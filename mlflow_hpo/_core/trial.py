"""One trial's run handle, and the context that makes it reachable from user code.

A :class:`TrialRun` is created before the user's objective starts. Its MLflow run is
created lazily, on first need: in non-blocking mode that is usually on the writer thread,
so the objective never waits for the store. The handle is published through a
:class:`contextvars.ContextVar`, which is what lets :class:`~mlflow_hpo.layers.LayerGuard`,
:func:`log_model` and the Keras ``fit`` hook find "the current trial" from backend-neutral
builder code, each thread seeing its own trial.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import fluent
from mlflow.tracking.fluent import ActiveRun

from mlflow_hpo.errors import MlflowHpoWarning


@dataclass
class TrialResult:
    """Everything a backend knows about a finished trial, in backend-neutral form.

    Attributes:
        state: One of ``names.STATE_*``.
        params: Typed hyperparameter values.
        distributions: JSON-able description of the search space of each param.
        values: Objective metric name -> value (empty unless COMPLETE).
        histories: Metric name -> ``[(step, value), ...]`` (e.g. ``trial.report``).
        tags: Extra tags (backend bookkeeping, user attributes).
        extra_params: Extra params that are not hyperparameters.
        start_ms / end_ms: Wall-clock times in ms since the epoch.
        error: Traceback text of a failed trial.
        error_class: Exception class name of a failed trial.
        pruned_step: Last reported step of a pruned trial.
    """

    state: str
    params: dict[str, Any] = field(default_factory=dict)
    distributions: dict[str, Any] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    histories: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)
    extra_params: dict[str, Any] = field(default_factory=dict)
    start_ms: int | None = None
    end_ms: int | None = None
    error: str | None = None
    error_class: str | None = None
    pruned_step: int | None = None


class TrialRun:
    """Handle on the child run of one trial; the run itself is created lazily.

    Args:
        key: Idempotency key, unique within the study (e.g. ``"17"``).
        number: The trial number shown to users.
        create: Callable ``(handle, tags)`` that creates (or finds) the MLflow run.
        start_ms: Trial start time.
    """

    def __init__(
        self,
        key: str,
        number: int,
        create: Callable[[TrialRun, dict[str, Any] | None], Run],
        start_ms: int,
    ) -> None:
        self.key = key
        self.number = number
        self.start_ms = start_ms
        self.output_exceptions: list[str] = []
        self.model: Any = None
        # Produces the model only if the policy keeps it (e.g. Keras Tuner's best checkpoint).
        self.model_loader: Callable[[], Any] | None = None
        self.model_explicit = False
        self.fits = 0  # Keras fit() calls so far: one per execution in Keras Tuner
        self._guarded_at_fit = -1
        self.finished = False
        self.already_logged = False  # found terminal in the store (resumed study)
        self.tags_written = False  # the run was created with the tags given to run()
        self._create = create
        self._run: Run | None = None
        self._error: Exception | None = None
        self._lock = threading.Lock()

    @property
    def created(self) -> bool:
        return self._run is not None

    def run(self, tags: dict[str, Any] | None = None) -> Run:
        """The MLflow run, created on first call (thread-safe, at most once).

        ``tags`` are written with the run if this call creates it; check :attr:`created`
        before the call to know whether they still need writing.
        """
        if self._run is None:
            with self._lock:
                if self._run is None:
                    if self._error is not None:
                        raise self._error  # the store refused already: fail fast, no retry
                    try:
                        self._run = self._create(self, tags)
                    except Exception as error:
                        self._error = error
                        raise
        return self._run

    @property
    def run_id(self) -> str:
        return self.run().info.run_id

    def add_output_exceptions(self, layer_names: list[str]) -> None:
        """Record layers the model builder had to skip (see ``LayerGuard``)."""
        self.output_exceptions.extend(str(n) for n in layer_names)

    def new_guard(self) -> None:
        """A ``LayerGuard`` starts: a build after a ``fit`` is a rebuild of the same trial
        (another execution), whose list replaces the previous build's instead of adding."""
        if self._guarded_at_fit != self.fits:
            self.output_exceptions.clear()
            self._guarded_at_fit = self.fits


_CURRENT: ContextVar[TrialRun | None] = ContextVar("mlflow_hpo_current_trial", default=None)


def current_trial() -> TrialRun | None:
    """The tracked trial running in this thread/context, or ``None``."""
    return _CURRENT.get()


class _LazyActiveRun(ActiveRun):
    """An ``ActiveRun`` whose run is created only if user code actually asks for it."""

    def __init__(self, handle: TrialRun) -> None:
        self._handle = handle

    @property
    def info(self) -> Any:
        return self._handle.run().info

    @property
    def data(self) -> Any:
        return self._handle.run().data

    @property
    def inputs(self) -> Any:
        return self._handle.run().inputs

    @property
    def outputs(self) -> Any:
        return self._handle.run().outputs


@contextmanager
def active_run_in_thread(run: ActiveRun) -> Iterator[None]:
    """Push ``run`` on MLflow's (thread-local) active-run stack for the block, then pop it.

    Done without ``mlflow.start_run``/``end_run``: those cost three store calls per trial
    and ``end_run`` would set a final status that only the tracker knows.
    """
    stack = fluent._active_run_stack.get()
    stack.append(run)
    try:
        yield
    finally:
        if run in stack:
            stack.remove(run)


@contextmanager
def activate(handle: TrialRun) -> Iterator[TrialRun]:
    """Make ``handle`` the current trial, and its run MLflow's active run, in this thread.

    MLflow keeps its active-run stack per thread, so with ``n_jobs>1`` each worker thread
    sees its own trial. The run itself is only created if user code asks for it.
    """
    token = _CURRENT.set(handle)
    try:
        with active_run_in_thread(_LazyActiveRun(handle)):
            yield handle
    finally:
        _CURRENT.reset(token)


def log_model(model: Any) -> None:
    """Hand the trained model of the current trial to mlflow-hpo.

    Works the same in every backend. The study's ``log_models`` policy then decides whether
    the model is logged (Keras models with the ``keras`` flavor, scikit-learn estimators with
    the ``sklearn`` flavor). Outside a tracked trial it only warns.

    Example:
        >>> import mlflow_hpo
        >>> def objective(trial):
        ...     model = build(trial); model.fit(x, y)
        ...     mlflow_hpo.log_model(model)
        ...     return model.evaluate(xv, yv)[1]
    """
    handle = current_trial()
    if handle is None:
        warnings.warn(
            "mlflow_hpo.log_model() was called outside a tracked trial, so the model was not "
            "logged. Call it inside an objective wrapped by a mlflow-hpo tracker.",
            MlflowHpoWarning,
            stacklevel=2,
        )
        return
    handle.model = model
    handle.model_explicit = True

"""One trial's run handle, and the context that makes it reachable from user code.

A :class:`TrialRun` exists before the user's objective starts. Its MLflow run is created
lazily, on first need (a live metric, ``mlflow.active_run()`` in the objective) or when the
trial ends, in the same journalled write as its tags. The handle is published through a
:class:`contextvars.ContextVar`, which is what lets :class:`~mlflow_hpo.layers.LayerGuard`,
:func:`log_model` and the Keras hooks find "the current trial" from backend-neutral builder
code, each thread seeing its own trial.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Run
from mlflow.tracking.fluent import ActiveRun

from mlflow_hpo._core import compat
from mlflow_hpo._core.safety import warn


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
        start_ms: Trial start time.
        ensure: ``ensure(handle)`` makes sure the run exists and returns it (the tracker).
    """

    def __init__(
        self, key: str, number: int, start_ms: int, ensure: Callable[[TrialRun], Run]
    ) -> None:
        self.key = key
        self.number = number
        self.start_ms = start_ms
        self.ref = f"trial:{key}"
        self.output_exceptions: list[str] = []
        self.params: dict[str, Any] = {}  # known when it started (for an interrupted end)
        self.model: Any = None
        # Produces the model only if the policy keeps it (e.g. Keras Tuner's best checkpoint).
        self.model_loader: Callable[[], Any] | None = None
        self.model_explicit = False
        self.input_example: Any = None  # a few rows of what the model was fit on
        self.datasets: list[tuple[Any, Any, str]] = []  # (features, targets, context)
        self.inputs_logged = False  # its dataset inputs are journalled (with its creation)
        self.fits = 0  # Keras fit() calls so far: one per execution in Keras Tuner
        self.live_steps: dict[str, int] = {}  # metric key -> last step logged while running
        self._guarded_at_fit = -1
        self.finished = False
        self.already_logged = False  # found terminal in the store (resumed study)
        self.created = False  # its create_run is journalled (with the tags known then)
        self.create_op: Any = None  # that entry, while this process waits for it
        self.run_obj: Run | None = None
        self._ensure = ensure
        self.lock = threading.Lock()
        # Set by the tracker: journal the upload of a local folder to this trial's run.
        self.upload_folder: Callable[[str], None] = _no_upload

    def run(self) -> Run:
        """The MLflow run, created now if it was not yet (waits for the store, bounded).

        Raises:
            MlflowHpoError: The store did not confirm the run in time; everything the trial
                logs is kept in the journal and written when the store is back.
        """
        if self.run_obj is None:
            self.run_obj = self._ensure(self)
        return self.run_obj

    @property
    def run_id(self) -> str:
        return str(self.run().info.run_id)

    def add_output_exceptions(self, layer_names: list[str]) -> None:
        """Record layers the model builder had to skip (see ``LayerGuard``)."""
        self.output_exceptions.extend(str(n) for n in layer_names)

    def new_guard(self) -> None:
        """A ``LayerGuard`` starts: a build after a ``fit`` is a rebuild of the same trial
        (another execution), whose list replaces the previous build's instead of adding."""
        if self._guarded_at_fit != self.fits:
            self.output_exceptions.clear()
            self._guarded_at_fit = self.fits


def _no_upload(folder: str) -> None:
    raise RuntimeError("this trial belongs to no tracker")


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
    """``run`` is MLflow's active run in this thread for the block (see ``compat``)."""
    compat.push_active_run(run)
    try:
        yield
    finally:
        compat.pop_active_run(run)


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


def log_model(model: Any, *, input_example: Any = None) -> None:
    """Hand the trained model of the current trial to mlflow-hpo.

    Works the same in every backend. The study's ``log_models`` policy then decides whether
    the model is logged (Keras models with the ``keras`` flavor, scikit-learn estimators with
    the ``sklearn`` flavor), with a signature inferred from ``input_example`` (a few rows of
    the model's input) or from the data a captured ``fit`` saw. Outside a tracked trial it
    only warns.

    Raises:
        ConfigurationError: ``model`` is neither a Keras model nor a scikit-learn estimator.

    Example:
        >>> import mlflow_hpo
        >>> def objective(trial):
        ...     model = build(trial); model.fit(x, y)
        ...     mlflow_hpo.log_model(model, input_example=x[:5])
        ...     return model.evaluate(xv, yv)[1]
    """
    from mlflow_hpo._core.models import flavor_for

    flavor_for(model)  # an unsupported type is a mistake to raise now, not to warn later
    handle = current_trial()
    if handle is None:
        warn(
            "mlflow_hpo.log_model() was called outside a tracked trial, so the model was not "
            "logged. Call it inside an objective wrapped by a mlflow-hpo tracker."
        )
        return
    handle.model = model
    handle.model_explicit = True
    if input_example is not None:
        handle.input_example = input_example

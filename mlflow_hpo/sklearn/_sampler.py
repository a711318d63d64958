"""``tracked_sampler``: the hand-written ``for params in ParameterSampler(...)`` loop, tracked.

The loop runs inside the tracker's scope::

    with tracked_sampler(sampler, objective="val_accuracy", direction="maximize") as study:
        for params, trial in study:
            ...

The loop body is the trial. A trial ends COMPLETE when the loop asks for the next sample, or
when the scope ends normally, however the loop stopped (exhausted, ``break``, ``islice``,
``zip``). When an exception leaves the scope, ``__exit__`` sees it: the trial it interrupted
ends FAILED with its traceback in ``error.txt`` (KILLED for Ctrl-C), the study run ends
FAILED (KILLED), and the exception propagates unchanged. Nothing reads interpreter internals
and no signal handler is replaced.

A bare ``for`` over a tracked sampler, without the ``with``, still works but cannot tell an
exception from a ``break``; it is deprecated, with a warning that shows the scope form.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any

from mlflow_hpo._backend import StudyHandle, new_tracker
from mlflow_hpo._core import batch, keras, names
from mlflow_hpo._core.tracker import StudyTracker
from mlflow_hpo._core.trial import TrialResult, activate
from mlflow_hpo._core.validate import name_string
from mlflow_hpo.errors import ConfigurationError
from mlflow_hpo.sklearn._sampler_trial import SamplerTrial

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from mlflow_hpo._core.options import TrackingOptions

_DIRECTIONS = ("maximize", "minimize")
SCOPE_FORM = (
    "with tracked_sampler(sampler, objective=..., direction=...) as study:\n"
    "    for params, trial in study:\n"
    "        ..."
)


class TrackedSampler(StudyHandle):
    """An iterable of ``(params, trial)``; each loop over it is one study (one study run).

    Use it as a context manager around the loop (see the module docstring).
    """

    def __init__(self, sampler: Any, tracker: StudyTracker, study_name: str) -> None:
        self.sampler = sampler
        self._study_tracker = tracker
        self.study_name = study_name
        self._scoped = False
        self._loop: _Loop | None = None

    def __enter__(self) -> TrackedSampler:
        self._scoped = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._scoped = False
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.end(exc)

    def __iter__(self) -> Iterator[tuple[dict[str, Any], SamplerTrial]]:
        if not self._scoped:
            warnings.warn(
                "Looping over tracked_sampler(...) without its with-block is deprecated: the "
                "loop cannot tell an exception in its body from a break, so a failed trial "
                f"would be recorded as complete. Write:\n{SCOPE_FORM}",
                FutureWarning,
                stacklevel=2,
            )
        if self._loop is not None:
            self._loop.end(None)  # a second loop in one scope is a new study
        loop = self._loop = _Loop(self)
        try:
            while (item := loop.next()) is not None:
                yield item
        except GeneratorExit:
            # The loop stopped pulling samples; inside the scope, __exit__ decides how the
            # current trial ends. Without a scope there is nothing better than "complete".
            if not self._scoped:
                loop.end(None)
            raise

    def __len__(self) -> int:
        return len(self.sampler)


class _Loop:
    def __init__(self, owner: TrackedSampler) -> None:
        self.owner = owner
        self.tracker = owner._study_tracker
        self.samples = iter(owner.sampler)
        self.number = 0
        self.current: tuple[SamplerTrial, ExitStack] | None = None
        self.closed = False

    def next(self) -> tuple[dict[str, Any], SamplerTrial] | None:
        """End the previous trial COMPLETE; start the next one (``None``: no more samples)."""
        if self.closed:
            return None
        self._end_trial(names.STATE_COMPLETE)
        try:
            params = next(self.samples)
        except StopIteration:
            self._close("FINISHED")
            return None
        if not isinstance(params, Mapping):
            self._close("FAILED")
            raise ConfigurationError(
                "sampler",
                "an iterable of dicts of hyperparameters (ParameterSampler, ParameterGrid)",
                f"an item of type {type(params).__name__}",
            )
        if self.number == 0:
            self.tracker.open(
                self.owner.study_name,
                directions=list(self.tracker.directions),
                objective_names=list(self.tracker.objective_names),
                tags={names.TAG_SK_SAMPLER: type(self.owner.sampler).__name__},
            )
        return dict(params), self._start(dict(params))

    def _start(self, params: dict[str, Any]) -> SamplerTrial:
        handle = self.tracker.trial(str(self.number), self.number, batch.now_ms())
        handle.params = dict(params)
        trial = SamplerTrial(self.tracker, handle, params)
        self.number += 1
        stack = ExitStack()
        keras.register(handle, self.tracker.log_live, self.tracker.policy.enabled)
        stack.callback(keras.unregister, handle)
        stack.enter_context(activate(handle))
        self.current = (trial, stack)
        return trial

    def _end_trial(self, state: str, error: BaseException | None = None) -> None:
        if self.current is None:
            return
        trial, stack = self.current
        self.current = None
        with contextlib.suppress(ValueError):  # ended from another thread or context
            stack.close()
        objective = self.tracker.objective_names[0]
        logged = {batch.key(k): v for k, v in trial.values.items()}
        values = {objective: logged[objective]} if objective in logged else {}
        result = TrialResult(
            state=state,
            params=trial.params,
            distributions=_space(self.owner.sampler),
            values=values if state == names.STATE_COMPLETE else {},
            histories={k: [(0, v)] for k, v in logged.items() if k not in values},
            start_ms=trial._handle.start_ms,
            end_ms=batch.now_ms(),
            error=batch.error_text(error) if error is not None else None,
            error_class=type(error).__name__ if error is not None else None,
        )
        with self.tracker.safety.guard(f"logging trial {trial.number}"):
            self.tracker.finish(trial._handle, result)

    def end(self, error: BaseException | None) -> None:
        """The scope ended: the current trial and the study end by how it ended."""
        if self.closed:
            return
        if error is None:
            self._end_trial(names.STATE_COMPLETE)
            self._close("FINISHED")
        elif isinstance(error, KeyboardInterrupt):
            self._end_trial(names.STATE_KILLED, error)
            self._close("KILLED")
        else:
            self._end_trial(names.STATE_FAIL, error)
            self._close("FAILED")

    def _close(self, status: str) -> None:
        if not self.closed:
            self.closed = True
            self.tracker.close(status)


def _space(sampler: Any) -> dict[str, Any]:
    for attribute in ("param_distributions", "param_grid"):
        space = getattr(sampler, attribute, None)
        if isinstance(space, Mapping):
            return {str(k): repr(v) for k, v in space.items()}
        if isinstance(space, list) and space and isinstance(space[0], Mapping):
            return {f"grid_{i}": repr(grid) for i, grid in enumerate(space)}
    return {}


def tracked_sampler(
    sampler: Any,
    *,
    objective: str,
    direction: str,
    study_name: str | None = None,
    **options: Unpack[TrackingOptions],
) -> TrackedSampler:
    """Track a hand-written loop over ``ParameterSampler``/``ParameterGrid``: one child run
    per sample under one study run per loop.

    Args:
        sampler: ``ParameterSampler``, ``ParameterGrid`` or any iterable of param dicts.
        objective: The metric that ranks trials: one that ``trial.log(...)`` records.
        direction: ``"maximize"`` or ``"minimize"`` the objective.
        study_name: The study run's name (default: the sampler's class name).
        **options: The shared tracking options (:class:`mlflow_hpo.TrackingOptions`).

    Raises:
        ConfigurationError: An argument is invalid (before any run is created).

    Example:
        >>> with tracked_sampler(ParameterSampler(dists, n_iter=20), objective="val_accuracy",
        ...                      direction="maximize", experiment_name="digits") as study:
        ...     for params, trial in study:
        ...         model = trial.build(get_model)          # (model, exceptions) or LayerGuard
        ...         model.fit(x, y, epochs=5)
        ...         trial.log(val_accuracy=model.evaluate(xv, yv)[1])
        ...         trial.log_model(model)
    """
    if isinstance(sampler, str | bytes | Mapping) or not hasattr(sampler, "__iter__"):
        raise ConfigurationError(
            "sampler",
            "an iterable of dicts of hyperparameters (ParameterSampler, ParameterGrid)",
            type(sampler).__name__,
            "Pass ParameterSampler(distributions, n_iter=...) or ParameterGrid(grid).",
        )
    if not isinstance(objective, str) or not objective:
        raise ConfigurationError(
            "objective",
            "the name of the metric that ranks trials (one trial.log(...) records)",
            objective,
            'Pass objective="val_accuracy" (or your metric) and direction=.',
        )
    if direction not in _DIRECTIONS:
        raise ConfigurationError(
            "direction", f"one of {_DIRECTIONS}", direction, "Say whether higher is better."
        )
    name_string("study_name", study_name)
    tracker = new_tracker(names.BACKEND_SKLEARN, options)
    tracker.directions = [direction]
    tracker.objective_names = [batch.key(objective)]
    if hasattr(sampler, "__len__"):
        tracker.progress.total = len(sampler)
    return TrackedSampler(sampler, tracker, study_name or type(sampler).__name__)

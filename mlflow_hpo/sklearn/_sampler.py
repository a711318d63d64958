"""``tracked_sampler``: the hand-written ``for params in ParameterSampler(...)`` loop, tracked.

The loop body is the trial. A trial ends COMPLETE when the loop asks for the next sample
(or runs out); a body that raises ends its trial FAILED (KILLED for Ctrl-C) and the
exception propagates unchanged. The iterator is a generator, so a ``for`` loop that stops
early closes it (``GeneratorExit``) at once. Python does not say why the loop stopped, so
the generator reads it off the frame that dropped it: a ``break`` or ``return`` pops the
iterator at a plain stack-pop instruction, an exception pops it while unwinding from the
instruction that raised.
"""

from __future__ import annotations

import contextlib
import dis
import linecache
import signal
import sys
import threading
import weakref
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from typing import Any

from mlflow_hpo import _batch, _keras, names
from mlflow_hpo._summary import StudySummary
from mlflow_hpo._tracker import StudyTracker
from mlflow_hpo._trial import TrialResult, activate
from mlflow_hpo.errors import ConfigurationError
from mlflow_hpo.sklearn._sampler_trial import SamplerTrial

# Instructions at which a for loop's iterator is dropped without an exception in flight.
_NORMAL_EXITS = frozenset(
    {"POP_TOP", "END_FOR", "POP_ITER", "RETURN_VALUE", "RETURN_CONST", "SWAP", "NOP"}
)
_DIRECTIONS = ("maximize", "minimize")


class TrackedSampler:
    """An iterable of ``(params, trial)``; each ``for`` over it is one study (one parent)."""

    def __init__(self, sampler: Any, tracker: StudyTracker, study_name: str, objective: str | None):
        self.sampler = sampler
        self.tracker = tracker
        self.study_name = study_name
        self.objective = objective

    def __iter__(self) -> Iterator[tuple[dict[str, Any], SamplerTrial]]:
        loop = _Loop(self)
        try:
            while (item := loop.next()) is not None:
                yield item
        except GeneratorExit:
            # The for loop dropped us mid-study: break, return, or an exception in the body.
            try:
                frame: Any = sys._getframe(1)
            except ValueError:  # closed with no Python caller (interpreter exit)
                frame = None
            loop.abandoned(frame)
            raise

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def parent_run_id(self) -> str | None:
        """The study run of the latest loop over this sampler."""
        return self.tracker.parent_run_id


class _Loop:
    def __init__(self, owner: TrackedSampler) -> None:
        self.owner = owner
        self.tracker = owner.tracker
        self.samples = iter(owner.sampler)
        self.number = 0
        self.current: tuple[SamplerTrial, ExitStack] | None = None
        self.done: list[tuple[int, str, dict[str, Any], dict[str, float]]] = []
        self.interrupted = False
        self.closed = False
        self._previous_sigint: Any = None

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
            self._open()
        return dict(params), self._start(dict(params))

    def _open(self) -> None:
        owner = self.owner
        self.tracker.open(
            owner.study_name,
            directions=list(self.tracker.policy.directions),
            objective_names=[owner.objective or "value"],
            tags={names.TAG_SK_SAMPLER: type(owner.sampler).__name__},
        )
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.getsignal(signal.SIGINT)
            if callable(self._previous_sigint):
                signal.signal(signal.SIGINT, _sigint_handler(self, self._previous_sigint))

    def _start(self, params: dict[str, Any]) -> SamplerTrial:
        handle = self.tracker.trial(str(self.number), self.number, _batch.now_ms())
        trial = SamplerTrial(self.tracker, handle, params)
        self.number += 1
        self.interrupted = False
        stack = ExitStack()
        with self.tracker.safety.guard("starting a trial"):
            _keras.install_fit_hook()
            _keras.register_live_logger(handle, self.tracker.log_live, self.tracker.policy.enabled)
            stack.callback(_keras.unregister_live_logger, handle)
        stack.enter_context(activate(handle))
        self.current = (trial, stack)
        return trial

    def _end_trial(self, state: str, error: str | None = None) -> None:
        if self.current is None:
            return
        trial, stack = self.current
        self.current = None
        # Dropped from another thread or context: there is nothing to reset there.
        with contextlib.suppress(ValueError):
            stack.close()
        handle = trial._handle
        with self.tracker.safety.guard(f"logging trial {trial.number}"):
            objective = self._objective(trial)
            values = (
                {objective: trial.values[objective]}
                if state == names.STATE_COMPLETE and objective in trial.values
                else {}
            )
            others = {k: [(0, v)] for k, v in trial.values.items() if k not in values}
            result = TrialResult(
                state=state,
                params=trial.params,
                distributions=_space(self.owner.sampler),
                values=values,
                histories=others,
                start_ms=handle.start_ms,
                end_ms=_batch.now_ms(),
                error=error,
            )
            self.done.append((trial.number, state, trial.params, values))
            self.tracker.finish(handle, result)

    def _objective(self, trial: SamplerTrial) -> str:
        """The objective; without one given, the first metric the first trial logged."""
        if self.owner.objective is None and trial.values:
            self.owner.objective = next(iter(trial.values))
            self.tracker.objective_names = [self.owner.objective]
            if self.tracker.parent_run_id is not None:
                self.tracker.client.set_tag(
                    self.tracker.parent_run_id, names.TAG_OBJECTIVES, self.owner.objective
                )
        return self.owner.objective or "value"

    def _close(self, status: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
        with self.tracker.safety.guard("writing the study summary"):
            if self.tracker.active:
                self.tracker.summarize(self._summary())
        self.tracker.close(status)

    def _summary(self) -> StudySummary:
        counts: dict[str, int] = {}
        for _, state, _, _ in self.done:
            counts[state] = counts.get(state, 0) + 1
        scored = [d for d in self.done if d[3]]
        summary = StudySummary(counts=counts)
        if scored:
            sign = -1.0 if self.tracker.policy.directions[0] == "minimize" else 1.0
            number, _, params, values = max(scored, key=lambda d: sign * next(iter(d[3].values())))
            summary.best_key, summary.best_number = str(number), number
            summary.best_values, summary.best_params = values, params
        rows = list(self.done)

        def table(run_ids: dict[str, str]) -> str:
            import csv
            import io

            keys = sorted({k for _, _, p, _ in rows for k in p})
            out = io.StringIO()
            writer = csv.writer(out)
            writer.writerow(["number", "state", "run_id", "value", *keys])
            for number, state, params, values in rows:
                value = next(iter(values.values()), "")
                writer.writerow(
                    [number, state, run_ids.get(str(number), ""), value]
                    + [params.get(k, "") for k in keys]
                )
            return out.getvalue()

        summary.trials_table = table
        return summary

    def abandoned(self, frame: Any) -> None:
        """The loop stopped pulling samples; ``frame`` is the one that dropped it."""
        if self.closed:
            return
        if self.current is None:  # abandoned between trials: the study simply stops
            self._close("FINISHED")
            return
        if self.interrupted:
            self._end_trial(names.STATE_KILLED)
            self._close("KILLED")
        elif frame is not None and _unwinding(frame):
            self._end_trial(names.STATE_FAIL, _where(frame))
            self._close("FAILED")
        else:  # break or return: the body of this trial ran to its end
            self._end_trial(names.STATE_COMPLETE)
            self._close("FINISHED")


def _sigint_handler(loop: _Loop, previous: Any) -> Any:
    """Note Ctrl-C on the loop, then do what was done before (raise KeyboardInterrupt).

    Holds the loop weakly: nothing of ours may keep a loop the ``for`` has dropped alive.
    """
    ref = weakref.ref(loop)

    def handler(signum: int, frame: Any) -> Any:
        alive = ref()
        if alive is not None:
            alive.interrupted = True
        return previous(signum, frame)

    return handler


def _where(frame: Any) -> str:
    """What we can say of an exception we never see: where the loop body raised it."""
    code = frame.f_code
    line = linecache.getline(code.co_filename, frame.f_lineno).strip()
    return (
        f"The loop body raised an exception at {code.co_filename}, line {frame.f_lineno}, in "
        f"{code.co_name}:\n    {line}\nIt propagated unchanged to the caller, whose "
        "traceback shows it (Python does not hand it to the loop's iterator).\n"
    )


def _unwinding(frame: Any) -> bool:
    """Whether ``frame`` dropped the loop while unwinding from an exception."""
    try:
        return dis.opname[frame.f_code.co_code[frame.f_lasti]] not in _NORMAL_EXITS
    except (AttributeError, IndexError):
        return False


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
    experiment_name: str | None = None,
    tracking_uri: str | None = None,
    objective: str | None = None,
    direction: str = "maximize",
    log_models: str | int = "best",
    synchronous: bool = True,
    strict: bool | None = None,
    verbose: int = 1,
    reports: bool | None = None,
    study_name: str | None = None,
) -> TrackedSampler:
    """Track a hand-written loop over ``ParameterSampler``/``ParameterGrid``: one child run
    per sample under one parent run per loop.

    Args:
        sampler: ``ParameterSampler``, ``ParameterGrid`` or any iterable of param dicts.
        objective: The metric that ranks trials; default: the first metric the first trial
            logs with ``trial.log(...)``.
        direction: ``"maximize"`` or ``"minimize"`` the objective.
        experiment_name / tracking_uri / log_models / synchronous / strict / verbose /
            reports: As for the other backends.
        study_name: The parent run's name (default: the sampler's class name).

    Raises:
        ConfigurationError: An argument is invalid (before any run is created).

    Example:
        >>> for params, trial in tracked_sampler(ParameterSampler(dists, n_iter=20),
        ...                                      experiment_name="digits"):
        ...     model = trial.build(get_model)          # (model, exceptions) or LayerGuard
        ...     model.fit(x, y, epochs=5)
        ...     trial.log(val_accuracy=model.evaluate(xv, yv)[1])
        ...     trial.log_model(model)
    """
    if isinstance(sampler, str | bytes | Mapping) or not hasattr(sampler, "__iter__"):
        raise ConfigurationError(
            "sampler",
            "an iterable of dicts of hyperparameters (ParameterSampler, ParameterGrid)",
            type(sampler).__name__,
            "Pass ParameterSampler(distributions, n_iter=...) or ParameterGrid(grid).",
        )
    if direction not in _DIRECTIONS:
        raise ConfigurationError("direction", f"one of {_DIRECTIONS}", direction)
    if objective is not None and (not isinstance(objective, str) or not objective):
        raise ConfigurationError("objective", "None or a metric name", objective)
    if study_name is not None and (not isinstance(study_name, str) or not study_name):
        raise ConfigurationError("study_name", "None or a non-empty string", study_name)
    tracker = StudyTracker(
        "sklearn",
        experiment_name=experiment_name,
        tracking_uri=tracking_uri,
        log_models=log_models,
        synchronous=synchronous,
        strict=strict,
        verbose=verbose,
        reports=reports,
    )
    tracker.policy.directions = [direction]
    if hasattr(sampler, "__len__"):
        tracker.progress.total = len(sampler)
    return TrackedSampler(sampler, tracker, study_name or type(sampler).__name__, objective)

"""What every backend shares: making its tracker, and the study handle it exposes.

Each tracked object (Optuna callback, Keras Tuner tuner, tracked search, tracked sampler,
Hyperopt trials, Ray Tune callback) exposes the same study handle: ``study_run_id``,
``warning_count``, ``flush()`` and ``close()``.
"""

from __future__ import annotations

from typing import Any

from mlflow_hpo._core.options import Options, TrackingOptions
from mlflow_hpo._core.tracker import StudyTracker


def new_tracker(
    backend: str, options: TrackingOptions | dict[str, Any], **kwargs: Any
) -> StudyTracker:
    """The core tracker of a backend, with the study's reports attached if they are on.

    Raises:
        ConfigurationError: An option is invalid.
    """
    checked = Options.of(options)
    hooks = []
    if checked.reports is not None:
        from mlflow_hpo.reports import ReportHook

        hooks.append(ReportHook(checked.reports, checked.report_interval))
    kwargs.setdefault("capture_fit", checked.capture_fit)
    return StudyTracker(backend, checked, hooks=hooks, **kwargs)


def exit_status(exc_type: type[BaseException] | None) -> str:
    """The study run's status when a scope ends with ``exc_type`` (``None``: normally)."""
    if exc_type is None:
        return "FINISHED"
    return "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"


def status_at_exit(interrupted: bool = False) -> str:
    """The study run's status at interpreter exit: how the program ended (Python sets
    ``sys.last_type`` for an uncaught exception before ``atexit`` handlers run)."""
    import sys

    if interrupted:
        return "KILLED"
    last = getattr(sys, "last_type", None)
    return "FINISHED" if last is None or issubclass(last, SystemExit) else exit_status(last)


class StudyHandle:
    """The study handle of a tracked object.

    Attributes:
        study_run_id: The study (parent) run's id, once the study has started.
        warning_count: How many logging steps failed so far (each was a warning).
    """

    _study_tracker: StudyTracker

    @property
    def study_run_id(self) -> str | None:
        return self._study_tracker.wait_study_run()

    @property
    def warning_count(self) -> int:
        return self._study_tracker.safety.warning_count

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything logged so far is in the store, and the study's reports
        being drawn are written; ``False`` if ``timeout`` (seconds) passed first."""
        done = self._study_tracker.flush(timeout)
        for hook in self._study_tracker.hooks:
            hook.wait(timeout)
        return done

    def close(self, status: str = "FINISHED") -> None:
        """Write the study's summary and end its run with ``status`` (idempotent)."""
        self._study_tracker.close(status)

    # Names used before the handle was shared by every backend.
    @property
    def parent_run_id(self) -> str | None:
        return self.study_run_id

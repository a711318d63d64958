"""The safety contract: our logging errors become warnings, the user's errors propagate.

Modelled on ``mlflow.utils.autologging_utils.safety``: every store call that mlflow-hpo makes
on the user's behalf runs inside :meth:`Safety.guard`. An ``Exception`` raised there is turned
into an :class:`~mlflow_hpo.errors.MlflowHpoWarning` and counted, so the parent run can show
how many logging steps failed. ``KeyboardInterrupt`` and ``SystemExit`` are never swallowed.
Strict mode (``MLFLOW_HPO_STRICT=1`` or ``strict=True``) re-raises instead, for tests.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow_hpo import names
from mlflow_hpo.errors import MlflowHpoWarning

_logger = logging.getLogger("mlflow_hpo")


def strict_default() -> bool:
    """Return the strict-mode default taken from ``MLFLOW_HPO_STRICT``."""
    return os.environ.get(names.ENV_STRICT, "").strip().lower() in {"1", "true", "yes", "on"}


class Safety:
    """Counts and reports failures of mlflow-hpo's own logging code.

    Args:
        strict: Re-raise logging errors instead of warning. ``None`` reads
            ``MLFLOW_HPO_STRICT``.
    """

    def __init__(self, strict: bool | None = None) -> None:
        self.strict = strict_default() if strict is None else bool(strict)
        self._count = 0
        self._lock = threading.Lock()

    @property
    def warning_count(self) -> int:
        """How many logging steps failed so far."""
        return self._count

    def report(self, what: str, error: BaseException) -> None:
        """Record a failed logging step as a warning (or raise it in strict mode)."""
        with self._lock:
            self._count += 1
        if self.strict:
            raise error
        message = (
            f"mlflow-hpo: {what} failed ({type(error).__name__}: {error}); the search goes on."
        )
        _logger.debug(message, exc_info=error)
        warnings.warn(message, MlflowHpoWarning, stacklevel=3)

    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Run a block of our own logging code; a failure in it becomes a warning."""
        try:
            yield
        except Exception as error:
            self.report(what, error)

"""The safety contract: our logging errors become warnings, the user's errors propagate.

Modelled on ``mlflow.utils.autologging_utils.safety``: every step mlflow-hpo takes on the
user's behalf runs inside :meth:`Safety.guard`. An ``Exception`` raised there becomes an
:class:`~mlflow_hpo.errors.MlflowHpoWarning` and is counted, so the study run can show how
many logging steps failed. ``KeyboardInterrupt`` and ``SystemExit`` are never swallowed, and
neither is a :class:`~mlflow_hpo.errors.ConfigurationError`: a configuration mistake raises
in every mode. Strict mode (``strict=True``, default ``MLFLOW_HPO_STRICT``) re-raises the
rest too, for tests that assert it.

Store writes do not go through the guard: they are journalled and retried (see
``journal``); a failed write is counted here once, and reported once per outage.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mlflow_hpo._core import compat, names
from mlflow_hpo._core.secrets import redact
from mlflow_hpo.errors import ConfigurationError, MlflowHpoWarning

_logger = logging.getLogger("mlflow_hpo")
_TRANSIENT_CODES = frozenset(
    {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "ENDPOINT_NOT_FOUND"}
)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def strict_default() -> bool:
    """The strict-mode default taken from ``MLFLOW_HPO_STRICT``.

    Raises:
        ConfigurationError: The variable holds something that is not a yes or a no.
    """
    raw = os.environ.get(names.ENV_STRICT, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigurationError(
        names.ENV_STRICT, "1/true/yes/on or 0/false/no/off", raw, "Unset it or use 1 or 0."
    )


def warn(message: str) -> None:
    """Warn with ``message`` (redacted), pointing at the user's line."""
    warnings.warn(redact(message), MlflowHpoWarning, stacklevel=compat.user_stacklevel())


class Safety:
    """Counts and reports failures of mlflow-hpo's own logging code.

    Args:
        strict: Re-raise logging errors instead of warning. ``None`` reads
            ``MLFLOW_HPO_STRICT``.

    Raises:
        ConfigurationError: ``strict`` is not ``None``, ``True`` or ``False``.
    """

    def __init__(self, strict: Any = None) -> None:
        if strict is None:
            strict = strict_default()
        if not isinstance(strict, bool):
            raise ConfigurationError(
                "strict", "None, True or False", strict, "Pass a bool, not a string."
            )
        self.strict = strict
        self._count = 0
        self._lock = threading.Lock()

    @property
    def warning_count(self) -> int:
        """How many logging steps failed so far."""
        return self._count

    def count(self, n: int = 1) -> None:
        """Count failed steps that are reported elsewhere (a journalled store write)."""
        with self._lock:
            self._count += n

    def report(self, what: str, error: BaseException) -> None:
        """Record a failed logging step as a warning (or raise it in strict mode)."""
        if isinstance(error, ConfigurationError):
            raise error
        self.count()
        if self.strict:
            raise error
        message = (
            f"mlflow-hpo: {what} failed ({type(error).__name__}: {error}); the search goes on."
        )
        _logger.debug(redact(message), exc_info=error)
        warn(message)

    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Run a block of our own logging code; a failure in it becomes a warning."""
        try:
            yield
        except Exception as error:
            self.report(what, error)


def transient(error: BaseException) -> bool:
    """Whether retrying a store write that raised ``error`` may succeed (the store was
    unreachable, busy, restarting), as opposed to a refusal of the data."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        return str(error.error_code) in _TRANSIENT_CODES
    if isinstance(error, OSError | TimeoutError):
        return True
    module = type(error).__module__
    return module.startswith(("requests", "urllib3", "sqlalchemy", "sqlite3"))

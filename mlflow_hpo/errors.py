"""The small, documented error hierarchy of mlflow-hpo.

* :class:`MlflowHpoError` is the base of everything we raise on purpose.
* :class:`ConfigurationError` (also a ``ValueError``) is raised when an argument is wrong:
  by constructors, before any run exists, or at the latest when the first trial shows the
  mistake (a study that does not match the tracker). Its message says what was expected,
  what was received and how to fix it. It is raised in every mode, never turned into a
  warning.
* :class:`MissingExtraError` (also an ``ImportError``) names the extra to install.
* :class:`MlflowHpoWarning` is the category of every warning that reports a logging step that
  failed, so ``warnings.filterwarnings("error", category=MlflowHpoWarning)`` turns them into
  errors.

Messages never show credentials: a URI's ``user:password@`` and the values of
``MLFLOW_TRACKING_PASSWORD`` / ``MLFLOW_TRACKING_TOKEN`` are masked.
"""

from __future__ import annotations

from typing import Any


class MlflowHpoError(Exception):
    """Base class of the errors mlflow-hpo raises on purpose."""


class ConfigurationError(MlflowHpoError, ValueError):
    """An argument has the wrong type or value; nothing the user logged is lost."""

    def __init__(self, argument: str, expected: str, received: Any, fix: str = "") -> None:
        from mlflow_hpo._core.secrets import redact

        self.argument = argument
        message = f"Invalid {argument}: expected {expected}. Received {received!r}."
        if fix:
            message += f" {fix}"
        super().__init__(redact(message))


class MissingExtraError(MlflowHpoError, ImportError):
    """An optional dependency is missing; the message names the extra that provides it."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"mlflow-hpo needs '{package}' for this feature, but it is not installed. "
            f'Install it with: pip install "mlflow-hpo[{extra}]"'
        )


class MlflowHpoWarning(UserWarning):
    """A logging step failed; the user's search went on unharmed."""

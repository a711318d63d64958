"""Argument checks shared by every tracker constructor.

Each raises :class:`~mlflow_hpo.errors.ConfigurationError` before any run exists, with a
message that says what was expected, what was received and how to fix it.
"""

from __future__ import annotations

import os
from typing import Any

from mlflow.utils import validation

from mlflow_hpo.errors import ConfigurationError


def validate_tracking_uri(tracking_uri: Any) -> str | None:
    """Check ``tracking_uri``; plain paths and ``file:`` need MLflow's explicit opt-in."""
    if tracking_uri is None:
        return None
    if not isinstance(tracking_uri, str) or not tracking_uri.strip():
        raise ConfigurationError(
            "tracking_uri", "None or a URI string such as 'sqlite:///mlflow.db'", tracking_uri
        )
    is_file = tracking_uri.startswith("file:") or "://" not in tracking_uri
    allowed = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in {"1", "true"}
    if is_file and not tracking_uri.startswith("databricks") and not allowed:
        raise ConfigurationError(
            "tracking_uri",
            "a database or server URI (MLflow 3.13+ refuses the file store)",
            tracking_uri,
            "Use 'sqlite:///mlflow.db', an http:// tracking server, or set "
            "MLFLOW_ALLOW_FILE_STORE=true to keep a file store.",
        )
    return tracking_uri


def validate_experiment_name(experiment_name: Any) -> str | None:
    if experiment_name is None:
        return None
    limit = validation.MAX_EXPERIMENT_NAME_LENGTH
    if (
        not isinstance(experiment_name, str)
        or not experiment_name.strip()
        or len(experiment_name) > limit
    ):
        raise ConfigurationError(
            "experiment_name",
            f"None or a non-empty string of at most {limit} characters",
            experiment_name,
        )
    return experiment_name


def validate_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(name, "True or False", value)
    return value

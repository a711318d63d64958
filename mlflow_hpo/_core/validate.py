"""Argument checks shared by every tracker.

Each raises :class:`~mlflow_hpo.errors.ConfigurationError` before any run exists, with a
message that says what was expected, what was received and how to fix it.
"""

from __future__ import annotations

import math
import os
from typing import Any
from urllib.parse import urlsplit

from mlflow.utils import validation

from mlflow_hpo.errors import ConfigurationError

_NEEDS_HOST = ("http", "https")


def tracking_uri(uri: Any) -> str | None:
    """Check ``uri``: a parsable store URI; plain paths and ``file:`` need MLflow's opt-in."""
    if uri is None:
        return None
    example = "None or a URI such as 'sqlite:///mlflow.db' or 'http://127.0.0.1:5000'"
    if not isinstance(uri, str) or not uri.strip() or uri != uri.strip():
        raise ConfigurationError("tracking_uri", example, uri)
    if uri.startswith("databricks"):
        return uri
    is_file = uri.startswith("file:") or "://" not in uri
    allowed = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in {"1", "true"}
    if is_file:
        if allowed:
            return uri
        raise ConfigurationError(
            "tracking_uri",
            "a database or server URI (MLflow 3.13+ refuses the file store)",
            uri,
            "Use 'sqlite:///mlflow.db', an http:// tracking server, or set "
            "MLFLOW_ALLOW_FILE_STORE=true to keep a file store.",
        )
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as error:
        fix = f"It does not parse: {error}."
        raise ConfigurationError("tracking_uri", example, uri, fix) from error
    scheme = parts.scheme.lower()
    if scheme in _NEEDS_HOST and not parts.hostname:
        raise ConfigurationError(
            "tracking_uri",
            f"a {scheme}:// URI with a host name, such as '{scheme}://127.0.0.1:5000'",
            uri,
            "Add the server's host.",
        )
    if port is not None and not 0 < port < 65536:
        raise ConfigurationError("tracking_uri", "a port between 1 and 65535", uri)
    if scheme == "sqlite" and not uri.startswith("sqlite:///"):
        raise ConfigurationError(
            "tracking_uri", "a SQLite URI of the form 'sqlite:///path/to/mlflow.db'", uri
        )
    return uri


def experiment_name(name: Any) -> str | None:
    if name is None:
        return None
    limit = validation.MAX_EXPERIMENT_NAME_LENGTH
    if not isinstance(name, str) or not name.strip() or len(name) > limit:
        raise ConfigurationError(
            "experiment_name",
            f"None or a non-empty string of at most {limit} characters",
            name,
        )
    return name


def flag(name: str, value: Any) -> bool:
    """A yes/no argument: a real ``bool`` only (``bool("false")`` is ``True``)."""
    if not isinstance(value, bool):
        raise ConfigurationError(name, "True or False", value, "Pass a bool, not a string.")
    return value


def seconds(name: str, value: Any, *, allow_zero: bool = True) -> float:
    """A finite, non-negative duration in seconds."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        lowest = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(name, f"a finite number of seconds {lowest}", value)
    return float(value)


def positive_int(name: str, value: Any, *, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        expected = "None or a positive int" if allow_none else "a positive int"
        raise ConfigurationError(name, expected, value)
    return value


def name_string(name: str, value: Any, *, allow_none: bool = True) -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(name, "a non-empty string", value)
    return value

"""Turn Python values into MLflow entities that respect MLflow's own limits.

Limits come from :mod:`mlflow.utils.validation`, never hard-coded, so a future MLflow that
raises a limit is followed automatically. A value that is cut keeps a visible marker so a
user reading the UI knows it is not the whole value; the full typed values always go into
``hyperparameters.json`` as well.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import time
import traceback
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.utils import validation

TRUNCATION_MARKER = "...[truncated]"  # values: any character is allowed there
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- ]")


def truncate(value: str, limit: int) -> str:
    """Cut ``value`` to ``limit`` characters, ending with :data:`TRUNCATION_MARKER`."""
    if len(value) <= limit:
        return value
    return value[: max(limit - len(TRUNCATION_MARKER), 0)] + TRUNCATION_MARKER


def key(name: str) -> str:
    """A key MLflow accepts: bad characters become ``_`` (``lr(adam)`` -> ``lr_adam_``).

    Optuna and Keras Tuner allow any string as a name; MLflow does not. The original names
    are kept in the typed hyperparameter record. A key over MLflow's length limit keeps its
    start and ends in ``...`` plus a digest of the whole name, so two long names that share
    their start stay two keys (MLflow refuses ``[`` and ``]`` in keys, so the value marker
    cannot be used here).
    """
    return _key(str(name))


@functools.lru_cache(maxsize=8192)  # the same few names, every trial
def _key(name: str) -> str:
    text = name
    if not validation.validate_param_and_metric_name(text):
        text = _BAD_KEY_CHARS.sub("_", text)
    if validation.path_not_unique(text):
        text = text.replace("/", "_").replace("..", "__").lstrip(".") or "_"
    limit = validation.MAX_ENTITY_KEY_LENGTH
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{text[: limit - 13]}...{digest}"


def as_text(value: Any) -> str:
    """The string MLflow will show for a param or tag value."""
    if isinstance(value, str):
        return value
    if isinstance(value, float | int | bool) or value is None:
        return str(value)
    try:
        return json.dumps(value, default=str, sort_keys=True)
    except (TypeError, ValueError):
        return str(value)


def params(values: Mapping[str, Any]) -> list[Param]:
    """MLflow params, values truncated to ``MAX_PARAM_VAL_LENGTH``."""
    limit = validation.MAX_PARAM_VAL_LENGTH
    return [Param(key(k), truncate(as_text(v), limit)) for k, v in values.items()]


def tags(values: Mapping[str, Any]) -> list[RunTag]:
    """MLflow tags, values truncated to ``MAX_TAG_VAL_LENGTH``."""
    limit = validation.MAX_TAG_VAL_LENGTH
    return [RunTag(key(k), truncate(as_text(v), limit)) for k, v in values.items()]


def tag_dict(values: Mapping[str, Any]) -> dict[str, str]:
    """Like :func:`tags` but as the ``dict`` that ``create_run`` takes."""
    return {t.key: t.value for t in tags(values)}


def now_ms() -> int:
    return int(time.time() * 1000)


def metric(name: str, value: float, step: int = 0, timestamp: int | None = None) -> Metric:
    """One metric point; ``None``/non-numeric values raise ``TypeError`` early."""
    number = float(value)
    return Metric(key(name), number, timestamp if timestamp is not None else now_ms(), int(step))


def metrics(values: Mapping[str, Any], step: int = 0, timestamp: int | None = None) -> list[Metric]:
    """Metric points for every numeric, finite-or-nan value; others are skipped."""
    stamp = timestamp if timestamp is not None else now_ms()
    out = []
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
        out.append(metric(name, value, step, stamp))
    return out


def history(name: str, points: Iterable[tuple[int, float]]) -> list[Metric]:
    """A metric history from ``(step, value)`` pairs."""
    stamp = now_ms()
    return [metric(name, value, step, stamp) for step, value in points]


def error_text(error: BaseException) -> str:
    """The traceback of ``error`` as ``error.txt`` shows it."""
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def error_class(traceback_text: str) -> str | None:
    """The exception class named on the last line of a formatted traceback."""
    lines = traceback_text.strip().splitlines()
    head = lines[-1].split(":", 1)[0].strip() if lines else ""
    if not head or not head.replace(".", "_").isidentifier():
        return None
    return head.rsplit(".", 1)[-1]


def as_json(payload: Any) -> str:
    """``payload`` as compact JSON; values JSON cannot hold are shown as text."""
    return json.dumps(payload, default=as_text, separators=(",", ":"))


def fits_in_tag(text: str) -> bool:
    return len(text) <= validation.MAX_TAG_VAL_LENGTH


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()

"""The tracking options every hook shares: one typed, documented, validated set.

Each public hook (``MlflowStudyCallback``, the Keras Tuner tuners, ``track_search``,
``tracked_sampler``, ``MlflowTrials``, ``MlflowTuneCallback``) takes these as keyword
arguments, typed by :class:`TrackingOptions`, and hands them to the core, which checks them
all here before anything is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from mlflow_hpo._core import names, validate
from mlflow_hpo.errors import ConfigurationError

LogModels = Literal["best", "all", "none"] | int
ReportMode = Literal["html", "png", "cdn"]
_MODES = ("best", "all", "none")
_REPORT_MODES = ("html", "png", "cdn")


class WriteOptions(TypedDict, total=False):
    """How a tracker writes: the options after ``experiment_name``, ``tracking_uri`` and
    ``log_models`` (which some hooks take by position too).

    Attributes:
        synchronous: ``True`` (default) writes each trial before the search goes on (never
            for longer than a few seconds: a slow or dead store is left to the journal);
            ``False`` writes in the background.
        strict: Raise logging errors instead of warning (default ``MLFLOW_HPO_STRICT``).
            Configuration mistakes raise in every mode.
        verbose: ``0`` hides the progress line (shown only on a terminal anyway).
        reports: Study charts on the study run: ``True``/``"html"`` (one interactive page
            and the PNGs), ``"png"`` (PNGs only), ``"cdn"`` (the page loads plotly.js from its
            CDN), ``False`` (none). Default: ``MLFLOW_HPO_REPORTS``, else ``"html"``.
        report_interval: Seconds between live report refreshes while a study runs (default
            60; ``0`` refreshes only when the study closes).
        close_timeout: Seconds ``close()`` waits for the journal to drain (default 30).
            What is still waiting then is written by ``mlflow-hpo sync``.
        capture_fit: ``True`` (default) captures Keras ``fit`` inside a trial (its epochs,
            its data, its model) by wrapping ``keras.Model.fit`` while the tracker is open
            (Keras's own ``fit`` is put back when it closes). ``False`` leaves ``fit`` alone:
            pass ``mlflow_hpo.keras.callback()`` to ``fit`` to log its epochs instead.
    """

    synchronous: bool
    strict: bool | None
    verbose: int
    reports: bool | ReportMode
    report_interval: float
    close_timeout: float
    capture_fit: bool


class TrackingOptions(WriteOptions, total=False):
    """Keyword arguments shared by every tracker (see :class:`WriteOptions` for the rest).

    Attributes:
        experiment_name: MLflow experiment. ``None``: MLflow's active experiment, else one
            named after the study.
        tracking_uri: Store to write to; ``None`` keeps MLflow's configured URI.
        log_models: ``"best"`` (default: each trial that improves on every earlier one),
            ``"all"``, ``"none"``, or an int k (the top k; models that drop out are deleted).
    """

    experiment_name: str | None
    tracking_uri: str | None
    log_models: LogModels


def validate_policy(log_models: Any) -> str | int:
    """Return a checked ``log_models`` value or raise :class:`ConfigurationError`."""
    if isinstance(log_models, str) and log_models in _MODES:
        return log_models
    if isinstance(log_models, int) and not isinstance(log_models, bool) and log_models >= 1:
        return log_models
    raise ConfigurationError(
        "log_models",
        'one of "best", "all", "none" or a positive int k (keep the top k)',
        log_models,
        'Use log_models="none" to log no weights at all.',
    )


def _reports(value: Any) -> ReportMode | None:
    if value is True:
        return "html"
    if value is False:
        return None
    if isinstance(value, str) and value in _REPORT_MODES:
        return value  # type: ignore[return-value]
    raise ConfigurationError(
        "reports", f"True, False or one of {_REPORT_MODES}", value, "reports=False turns them off."
    )


def reports_default() -> ReportMode | None:
    """``MLFLOW_HPO_REPORTS`` (``0``/``1``/``html``/``png``/``cdn``): the default only."""
    raw = os.environ.get(names.ENV_REPORTS, "1").strip().lower()
    if raw in ("0", "false", "no", "off"):
        return None
    if raw in ("", "1", "true", "yes", "on"):
        return "html"
    return _reports(raw)


def _verbose(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError("verbose", "an int >= 0 (0: no progress line)", value)
    return value


@dataclass(frozen=True)
class Options:
    """:class:`TrackingOptions`, checked and with their defaults filled in."""

    experiment_name: str | None = None
    tracking_uri: str | None = None
    log_models: str | int = "best"
    synchronous: bool = True
    strict: bool | None = None
    verbose: int = 1
    reports: ReportMode | None = "html"
    report_interval: float = 60.0
    close_timeout: float = 30.0
    capture_fit: bool = True

    @classmethod
    def of(cls, options: dict[str, Any] | TrackingOptions) -> Options:
        """Check every option; unknown names are refused with the list of known ones.

        Raises:
            ConfigurationError: An option is unknown or has a wrong value.
        """
        given = dict(options)
        unknown = sorted(set(given) - set(TrackingOptions.__annotations__))
        if unknown:
            raise ConfigurationError(
                "option",
                f"one of {sorted(TrackingOptions.__annotations__)}",
                unknown[0],
                "Check the spelling of the keyword argument.",
            )
        strict = given.get("strict")
        if strict is not None:
            validate.flag("strict", strict)
        return cls(
            experiment_name=validate.experiment_name(given.get("experiment_name")),
            tracking_uri=validate.tracking_uri(given.get("tracking_uri")),
            log_models=validate_policy(given.get("log_models", "best")),
            synchronous=validate.flag("synchronous", given.get("synchronous", True)),
            strict=strict,
            verbose=_verbose(given.get("verbose", 1)),
            reports=_reports(given["reports"]) if "reports" in given else reports_default(),
            report_interval=validate.seconds("report_interval", given.get("report_interval", 60.0)),
            close_timeout=validate.seconds("close_timeout", given.get("close_timeout", 30.0)),
            capture_fit=validate.flag("capture_fit", given.get("capture_fit", True)),
        )

"""Study reports on the parent run: where the search went and what mattered.

The trials are read back from MLflow, whichever backend wrote them, and turned into an
in-memory Optuna study, so Optuna's own ``optuna.visualization`` draws every chart and
``optuna.importance`` ranks the hyperparameters, for Keras Tuner and scikit-learn studies
too. Each chart is written to the study run's ``reports/`` folder twice: as HTML (plotly,
interactive in the MLflow UI's artifact viewer, with plotly.js embedded so it works offline)
and as PNG (Optuna's matplotlib twin of the same chart).

Written when a study closes (``MLFLOW_HPO_REPORTS=0`` turns that off), and on demand with
``mlflow-hpo report STUDY`` or :func:`write_reports`.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run

from mlflow_hpo._core import names
from mlflow_hpo._core import parent as parent_module
from mlflow_hpo._core.study import study_objective
from mlflow_hpo._rebuild import trial_record
from mlflow_hpo.errors import MissingExtraError

REPORTS = (
    "optimization_history",
    "param_importances",
    "parallel_coordinate",
    "intermediate_values",
    "output_exceptions",
)
_EXTRA_PARAMS = {names.PARAM_TRIAL_NUMBER, "iter", "n_resources"}
# Per-step histories, by backend: Optuna's reports, Keras epochs of the objective, CV folds.
_STEP_METRICS = (names.METRIC_INTERMEDIATE, names.METRIC_EPOCH_PREFIX + "{o}", "test_{o}")
_STATES = {"COMPLETE": "COMPLETE", "PRUNED": "PRUNED", "FAIL": "FAIL", "KILLED": "FAIL"}


class ReportHook:
    """Follows a study and writes its reports to the study run when it closes."""

    def __init__(self, mode: str, interval: float) -> None:
        self.mode = mode
        self.interval = interval

    def on_trial(self, session: Any) -> None:
        return None

    def on_close(self, session: Any, timeout: float) -> None:
        run_id = session.study_run_id
        if run_id is not None:
            write_for_run(session.client, session.client.get_run(run_id))


def write_reports(
    study: Any, *, experiment_name: str | None = None, tracking_uri: str | None = None
) -> list[str]:
    """(Re)write the reports of an existing study; return the artifact paths written.

    ``study`` is the study run id, its ``Run``, or a study name with ``experiment_name``.
    """
    from mlflow_hpo.registry import find_study

    client = MlflowClient(tracking_uri)
    return write_for_run(client, find_study(client, study, experiment_name))


def write_for_run(client: MlflowClient, parent: Run) -> list[str]:
    """Draw every report of study run ``parent`` and log them under ``reports/``."""
    try:
        import optuna
        import plotly  # noqa: F401
    except ImportError as error:
        raise MissingExtraError("optuna and plotly", "reports") from error
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parent = client.get_run(parent.info.run_id)  # the summary's latest tags
    trials = parent_module.child_runs(client, parent.info.experiment_id, parent.info.run_id)
    study, exceptions = _study(client, parent, trials)
    written: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mlflow-hpo-reports-") as tmp:
        for name, (interactive, static) in _charts(study, exceptions).items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning, empty plots
                try:
                    figure = interactive()
                    axes = static()
                except (ValueError, RuntimeError, ZeroDivisionError) as error:
                    _note(tmp, name, error)
                    written.append(f"reports/{name}.txt")
                    continue
            figure.write_html(os.path.join(tmp, f"{name}.html"), include_plotlyjs=True)
            image = axes.figure if hasattr(axes, "figure") else axes[0].figure
            image.savefig(os.path.join(tmp, f"{name}.png"), dpi=100, bbox_inches="tight")
            _close(image)
            written += [f"reports/{name}.html", f"reports/{name}.png"]
        client.log_artifacts(parent.info.run_id, tmp, "reports")
    return written


def _note(folder: str, name: str, error: BaseException) -> None:
    """A chart that cannot be drawn (e.g. importances of a single trial) says why."""
    with open(os.path.join(folder, f"{name}.txt"), "w") as f:
        f.write(f"No {name.replace('_', ' ')} chart for this study: {error}\n")


def _close(figure: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(figure)


def _charts(study: Any, exceptions: Counter[str]) -> dict[str, tuple[Callable[[], Any], ...]]:
    from optuna import visualization as html
    from optuna.visualization import matplotlib as png

    charts: dict[str, tuple[Callable[[], Any], ...]] = {
        "optimization_history": (
            lambda: html.plot_optimization_history(study),
            lambda: png.plot_optimization_history(study),
        ),
        "param_importances": (
            lambda: html.plot_param_importances(study),
            lambda: png.plot_param_importances(study),
        ),
        "parallel_coordinate": (
            lambda: html.plot_parallel_coordinate(study),
            lambda: png.plot_parallel_coordinate(study),
        ),
        "intermediate_values": (
            lambda: html.plot_intermediate_values(study),
            lambda: png.plot_intermediate_values(study),
        ),
        "output_exceptions": (
            lambda: _exceptions_html(exceptions, len(study.trials)),
            lambda: _exceptions_png(exceptions, len(study.trials)),
        ),
    }
    return charts


def _study(client: MlflowClient, parent: Run, trials: list[Run]) -> tuple[Any, Counter[str]]:
    """The trials as an in-memory Optuna study, and skipped-layer counts per layer name."""
    import optuna

    tags = parent.data.tags
    objective, direction = study_objective(parent)
    hyper = {
        k[len(names.TAG_BEST_PARAM_PREFIX) :]
        for k in tags
        if k.startswith(names.TAG_BEST_PARAM_PREFIX)
    }
    if not hyper:
        hyper = {k for run in trials for k in run.data.params} - _EXTRA_PARAMS
    typed = {name: _typed([run.data.params.get(name) for run in trials]) for name in sorted(hyper)}
    distributions = {name: _distribution(values) for name, values in typed.items()}
    study = optuna.create_study(
        direction=optuna.study.StudyDirection[direction.upper()],
        study_name=tags.get(names.TAG_STUDY_NAME),
    )
    exceptions: Counter[str] = Counter()
    ordered = sorted(trials, key=lambda r: int(r.data.params.get(names.PARAM_TRIAL_NUMBER, 0)))
    position = {run.info.run_id: i for i, run in enumerate(trials)}
    for run in ordered:
        index = position[run.info.run_id]
        state = _STATES.get(run.data.tags.get(names.TAG_STATE, ""))
        if state is None or run.info.status == "RUNNING":
            continue
        value = run.data.metrics.get(objective)
        if state == "COMPLETE" and value is None:
            state = "FAIL"
        params = {n: v[index] for n, v in typed.items() if v[index] is not None}
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState[state],
                value=value if state == "COMPLETE" else None,
                params=params,
                distributions={n: distributions[n] for n in params},
                intermediate_values=_steps(client, run, objective),
            )
        )
        if run.data.metrics.get(names.METRIC_N_OUTPUT_EXCEPTIONS, 0) > 0:
            exceptions.update(_output_exceptions(client, run))
    return study, exceptions


def _typed(raw: list[str | None]) -> list[Any]:
    """Param strings back to numbers when every value of the param is numeric."""
    present = [v for v in raw if v is not None]
    for kind in (int, float):
        try:
            converted = [kind(v) for v in present]
        except ValueError:
            continue
        if kind is float and not all(v == v for v in converted):  # NaN: keep as labels
            break
        it = iter(converted)
        return [next(it) if v is not None else None for v in raw]
    return list(raw)


def _distribution(values: list[Any]) -> Any:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    present = [v for v in values if v is not None]
    if present and all(isinstance(v, int) for v in present):
        return IntDistribution(min(present), max(present))
    if present and all(isinstance(v, float | int) for v in present):
        low, high = float(min(present)), float(max(present))
        return FloatDistribution(low, high, log=low > 0 and high / low >= 100)
    return CategoricalDistribution(sorted({str(v) for v in present}) or ["-"])


def _steps(client: MlflowClient, run: Run, objective: str) -> dict[int, float]:
    for pattern in _STEP_METRICS:
        key = pattern.format(o=objective)
        if key in run.data.metrics:
            return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
    return {}


def _output_exceptions(client: MlflowClient, run: Run) -> list[str]:
    try:
        found = trial_record(
            client, run, names.TAG_OUTPUT_EXCEPTIONS, names.ARTIFACT_OUTPUT_EXCEPTIONS
        )
    except (LookupError, OSError, ValueError):
        return []
    return [str(n) for n in found]


def _exceptions_title(exceptions: Counter[str], n_trials: int) -> str:
    if not exceptions:
        return f"Output exceptions: no layer was skipped in any of {n_trials} trials"
    return f"Output exceptions: trials (of {n_trials}) in which each layer was skipped"


def _exceptions_html(exceptions: Counter[str], n_trials: int) -> Any:
    import plotly.graph_objects as go

    labels = sorted(exceptions, key=lambda k: (-exceptions[k], k))
    figure = go.Figure(go.Bar(x=labels, y=[exceptions[k] for k in labels]))
    figure.update_layout(
        title=_exceptions_title(exceptions, n_trials),
        xaxis_title="layer name",
        yaxis_title="trials",
    )
    return figure


def _exceptions_png(exceptions: Counter[str], n_trials: int) -> Any:
    import matplotlib.pyplot as plt

    labels = sorted(exceptions, key=lambda k: (-exceptions[k], k))
    _, axes = plt.subplots(figsize=(8, 4))
    axes.bar(labels, [exceptions[k] for k in labels])
    axes.set_title(_exceptions_title(exceptions, n_trials))
    axes.set_xlabel("layer name")
    axes.set_ylabel("trials")
    return axes

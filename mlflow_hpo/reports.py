"""Study reports on the study run: where the search went and what mattered.

The trials are read back from MLflow, whichever backend (or worker) wrote them, once and
page by page, and turned into an in-memory Optuna study, so Optuna's own
``optuna.visualization`` draws every chart and ``optuna.importance`` ranks the
hyperparameters, for every backend. Written to the study run's ``reports/`` folder:

* ``study.html``: one interactive page with every chart and a single copy of plotly.js
  (``mode="cdn"`` loads plotly.js from its CDN instead: a page of a few kB);
* ``<chart>.png``: each chart as an image (Optuna's matplotlib twin);
* ``<chart>.json``: each chart's plotly figure (``plotly.io.from_json`` reads it back).

``mode="png"`` writes the images only. While a study runs, :class:`ReportHook` refreshes the
reports at most every ``report_interval`` seconds in a child process at low CPU priority,
never holding up a trial: drawing is CPU-bound Python, and on a thread of the search's own
process it would take the interpreter lock from the training loop (a Keras epoch runs
Python between its steps) for far longer than it draws. When the study closes, the reports
are drawn one last time in the background, after the study run's status is written.
``mlflow-hpo report STUDY`` (or :func:`write_reports`) redraws them for any existing study.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run

from mlflow_hpo._core import names
from mlflow_hpo._reading import read_study
from mlflow_hpo.errors import MissingExtraError

REPORTS = (
    "optimization_history",
    "param_importances",
    "parallel_coordinate",
    "intermediate_values",
    "output_exceptions",
)
PAGE = "study.html"
MODES = ("html", "png", "cdn")
MAX_CURVES = 100  # per-trial lines drawn (curves, coordinates): the best trials'

_DRAWING: set[threading.Thread] = set()
_ONE_AT_A_TIME = threading.Lock()


class ReportHook:
    """Keeps a study's reports fresh while it runs, and draws them when it closes.

    Args:
        mode: ``"html"``, ``"png"`` or ``"cdn"`` (see the module docstring).
        interval: Seconds between live refreshes (``0``: only when the study closes).
    """

    def __init__(self, mode: str, interval: float) -> None:
        self.mode = mode
        self.interval = interval
        self._due = time.monotonic() + interval
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def on_trial(self, session: Any) -> None:
        if self.interval <= 0 or time.monotonic() < self._due:
            return
        self._due = time.monotonic() + self.interval
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return  # never two at once, never waited for by a trial
            if self._child is not None and self._child.poll() is None:
                return
        if not self._refresh_in_child(session):
            self._draw(session)

    def on_close(self, session: Any, timeout: float) -> None:
        """The last refresh, started once the study run has its final status."""
        with self._lock:
            previous, child = self._thread, self._child
        if child is not None and child.poll() is None:
            child.terminate()  # a live refresh still drawing: the last one supersedes it
            _reap(child, timeout)
        if previous is not None:
            previous.join(timeout)
        self._draw(session)

    def _refresh_in_child(self, session: Any) -> bool:
        """Start a live refresh in a child process; ``False`` if none could be started.

        The store's URI goes in the child's environment, not on its command line (where
        ``ps`` would show credentials it may hold); the child imports this package from
        where this process found it if its own path does not (a source checkout).
        """
        import mlflow

        run_id = session.study_run_id
        if run_id is None:
            return True  # no study run yet: nothing to draw
        if not sys.executable:  # an embedded interpreter: the caller draws on a thread
            return False
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = f"import sys; sys.path.append({root!r}); import mlflow_hpo.reports as r; r._child()"
        env = dict(os.environ)
        env["MLFLOW_TRACKING_URI"] = session.options.tracking_uri or mlflow.get_tracking_uri()
        try:
            child = subprocess.Popen(
                [sys.executable, "-c", code, run_id, self.mode],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,  # best effort: the final refresh reports failures
            )
        except OSError:
            return False
        with self._lock:
            self._child = child
        return True

    def _draw(self, session: Any) -> None:
        run_id = session.study_run_id
        if run_id is None:
            return
        client, safety, mode = session.client, session.safety, self.mode

        def draw() -> None:
            # One drawing at a time in a process: matplotlib's pyplot is not thread-safe.
            with _ONE_AT_A_TIME, safety.guard("writing the study reports"):
                write_for_run(client, client.get_run(run_id), mode)

        thread = threading.Thread(target=_drawing(draw), name="mlflow-hpo-reports", daemon=True)
        with self._lock:
            self._thread = thread
        _DRAWING.add(thread)
        thread.start()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the refresh in progress, if any."""
        with self._lock:
            thread, child = self._thread, self._child
        if child is not None:
            _reap(child, timeout)
        if thread is not None:
            thread.join(timeout)


def _reap(child: subprocess.Popen[bytes], timeout: float | None) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout)


def _child() -> None:
    """A live refresh's process (:class:`ReportHook`): ``RUN_ID MODE`` on its command line,
    the store in ``MLFLOW_TRACKING_URI``; it yields the CPU to the search it follows."""
    if hasattr(os, "nice"):
        os.nice(10)
    run_id, mode = sys.argv[1:3]
    client = MlflowClient()
    write_for_run(client, client.get_run(run_id), mode)


def _drawing(draw: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            draw()
        finally:
            _DRAWING.discard(threading.current_thread())

    return run


@atexit.register
def _finish_drawing() -> None:
    """A script that ends right after its study still gets its final reports."""
    for thread in list(_DRAWING):
        thread.join(timeout=120)


def write_reports(
    study: Any,
    *,
    experiment_name: str | None = None,
    tracking_uri: str | None = None,
    mode: str = "html",
) -> list[str]:
    """(Re)write the reports of an existing study; return the artifact paths written.

    ``study`` is the study run id, its ``Run``, or a study name with ``experiment_name``.
    """
    from mlflow_hpo.registry import find_study

    client = MlflowClient(tracking_uri)
    return write_for_run(client, find_study(client, study, experiment_name), mode)


def write_for_run(client: MlflowClient, parent: Run, mode: str = "html") -> list[str]:
    """Draw every report of study run ``parent`` and log them under ``reports/``."""
    try:
        import optuna
        import plotly  # noqa: F401
    except ImportError as error:
        raise MissingExtraError("optuna and plotly", "reports") from error
    # Optuna's matplotlib charts are marked experimental: say nothing about it, narrowly
    # (a catch_warnings() here would silence every warning of every thread meanwhile).
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # A parameter tried at one value only: matplotlib widens the flat axis itself.
    warnings.filterwarnings(
        "ignore", "Attempting to set identical low and high", UserWarning, "optuna.visualization"
    )
    study, exceptions = read_study(client, parent, MAX_CURVES)
    written: list[str] = []
    figures: list[tuple[str, Any]] = []
    # Not a TemporaryDirectory: its cleanup at interpreter exit would run before the exit
    # handler that waits for a drawing still in progress.
    tmp = tempfile.mkdtemp(prefix="mlflow-hpo-reports-")
    try:
        for name, (interactive, static) in _charts(study, exceptions).items():
            try:
                figure = interactive()
                axes = static()
            except (ValueError, RuntimeError, ZeroDivisionError) as error:
                _note(tmp, name, error)
                written.append(f"reports/{name}.txt")
                continue
            image = axes.figure if hasattr(axes, "figure") else axes[0].figure
            _save_png(image, os.path.join(tmp, f"{name}.png"))
            _close(image)
            written.append(f"reports/{name}.png")
            if mode != "png":
                with open(os.path.join(tmp, f"{name}.json"), "w") as f:
                    f.write(figure.to_json())
                figures.append((name, figure))
                written.append(f"reports/{name}.json")
        if figures:
            _page(tmp, parent, figures, cdn=mode == "cdn")
            written.append(f"reports/{PAGE}")
        client.log_artifacts(parent.info.run_id, tmp, "reports")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written


def _page(folder: str, parent: Run, figures: list[tuple[str, Any]], cdn: bool) -> None:
    """One page with every chart and one copy of plotly.js (or a CDN reference)."""
    title = parent.data.tags.get(names.TAG_STUDY_NAME, parent.info.run_id)
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_escape(title)}</title>"
        "</head><body style='font-family:sans-serif'>",
        f"<h1>Study {_escape(title)}</h1>",
    ]
    for index, (name, figure) in enumerate(figures):
        parts.append(f"<h2 id='{name}'>{name.replace('_', ' ')}</h2>")
        include: Any = ("cdn" if cdn else True) if index == 0 else False
        # The div's id is not the heading's: plotly.js draws into the first element with it.
        parts.append(
            figure.to_html(
                full_html=False,
                include_plotlyjs=include,
                div_id=f"chart-{name}",
                default_height="520px",
            )
        )
    parts.append("</body></html>")
    with open(os.path.join(folder, PAGE), "w") as f:
        f.write("\n".join(parts))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _note(folder: str, name: str, error: BaseException) -> None:
    """A chart that cannot be drawn (e.g. importances of a single trial) says why."""
    with open(os.path.join(folder, f"{name}.txt"), "w") as f:
        f.write(f"No {name.replace('_', ' ')} chart for this study: {error}\n")


def _save_png(figure: Any, path: str) -> None:
    """The chart as a small PNG: 72 dpi, 128 colours (a chart has few), optimised."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=72)
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=128).save(path, optimize=True)


def _close(figure: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(figure)


def _charts(study: Any, exceptions: Counter[str]) -> dict[str, tuple[Callable[[], Any], ...]]:
    from optuna import visualization as html
    from optuna.visualization import matplotlib as png

    n_trials = len(study.trials)
    best = _best(study, MAX_CURVES)  # one line per trial: the best ones stay readable
    return {
        "optimization_history": (
            lambda: html.plot_optimization_history(study),
            lambda: png.plot_optimization_history(study),
        ),
        "param_importances": (
            lambda: html.plot_param_importances(study),
            lambda: png.plot_param_importances(study),
        ),
        "parallel_coordinate": (
            lambda: html.plot_parallel_coordinate(best),
            lambda: png.plot_parallel_coordinate(best),
        ),
        "intermediate_values": (
            lambda: html.plot_intermediate_values(_with_steps(best)),
            lambda: png.plot_intermediate_values(best),
        ),
        "output_exceptions": (
            lambda: _exceptions_html(exceptions, n_trials),
            lambda: _exceptions_png(exceptions, n_trials),
        ),
    }


def _with_steps(study: Any) -> Any:
    """``study``, if one of its trials reported per-step values (else there is no chart)."""
    if not any(t.intermediate_values for t in study.trials):
        raise ValueError("no trial reported per-step values (trial.report, epochs, folds)")
    return study


def _best(study: Any, keep: int) -> Any:
    """``study`` itself, or (a large study) an in-memory copy with its ``keep`` best trials."""
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) <= keep:
        return study
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1.0
    best = optuna.create_study(direction=study.direction, study_name=study.study_name)
    best.add_trials(sorted(complete, key=lambda t: sign * float(t.value))[:keep])
    return best


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

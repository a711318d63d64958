"""Study reports on the study run: one page, the figures as JSON, the PNGs; live and at close.

Chart content is asserted on each figure's plotly JSON (the data the page draws), never by
searching the page, which embeds plotly.js and so contains almost any word.
"""

from __future__ import annotations

import json
import time
from html.parser import HTMLParser
from pathlib import Path

import keras
import optuna
import pytest
from click.testing import CliRunner
from conftest import study_runs
from mlflow import MlflowClient
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.tree import DecisionTreeClassifier

from mlflow_hpo.cli import cli
from mlflow_hpo.errors import ConfigurationError
from mlflow_hpo.layers import LayerGuard
from mlflow_hpo.optuna import MlflowStudyCallback
from mlflow_hpo.reports import PAGE, REPORTS
from mlflow_hpo.sklearn import track_search


class _Page(HTMLParser):
    """The page's chart divs, element ids and scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.divs: list[str] = []
        self.ids: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        element_id = dict(attrs).get("id")
        if element_id:
            self.ids.append(element_id)
        if tag == "div" and str(element_id).removeprefix("chart-") in REPORTS:
            self.divs.append(str(element_id).removeprefix("chart-"))
        self.scripts += tag == "script"


def _reports(client: MlflowClient, run_id: str, empty: tuple[str, ...] = ()) -> dict[str, dict]:
    """Every chart's figure, checked: in the page (once, with one plotly.js), as JSON and as
    a valid PNG. Returns chart name -> plotly figure dict. ``empty``: charts a study has no
    data for (no per-step values): a ``.txt`` says so instead."""
    listed = {a.path for a in client.list_artifacts(run_id, "reports")}
    page = Path(client.download_artifacts(run_id, f"reports/{PAGE}")).read_text()
    parser = _Page()
    parser.feed(page)
    assert parser.divs == [name for name in REPORTS if name not in empty]
    # plotly.js draws into the element with its div's id: a heading with the same id would
    # take the chart (squashed to the heading's height).
    assert len(parser.ids) == len(set(parser.ids)), parser.ids
    for name in parser.divs:
        assert f'getElementById("chart-{name}")' in page or f'"chart-{name}",' in page
    assert page.count("plotly.js v") <= 2  # the library's banner: one embedded copy
    figures = {}
    for name in empty:
        note = Path(client.download_artifacts(run_id, f"reports/{name}.txt")).read_text()
        assert "no trial reported per-step values" in note
    for name in REPORTS:
        if name in empty:
            continue
        figure = json.loads(
            Path(client.download_artifacts(run_id, f"reports/{name}.json")).read_text()
        )
        assert figure["data"], name
        with Image.open(client.download_artifacts(run_id, f"reports/{name}.png")) as image:
            image.verify()
            assert image.size[0] > 100 and image.size[1] > 100
        assert {f"reports/{name}.json", f"reports/{name}.png"} <= listed
        figures[name] = figure
    return figures


def _sizes(client: MlflowClient, run_id: str) -> int:
    return sum(a.file_size or 0 for a in client.list_artifacts(run_id, "reports"))


def test_optuna_study_reports_every_chart_with_its_real_content(
    client: MlflowClient, tracking_uri: str
) -> None:
    def objective(trial: optuna.Trial) -> float:
        kernel = trial.suggest_int("kernel", 2, 6)
        depth = trial.suggest_int("depth", 1, 3)
        trial.suggest_categorical("activation", ["relu", "tanh"])
        guard = LayerGuard(keras.Sequential([keras.Input((8, 8, 1))]))
        for i in range(1, depth + 1):
            guard.add(keras.layers.Conv2D(2, kernel), name=f"Conv_L{i}")
        for step in range(3):
            trial.report(kernel * step / 10, step)
        return kernel / 10 - depth / 5

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    tracker = MlflowStudyCallback(experiment_name="reports", metric_name="score", reports=True)
    with tracker:
        study.optimize(tracker.track(objective), n_trials=8, callbacks=[tracker])
    tracker.flush()  # the final refresh is drawn after the study run's status is written
    parent, _ = study_runs(client, "reports")
    figures = _reports(client, parent.info.run_id)
    history = figures["optimization_history"]["data"][0]
    assert sorted(history["y"]) == sorted(t.value for t in study.trials)
    importances = figures["param_importances"]["data"][0]
    assert set(importances["y"]) == {"kernel", "depth", "activation"}
    curves = [trace for trace in figures["intermediate_values"]["data"] if trace.get("x")]
    assert len(curves) == 8 and all(list(c["x"]) == [0, 1, 2] for c in curves)
    skipped = figures["output_exceptions"]["data"][0]
    expected = {"Conv_L2": 0, "Conv_L3": 0}
    for trial in study.trials:  # a 2-pixel kernel fits 3 layers in 8x8; bigger ones fewer
        fits = 1 + (8 - trial.params["kernel"]) // (trial.params["kernel"] - 1)
        for layer in range(fits + 1, trial.params["depth"] + 1):
            expected[f"Conv_L{layer}"] += 1
    assert dict(zip(skipped["x"], skipped["y"], strict=True)) == {
        k: v for k, v in expected.items() if v
    }
    # One page, one copy of plotly.js: the whole folder stays small.
    assert _sizes(client, parent.info.run_id) < 5 * 2**20


def test_sklearn_search_reports_importances_and_fold_curves(
    client: MlflowClient, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HPO_REPORTS", "1")  # the environment sets the default
    x, y = load_digits(return_X_y=True)
    search = track_search(
        GridSearchCV(
            DecisionTreeClassifier(random_state=0),
            {"max_depth": [2, 4, 8], "min_samples_leaf": [1, 10]},
            cv=3,
        ),
        experiment_name="sk-reports",
    )
    search.fit(x[:300], y[:300])
    search.mlflow.flush()
    parent, _ = study_runs(client, "sk-reports")
    figures = _reports(client, parent.info.run_id)
    assert set(figures["param_importances"]["data"][0]["y"]) == {"max_depth", "min_samples_leaf"}
    folds = [trace for trace in figures["intermediate_values"]["data"] if trace.get("x")]
    assert len(folds) == 6 and all(list(t["x"]) == [0, 1, 2] for t in folds)
    assert "no layer was skipped" in figures["output_exceptions"]["layout"]["title"]["text"]


@pytest.mark.parametrize("mode", ["png", "cdn"])
def test_lighter_modes(client: MlflowClient, tracking_uri: str, mode: str) -> None:
    study = optuna.create_study()
    tracker = MlflowStudyCallback(experiment_name=mode, reports=mode)
    with tracker:
        study.optimize(tracker.track(lambda t: t.suggest_float("x", 0, 1)), n_trials=4,
                       callbacks=[tracker])  # fmt: skip
    tracker.flush()
    parent, _ = study_runs(client, mode)
    listed = {a.path for a in client.list_artifacts(parent.info.run_id, "reports")}
    assert "reports/optimization_history.png" in listed
    if mode == "png":
        assert not any(p.endswith((".html", ".json")) for p in listed)
    else:
        assert f"reports/{PAGE}" in listed
        assert _sizes(client, parent.info.run_id) < 300_000  # plotly.js comes from its CDN


@pytest.mark.parametrize("named", ["environment", "argument"])
def test_reports_refresh_while_the_study_runs(
    client: MlflowClient,
    tracking_uri: str,
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Live refreshes are drawn by a child process: it finds the store the tracker writes
    to, whether the environment names it or only the tracker's ``tracking_uri`` does."""
    given: dict[str, str] = {}
    if named == "argument":
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
        (tmp_path / "elsewhere").mkdir()
        monkeypatch.chdir(tmp_path / "elsewhere")  # MLflow's default store: another file
        given["tracking_uri"] = tracking_uri
    seen: list[bool] = []
    study = optuna.create_study()
    tracker = MlflowStudyCallback(
        experiment_name="live", reports=True, report_interval=0.2, **given
    )

    def objective(trial: optuna.Trial) -> float:
        if trial.number == 2:
            time.sleep(0.3)  # past report_interval: the next trials start a refresh
        if trial.number == 6:  # a refresh has been drawn by now, in the background
            tracker.flush()
            listed = client.list_artifacts(tracker.study_run_id, "reports")
            seen.append(any(a.path.endswith(PAGE) for a in listed))
        return trial.suggest_float("x", 0, 1)

    with tracker:
        study.optimize(tracker.track(objective), n_trials=8, callbacks=[tracker])
    tracker.flush()
    assert seen == [True]
    parent, _ = study_runs(client, "live")
    figures = _reports(client, parent.info.run_id, empty=("intermediate_values",))
    assert len(figures["optimization_history"]["data"][0]["y"]) == 8  # every trial


def _processes_naming(text: str) -> list[int]:
    """Live (not zombie) processes whose command line holds ``text`` (Linux's /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # not a process, or one that just ended
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads Linux's /proc")
def test_a_live_refresh_still_drawing_at_close_gives_way_to_the_final_one(
    client: MlflowClient, tracking_uri: str
) -> None:
    """The study ends while a live refresh (a child process) is still starting: the final
    reports, drawn after it, show every trial, and no late child draws over them."""
    study = optuna.create_study()
    tracker = MlflowStudyCallback(experiment_name="late", reports=True, report_interval=0.2)

    def objective(trial: optuna.Trial) -> float:
        if trial.number == 2:
            time.sleep(0.3)  # past report_interval: trial 3 starts a live refresh
        return trial.suggest_float("x", 0, 1)

    with tracker:
        study.optimize(tracker.track(objective), n_trials=8, callbacks=[tracker])
    assert tracker.study_run_id is not None
    assert _processes_naming(tracker.study_run_id) == []  # the live one was stopped at close
    tracker.flush()
    parent, trials = study_runs(client, "late")
    assert parent.info.status == "FINISHED" and len(trials) == 8
    figures = _reports(client, parent.info.run_id, empty=("intermediate_values",))
    assert len(figures["optimization_history"]["data"][0]["y"]) == 8  # every trial


def test_a_study_larger_than_its_charts_draws_the_best_trials_and_keeps_every_number(
    client: MlflowClient, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``MAX_CURVES`` trials, the per-trial charts draw the best ones only, from a copy
    of the study read back; the history still shows every trial under its own number."""
    monkeypatch.setattr("mlflow_hpo.reports.MAX_CURVES", 3)
    study = optuna.create_study(study_name="big")

    def objective(trial: optuna.Trial) -> float:
        value = (trial.suggest_float("x", -2, 2) - 1) ** 2
        for step in range(3):
            trial.report(value + 2 - step, step)
        return value

    with MlflowStudyCallback(experiment_name="big", metric_name="loss") as tracker:
        study.optimize(tracker.track(objective), n_trials=10, callbacks=[tracker])
    parent, _ = study_runs(client, "big")
    result = CliRunner().invoke(
        cli, ["report", "big", "--experiment-name", "big", "--tracking-uri", tracking_uri]
    )
    assert result.exit_code == 0, result.output
    figures = _reports(client, parent.info.run_id)
    history = figures["optimization_history"]["data"][0]
    assert history["x"] == list(range(10))  # each trial under its own number
    assert history["y"] == pytest.approx([t.value for t in study.trials])
    best = sorted(t.value for t in study.trials)[:3]
    lines = [t for t in figures["parallel_coordinate"]["data"] if t.get("mode") == "lines"]
    assert len(lines) == 3
    curves = figures["intermediate_values"]["data"]
    assert sorted(c["y"][-1] for c in curves) == pytest.approx(best)


def test_cli_report_regenerates_the_reports_of_an_existing_study(
    client: MlflowClient, tracking_uri: str
) -> None:
    study = optuna.create_study(study_name="later")
    with MlflowStudyCallback(experiment_name="later", metric_name="loss") as tracker:
        study.optimize(
            tracker.track(lambda t: (t.suggest_float("x", -2, 2) - 1) ** 2),
            n_trials=6,
            callbacks=[tracker],
        )
    parent, _ = study_runs(client, "later")
    assert client.list_artifacts(parent.info.run_id, "reports") == []  # reports were off
    result = CliRunner().invoke(
        cli, ["report", "later", "--experiment-name", "later", "--tracking-uri", tracking_uri]
    )
    assert result.exit_code == 0, result.output
    assert f"reports/{PAGE}" in result.output.splitlines()
    figures = _reports(client, parent.info.run_id, empty=("intermediate_values",))
    axes = figures["parallel_coordinate"]["layout"]["xaxis"]["ticktext"]
    assert axes == ["Objective Value", "x"]
    lines = [t for t in figures["parallel_coordinate"]["data"] if t.get("mode") == "lines"]
    assert len(lines) == 6  # one line per trial


def test_the_reports_argument_overrides_the_environment_default(
    client: MlflowClient, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HPO_REPORTS", "1")
    study = optuna.create_study()
    with MlflowStudyCallback(experiment_name="no-charts", reports=False) as tracker:
        study.optimize(
            tracker.track(lambda t: t.suggest_float("x", 0, 1)), n_trials=2, callbacks=[tracker]
        )
    parent, _ = study_runs(client, "no-charts")
    assert client.list_artifacts(parent.info.run_id, "reports") == []
    with pytest.raises(ConfigurationError, match="reports"):
        MlflowStudyCallback(reports="yes")  # type: ignore[arg-type]

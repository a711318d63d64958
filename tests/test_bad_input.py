"""Bad input, table-driven, in the default mode users run.

A configuration mistake raises ``ConfigurationError`` (what was expected, what was received,
how to fix it) before any run exists, or at the latest at the first trial; input MLflow
cannot take as it is (long or odd names, quotes) is logged faithfully instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optuna
import pytest
from conftest import all_runs, study_runs
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, ParameterGrid

from mlflow_hpo import names, space
from mlflow_hpo.errors import ConfigurationError
from mlflow_hpo.optuna import MLflowCallback, MlflowStudyCallback
from mlflow_hpo.registry import find_study, promote_best
from mlflow_hpo.sklearn import track_search, tracked_sampler

optuna.logging.set_verbosity(optuna.logging.ERROR)


def _fixed(build: Callable[[space.HP], Any]) -> Callable[[], Any]:
    return lambda: space.builder(build)({})


CONSTRUCTORS: dict[str, tuple[Callable[[], Any], str]] = {
    "empty metric_name": (lambda: MlflowStudyCallback(metric_name=""), "metric_name"),
    "repeated metric names": (
        lambda: MlflowStudyCallback(metric_name=["a", "a"]),
        "distinct names",
    ),
    "host-less http URI": (
        lambda: MlflowStudyCallback(tracking_uri="http://:5000"),
        "with a host name",
    ),
    "bare http://": (lambda: MlflowStudyCallback(tracking_uri="http://"), "with a host name"),
    "port out of range": (
        lambda: MlflowStudyCallback(tracking_uri="http://127.0.0.1:99999"),
        "does not parse|port",
    ),
    "plain path": (lambda: MlflowStudyCallback(tracking_uri="runs/here"), "file store"),
    "relative sqlite": (lambda: MlflowStudyCallback(tracking_uri="sqlite://x.db"), "sqlite:///"),
    'strict="false"': (lambda: MlflowStudyCallback(strict="false"), "strict"),  # type: ignore[arg-type]
    'synchronous="no"': (lambda: MlflowStudyCallback(synchronous="no"), "synchronous"),  # type: ignore[arg-type]
    "unknown reports mode": (lambda: MlflowStudyCallback(reports="maybe"), "reports"),  # type: ignore[arg-type]
    "negative verbose": (lambda: MlflowStudyCallback(verbose=-1), "verbose"),
    "negative close_timeout": (lambda: MlflowStudyCallback(close_timeout=-1), "close_timeout"),
    "NaN close_timeout": (
        lambda: MlflowStudyCallback(close_timeout=math.nan),
        "close_timeout",
    ),
    "log_models=0": (lambda: MlflowStudyCallback(log_models=0), "log_models"),
    'log_models="most"': (lambda: MlflowStudyCallback(log_models="most"), "log_models"),
    "misspelt option": (
        lambda: track_search(GridSearchCV(LogisticRegression(), {"C": [1]}), experiment="x"),  # type: ignore[call-arg]
        "option",
    ),
    "not a search CV": (lambda: track_search(LogisticRegression()), "search CV"),
    "max_child_runs=0": (
        lambda: track_search(GridSearchCV(LogisticRegression(), {"C": [1]}), max_child_runs=0),
        "max_child_runs",
    ),
    "sampler without an objective": (
        lambda: tracked_sampler(ParameterGrid({"C": [1]}), objective="", direction="maximize"),
        "the metric that ranks trials",
    ),
    "sampler direction": (
        lambda: tracked_sampler(ParameterGrid({"C": [1]}), objective="acc", direction="up"),
        "direction",
    ),
    "a dict as sampler": (
        lambda: tracked_sampler({"C": [1]}, objective="acc", direction="maximize"),  # type: ignore[arg-type]
        "ParameterSampler",
    ),
    "drop-in mlflow_kwargs": (lambda: MLflowCallback(mlflow_kwargs=["nested"]), "mlflow_kwargs"),  # type: ignore[arg-type]
    "NaN bound": (_fixed(lambda hp: hp.float("lr", math.nan, 1.0)), "'lr'.*finite"),
    "infinite bound": (_fixed(lambda hp: hp.float("lr", 0.0, math.inf)), "'lr'.*finite"),
    "low above high": (_fixed(lambda hp: hp.int("units", 64, 8)), "'units'.*low < high"),
    "low equals high": (_fixed(lambda hp: hp.float("lr", 0.1, 0.1)), "'lr'.*low < high"),
    "log with low 0": (_fixed(lambda hp: hp.float("lr", 0.0, 1.0, log=True)), "low > 0"),
    "log int from 0": (_fixed(lambda hp: hp.int("units", 0, 8, log=True)), "low > 0"),
    "step with log": (_fixed(lambda hp: hp.int("units", 1, 8, step=2, log=True)), "step"),
}


@pytest.mark.parametrize("case", sorted(CONSTRUCTORS))
def test_a_mistake_raises_before_any_run_with_what_was_expected(
    client: MlflowClient, tracking_uri: str, case: str
) -> None:
    make, match = CONSTRUCTORS[case]
    with pytest.raises(ConfigurationError, match=match) as raised:
        make()
    message = str(raised.value)
    assert "expected" in message and "Received" in message
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_a_study_that_does_not_fit_the_callback_raises_at_the_first_trial(
    client: MlflowClient, tracking_uri: str
) -> None:
    tracker = MlflowStudyCallback(experiment_name="mo", metric_name=["acc", "loss", "extra"])
    study = optuna.create_study(directions=["maximize", "minimize"])
    with pytest.raises(ConfigurationError, match="2 names, one per objective"):
        study.optimize(tracker.track(lambda t: (1.0, 2.0)), n_trials=1, callbacks=[tracker])
    assert client.get_experiment_by_name("mo") is None  # no run, not even the study's


def test_one_callback_for_two_studies_raises_and_keeps_the_first(
    client: MlflowClient, tracking_uri: str
) -> None:
    tracker = MlflowStudyCallback(experiment_name="two")
    with tracker:
        optuna.create_study().optimize(
            tracker.track(lambda t: 1.0), n_trials=2, callbacks=[tracker]
        )
        with pytest.raises(ConfigurationError, match="one MlflowStudyCallback per study"):
            optuna.create_study().optimize(
                tracker.track(lambda t: 1.0), n_trials=1, callbacks=[tracker]
            )
    parent, trials = study_runs(client, "two")
    assert len(trials) == 2 and parent.info.status == "FINISHED"  # the error was handled


def test_a_deleted_experiment_raises_at_the_first_trial(
    client: MlflowClient, tracking_uri: str
) -> None:
    client.delete_experiment(client.create_experiment("gone"))
    tracker = MlflowStudyCallback(experiment_name="gone")
    with pytest.raises(ConfigurationError, match=r"deleted.*mlflow experiments restore"):
        optuna.create_study().optimize(tracker.track(lambda t: 1.0), n_trials=1)
    gone = client.get_experiment_by_name("gone")
    assert client.search_runs([gone.experiment_id], run_view_type=3) == []


def test_long_and_odd_names_are_logged_faithfully_and_the_study_still_ranks(
    client: MlflowClient, tracking_uri: str
) -> None:
    long_a, long_b = "p" * 300 + "_a", "p" * 300 + "_b"
    study = optuna.create_study(direction="maximize", study_name='it\'s "quoted"')

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float(long_a, 0, 1)
        trial.suggest_float(long_b, 0, 1)
        return trial.suggest_float("x", 0, 1)

    metric = "acc(%)" + "m" * 300  # bad characters, and over MLflow's key limit
    with MlflowStudyCallback(experiment_name="odd", metric_name=metric) as tracker:
        study.optimize(tracker.track(objective), n_trials=3, callbacks=[tracker])
    parent, trials = study_runs(client, "odd")
    (key,) = parent.data.tags[names.TAG_OBJECTIVES].split(",")
    for run in trials:
        assert key in run.data.metrics  # the tag names exactly the logged key
        assert len(run.data.params) == 4  # both long names kept apart, x, trial_number
        assert set(run.data.params) != {long_a, long_b}
    best = max(trials, key=lambda r: r.data.metrics[key])
    assert parent.data.tags[names.TAG_BEST_TRIAL_RUN_ID] == best.info.run_id
    # Quotes in a study name or a model name are searched for exactly.
    assert find_study(client, 'it\'s "quoted"', "odd").info.run_id == parent.info.run_id


def test_quotes_in_model_names_register_one_version(
    client: MlflowClient, tracking_uri: str
) -> None:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    with tracked_sampler(
        ParameterGrid({"C": [0.1]}), objective="acc", direction="maximize", experiment_name="q"
    ) as study:
        for params, trial in study:
            model = LogisticRegression(C=params["C"], max_iter=200).fit(x[:200], y[:200])
            trial.log(acc=model.score(x[200:300], y[200:300]))
            trial.log_model(model)
    run_id = study.study_run_id
    for name in ("it's", 'say "hi"'):
        first = promote_best(run_id, name)
        again = promote_best(run_id, name)
        assert first.created and not again.created and again.version == first.version
    assert len(all_runs(client, "q")) == 2

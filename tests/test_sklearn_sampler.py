"""``tracked_sampler``: the hand-written ParameterSampler/ParameterGrid loop, on a real store."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from conftest import all_runs, assert_no_running, study_runs
from mlflow import MlflowClient
from scipy.stats import loguniform
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import ParameterGrid, ParameterSampler

from mlflow_hpo import names
from mlflow_hpo.errors import ConfigurationError
from mlflow_hpo.sklearn import tracked_sampler


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, ...]:
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    return x[:300], y[:300], x[300:450], y[300:450]


def get_model(params: dict) -> tuple[LogisticRegression, list[str]]:
    """The common recipe's builder: the model and its output exception list."""
    skipped = [f"Pooling_L{i}" for i in range(params.get("skip", 0))]
    return LogisticRegression(C=params["C"], max_iter=300), skipped


def test_one_child_per_sample_with_values_models_and_exceptions(
    client: MlflowClient, tracking_uri: str, data
) -> None:
    x, y, xv, yv = data
    space = {"C": loguniform(1e-3, 10), "skip": [0, 1, 2]}
    sampler = ParameterSampler(space, n_iter=4, random_state=0)
    seen = []
    for params, trial in tracked_sampler(sampler, experiment_name="loop"):
        model = trial.build(get_model)
        model.fit(x, y)
        trial.log(val_accuracy=model.score(xv, yv), val_loss=1.0 - model.score(xv, yv))
        trial.log_model(model)
        seen.append((params, trial.number, model.score(xv, yv)))
    parent, trials = study_runs(client, "loop")
    assert len(trials) == 4 and parent.info.status == "FINISHED"
    assert parent.data.tags[names.TAG_OBJECTIVES] == "val_accuracy"
    assert parent.data.tags[names.TAG_DIRECTIONS] == "maximize"
    for (params, number, accuracy), run in zip(seen, trials, strict=True):
        assert int(run.data.params["trial_number"]) == number
        assert run.info.status == "FINISHED"
        assert float(run.data.params["C"]) == pytest.approx(params["C"])
        assert run.data.metrics["val_accuracy"] == pytest.approx(accuracy)
        assert run.data.metrics["val_loss"] == pytest.approx(1 - accuracy)
        path = client.download_artifacts(run.info.run_id, names.ARTIFACT_OUTPUT_EXCEPTIONS)
        with open(path) as f:
            assert json.load(f) == get_model(params)[1]
        assert run.data.metrics[names.METRIC_N_OUTPUT_EXCEPTIONS] == params["skip"]
    best_number = max(seen, key=lambda s: s[2])[1]
    best = client.get_run(parent.data.tags[names.TAG_BEST_TRIAL_RUN_ID])
    assert int(best.data.params["trial_number"]) == best_number
    model = mlflow.sklearn.load_model(best.data.tags[names.TAG_MODEL_URI])
    assert model.score(xv, yv) == pytest.approx(best.data.metrics["val_accuracy"])
    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "trials.csv"))
    assert sorted(table["run_id"]) == sorted(t.info.run_id for t in trials)


def test_an_exception_in_the_body_fails_that_trial_and_propagates(
    client: MlflowClient, tracking_uri: str
) -> None:
    error = RuntimeError("shape mismatch in my training code")
    with pytest.raises(RuntimeError) as raised:
        for params, trial in tracked_sampler(
            ParameterGrid({"units": [8, 16, 32]}), experiment_name="fails", objective="acc"
        ):
            if params["units"] == 16:
                raise error
            trial.log(acc=params["units"] / 100)
    assert raised.value is error
    parent, trials = study_runs(client, "fails")
    assert [t.info.status for t in trials] == ["FINISHED", "FAILED"]
    assert parent.info.status == "FAILED"
    assert trials[1].data.tags[names.TAG_STATE] == names.STATE_FAIL
    error = Path(client.download_artifacts(trials[1].info.run_id, "error.txt")).read_text()
    assert __file__ in error and "raise error" in error  # where the body raised it
    assert_no_running(client, "fails")


def test_break_ends_the_study_finished(client: MlflowClient, tracking_uri: str) -> None:
    for params, trial in tracked_sampler(
        ParameterGrid({"units": [8, 16, 32]}), experiment_name="early", direction="minimize"
    ):
        trial.log(loss=1 / params["units"])
        if params["units"] == 16:
            break
    parent, trials = study_runs(client, "early")
    assert [t.info.status for t in trials] == ["FINISHED", "FINISHED"]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_loss"] == pytest.approx(1 / 16)  # minimize: 16 beats 8


def test_ctrl_c_in_the_body_kills_the_trial_and_the_study(
    client: MlflowClient, tracking_uri: str
) -> None:
    with pytest.raises(KeyboardInterrupt):
        for params, trial in tracked_sampler(
            ParameterGrid({"units": [8, 16, 32]}), experiment_name="ctrl-c"
        ):
            trial.log(step=0, loss=1.0)
            if params["units"] == 16:
                os.kill(os.getpid(), signal.SIGINT)
            trial.log(acc=0.5)
    parent, trials = study_runs(client, "ctrl-c")
    assert [t.info.status for t in trials] == ["FINISHED", "KILLED"]
    assert parent.info.status == "KILLED"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_live_steps_and_mlflow_calls_land_on_the_trial_run(
    client: MlflowClient, tracking_uri: str
) -> None:
    for _params, trial in tracked_sampler(
        ParameterGrid({"lr": [0.1, 0.01]}), experiment_name="live", objective="acc"
    ):
        for epoch in range(3):
            trial.log(step=epoch, loss=1.0 / (epoch + 1))
        mlflow.log_param("note", "from the body")  # MLflow's active run is the trial's run
        assert mlflow.active_run().info.run_id == trial.run_id
        trial.log(acc=0.9)
    _, trials = study_runs(client, "live")
    for run in trials:
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in history] == [0, 1, 2]
        assert run.data.params["note"] == "from the body"
    assert mlflow.active_run() is None


def test_bad_input_is_refused_before_any_run(client: MlflowClient, tracking_uri: str) -> None:
    with pytest.raises(ConfigurationError, match="ParameterSampler"):
        tracked_sampler({"C": [1, 2]}, experiment_name="bad")
    with pytest.raises(ConfigurationError, match="direction"):
        tracked_sampler(ParameterGrid({"C": [1]}), direction="up", experiment_name="bad")
    with pytest.raises(ConfigurationError, match="an item of type int"):
        for _ in tracked_sampler([1, 2], experiment_name="bad"):
            pass
    assert client.get_experiment_by_name("bad") is None or not all_runs(client, "bad")

"""``tracked_sampler``: the hand-written ParameterSampler/ParameterGrid loop, on a real store."""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path

import mlflow.models
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from conftest import assert_no_running, output_exceptions, study_runs
from mlflow import MlflowClient
from scipy.stats import loguniform
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import ParameterGrid, ParameterSampler

from mlflow_hpo import names
from mlflow_hpo._core import coalesce
from mlflow_hpo.errors import ConfigurationError, MlflowHpoWarning
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
    loop = tracked_sampler(
        sampler, objective="val_accuracy", direction="maximize", experiment_name="loop"
    )
    with loop as study:
        for params, trial in study:
            model = trial.build(get_model)
            model.fit(x, y)
            # The loss is logged first: the objective, not the first metric, ranks trials.
            trial.log(val_loss=1.0 - model.score(xv, yv), val_accuracy=model.score(xv, yv))
            trial.log_model(model, input_example=xv[:3])
            seen.append((params, trial.number, model.score(xv, yv)))
    parent, trials = study_runs(client, "loop")
    assert loop.study_run_id == parent.info.run_id and loop.warning_count == 0
    assert len(trials) == 4 and parent.info.status == "FINISHED"
    assert parent.data.tags[names.TAG_OBJECTIVES] == "val_accuracy"
    assert parent.data.tags[names.TAG_DIRECTIONS] == "maximize"
    for (params, number, accuracy), run in zip(seen, trials, strict=True):
        assert int(run.data.params["trial_number"]) == number
        assert run.info.status == "FINISHED"
        assert float(run.data.params["C"]) == pytest.approx(params["C"])
        assert run.data.metrics["val_accuracy"] == pytest.approx(accuracy)
        assert run.data.metrics["val_loss"] == pytest.approx(1 - accuracy)
        assert output_exceptions(run) == get_model(params)[1]
        assert run.data.metrics[names.METRIC_N_OUTPUT_EXCEPTIONS] == params["skip"]
    best_number = max(seen, key=lambda s: s[2])[1]
    best = client.get_run(parent.data.tags[names.TAG_BEST_TRIAL_RUN_ID])
    assert int(best.data.params["trial_number"]) == best_number
    model = mlflow.sklearn.load_model(best.data.tags[names.TAG_MODEL_URI])
    assert model.score(xv, yv) == pytest.approx(best.data.metrics["val_accuracy"])
    info = mlflow.models.get_model_info(best.data.tags[names.TAG_MODEL_URI])
    assert info.signature is not None  # from the input example given to log_model
    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "trials.csv"))
    assert sorted(table["run_id"]) == sorted(t.info.run_id for t in trials)


def _grid(**options):
    return tracked_sampler(
        ParameterGrid({"units": [8, 16, 32]}),
        objective=options.pop("objective", "acc"),
        direction=options.pop("direction", "maximize"),
        **options,
    )


def test_an_exception_in_the_body_fails_that_trial_and_propagates(
    client: MlflowClient, tracking_uri: str
) -> None:
    error = RuntimeError("shape mismatch in my training code")
    with pytest.raises(RuntimeError) as raised, _grid(experiment_name="fails") as study:
        for params, trial in study:
            if params["units"] == 16:
                raise error
            trial.log(acc=params["units"] / 100)
    assert raised.value is error
    parent, trials = study_runs(client, "fails")
    assert [t.info.status for t in trials] == ["FINISHED", "FAILED"]
    assert parent.info.status == "FAILED"
    assert trials[1].data.tags[names.TAG_STATE] == names.STATE_FAIL
    assert trials[1].data.tags[names.TAG_ERROR_CLASS] == "RuntimeError"
    text = Path(client.download_artifacts(trials[1].info.run_id, "error.txt")).read_text()
    # The real traceback: the file and line of the body, and the message.
    assert "Traceback" in text and __file__ in text and "raise error" in text
    assert "shape mismatch in my training code" in text
    assert_no_running(client, "fails")


@pytest.mark.parametrize(
    "stop",
    ["break", "islice", "zip", "next", "del"],
)
def test_every_way_of_leaving_the_loop_ends_it_faithfully(
    client: MlflowClient, tracking_uri: str, stop: str
) -> None:
    with _grid(experiment_name=stop, direction="minimize", objective="loss") as study:
        if stop == "break":
            for params, trial in study:
                trial.log(loss=1 / params["units"])
                if params["units"] == 16:
                    break
        elif stop == "islice":
            for params, trial in itertools.islice(study, 2):
                trial.log(loss=1 / params["units"])
        elif stop == "zip":
            for _, (params, trial) in zip(range(2), study, strict=False):
                trial.log(loss=1 / params["units"])
        elif stop == "next":
            samples = iter(study)
            for _ in range(2):
                params, trial = next(samples)
                trial.log(loss=1 / params["units"])
        else:  # the loop's iterator is dropped mid-study
            samples = iter(study)
            params, trial = next(samples)
            trial.log(loss=1 / params["units"])
            params, trial = next(samples)
            trial.log(loss=1 / params["units"])
            del samples
    parent, trials = study_runs(client, stop)
    assert [t.info.status for t in trials] == ["FINISHED", "FINISHED"]
    assert [t.data.tags[names.TAG_STATE] for t in trials] == ["COMPLETE", "COMPLETE"]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_loss"] == pytest.approx(1 / 16)  # minimize: 16 beats 8


def test_ctrl_c_in_the_body_kills_the_trial_and_the_study(
    client: MlflowClient, tracking_uri: str
) -> None:
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), _grid(experiment_name="ctrl-c") as study:
        for params, trial in study:
            trial.log(step=0, loss=1.0)
            if params["units"] == 16:
                os.kill(os.getpid(), signal.SIGINT)
            trial.log(acc=0.5)
    parent, trials = study_runs(client, "ctrl-c")
    assert [t.info.status for t in trials] == ["FINISHED", "KILLED"]
    assert parent.info.status == "KILLED"
    assert signal.getsignal(signal.SIGINT) is handler  # never replaced


def test_a_bare_loop_still_works_and_says_how_to_scope_it(
    client: MlflowClient, tracking_uri: str
) -> None:
    with pytest.warns(FutureWarning, match="with tracked_sampler"):
        for params, trial in _grid(experiment_name="bare"):
            trial.log(acc=params["units"])
    parent, trials = study_runs(client, "bare")
    assert [t.info.status for t in trials] == ["FINISHED"] * 3
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_acc"] == 32


def test_live_steps_and_mlflow_calls_land_on_the_trial_run(
    client: MlflowClient, tracking_uri: str
) -> None:
    loop = tracked_sampler(
        ParameterGrid({"lr": [0.1, 0.01]}),
        objective="acc",
        direction="maximize",
        experiment_name="live",
    )
    with loop as study:
        for _params, trial in study:
            for epoch in range(3):
                trial.log(step=epoch, loss=1.0 / (epoch + 1))
            mlflow.log_param("note", "from the body")  # MLflow's active run is the trial's
            assert mlflow.active_run().info.run_id == trial.run_id
            trial.log(acc=0.9)
    _, trials = study_runs(client, "live")
    for run in trials:
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in history] == [0, 1, 2]
        assert run.data.params["note"] == "from the body"
    assert mlflow.active_run() is None


def test_fast_live_steps_are_written_together_and_a_slow_step_shows_while_it_runs(
    client: MlflowClient, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps logged 10 ms apart reach the store together, in one write; a step followed by a
    long pause is in the store before the trial ends."""
    batches: list[str] = []
    real = MlflowClient.log_batch

    def counting(self: MlflowClient, run_id: str, *args: object, **kwargs: object) -> object:
        batches.append(run_id)
        return real(self, run_id, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", counting)
    seen_while_running: list[int] = []
    loop = tracked_sampler(
        ParameterGrid({"lr": [0.1]}), objective="acc", direction="maximize", experiment_name="b"
    )
    with loop as study:
        for _params, trial in study:
            for epoch in range(40):
                trial.log(step=epoch, loss=1.0 / (epoch + 1))
                time.sleep(0.01)  # short epochs: the writer would keep up with each one
            trial.log(step=40, loss=0.01)
            deadline = time.monotonic() + coalesce.LIVE_HOLD_S + 3.0
            while time.monotonic() < deadline and not seen_while_running:
                time.sleep(0.1)  # a long epoch: the UI shows what came before it
                history = client.get_metric_history(trial.run_id, "loss")
                seen_while_running = [m.step for m in history]
            trial.log(acc=0.9)
    assert seen_while_running == list(range(41))  # every step so far, in one write
    _, (run,) = study_runs(client, "b")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(41))
    assert run.data.metrics["acc"] == 0.9 and run.info.status == "FINISHED"
    # 41 steps and the final values in two batches (one held, one at the end), not 42.
    assert batches.count(run.info.run_id) == 2


def test_the_study_run_shows_the_best_so_far_while_the_study_runs(
    client: MlflowClient, tracking_uri: str
) -> None:
    """Each new best is on the study run while the study runs, not only at close."""
    shown: list[float | None] = []
    loop = tracked_sampler(
        ParameterGrid({"acc": [0.5, 0.6, 0.1, 0.2]}),
        objective="acc",
        direction="maximize",
        experiment_name="best-so-far",
    )
    with loop as study:
        for params, trial in study:
            # synchronous (the default): a new best is in the store with the trial that
            # found it, before the loop hands out the next candidate
            parent = client.get_run(study.study_run_id)
            shown.append(parent.data.metrics.get("best_acc"))
            trial.log(acc=params["acc"])
    # Before trial 0: nothing; then each new best as soon as it is found.
    assert shown == [None, 0.5, 0.6, 0.6]
    parent, _ = study_runs(client, "best-so-far")
    assert parent.data.metrics["best_acc"] == 0.6


def test_an_objective_that_is_never_logged_is_reported_once(
    client: MlflowClient, tracking_uri: str
) -> None:
    warning = pytest.warns(MlflowHpoWarning, match="did not log the objective score")
    with warning as caught, _grid(experiment_name="unlogged", objective="score") as study:
        for params, trial in study:
            trial.log(acc=params["units"])
    assert len([w for w in caught if "objective" in str(w.message)]) == 1
    parent, _ = study_runs(client, "unlogged")
    assert names.TAG_BEST_TRIAL_RUN_ID not in parent.data.tags


def test_bad_input_is_refused_before_any_run(client: MlflowClient, tracking_uri: str) -> None:
    with pytest.raises(ConfigurationError, match="ParameterSampler"):
        tracked_sampler({"C": [1, 2]}, objective="acc", direction="maximize")
    with pytest.raises(ConfigurationError, match="direction"):
        tracked_sampler(ParameterGrid({"C": [1]}), objective="acc", direction="up")
    with pytest.raises(ConfigurationError, match="the metric that ranks trials"):
        tracked_sampler(ParameterGrid({"C": [1]}), objective="", direction="maximize")
    error = pytest.raises(ConfigurationError, match="an item of type int")
    with error, tracked_sampler([1, 2], objective="acc", direction="maximize") as study:
        for _ in study:
            pass
    assert client.get_experiment_by_name("bad") is None

"""The Ray Tune backend on a real local Ray (2 CPUs) and a real SQLite MLflow store."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Quiet and offline, read when Ray starts.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import logging
import sys

import joblib
import mlflow
import numpy
import pytest
import ray
from conftest import assert_no_running, hyperparameters, study_runs
from mlflow import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from mlflow_hpo import names
from mlflow_hpo.errors import ConfigurationError
from mlflow_hpo.ray import MlflowTuneCallback
from mlflow_hpo.registry import load_best, promote_best

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _ray() -> Iterator[None]:
    # The trainables below live in this module, which Ray's workers cannot import.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    yield
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(autouse=True)
def _signal_handlers() -> Iterator[None]:
    # fit() installs Tune's SIGINT/SIGUSR1 handlers and leaves them installed (ray 2.60,
    # ray.tune.tune._setup_signal_catching): later tests need Python's own back.
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGUSR1)}
    yield
    for number, handler in handlers.items():
        signal.signal(number, handler)


def _tuner(
    trainable: Any,
    space: dict[str, Any],
    callbacks: list[tune.Callback],
    storage: Path,
    name: str,
    **tune_config: Any,
) -> tune.Tuner:
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(metric="score", mode="max", reuse_actors=True, **tune_config),
        run_config=tune.RunConfig(
            name=name, storage_path=str(storage), callbacks=callbacks, verbose=0
        ),
    )


def _scores(config: dict[str, Any]) -> None:
    """Reports ``x * step`` for ``n`` steps; ``x > 0.9`` fails at step 2."""
    for step in range(1, config["n"] + 1):
        if config["x"] > 0.9 and step == 2:
            raise ValueError(f"boom from trial x={config['x']}")
        tune.report({"score": config["x"] * step, "extra": {"loss": 1.0 / step}})


def test_trials_nest_with_scheduler_stops_errors_and_optuna(
    client: MlflowClient, tracking_uri: str, tmp_path: Path
) -> None:
    space = {"x": tune.uniform(0.0, 1.0), "n": tune.choice([2, 4]), "seed": 7}
    # One trial at a time, so ASHA decides the same way every run: the first trial goes to
    # max_t, the second fails, the third is cut at the first rung, the fourth returns by
    # itself before max_t.
    points = [{"x": 0.8, "n": 4}, {"x": 0.95, "n": 4}, {"x": 0.1, "n": 4}, {"x": 0.9, "n": 2}]
    callback = MlflowTuneCallback(
        "score", "max", max_t=4, param_space=space, experiment_name="ray-exp"
    )
    results = _tuner(
        _scores,
        space,
        [callback],
        tmp_path / "ray",
        "states",
        search_alg=OptunaSearch(points_to_evaluate=points, seed=0),
        scheduler=ASHAScheduler(max_t=4, grace_period=1, reduction_factor=2),
        num_samples=4,
        max_concurrent_trials=1,
    ).fit()

    parent, trials = study_runs(client, "ray-exp")
    assert parent.info.run_id == callback.study_run_id
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[names.TAG_BACKEND] == "ray_tune"
    assert parent.data.tags[names.TAG_STUDY_NAME] == "states"
    assert parent.data.tags[names.TAG_RAY_EXPERIMENT] == str(tmp_path / "ray" / "states")
    assert parent.data.tags[names.TAG_OBJECTIVES] == "score"
    assert parent.data.tags[names.TAG_DIRECTIONS] == "maximize"
    full, failed, cut, returned = trials
    assert [t.info.status for t in trials] == ["FINISHED", "FAILED", "KILLED", "FINISHED"]
    assert [t.data.tags[names.TAG_STATE] for t in trials] == [
        "COMPLETE", "FAIL", "PRUNED", "COMPLETE",
    ]  # fmt: skip
    ray_ids = {r.metrics["trial_id"] for r in results}
    assert {t.data.tags[names.TAG_RAY_TRIAL_ID] for t in trials} == ray_ids

    # Stopped by ASHA at max_t: complete, with its last value as the objective.
    assert full.data.metrics["score"] == pytest.approx(3.2)
    history = client.get_metric_history(full.info.run_id, "epoch_score")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(full.info.run_id, "extra/loss")][-1] == 4
    record = hyperparameters(full)
    assert record["values"] == {"x": 0.8, "n": 4}  # typed: n stays an int
    assert record["distributions"]["x"] == {"type": "float", "low": 0.0, "high": 1.0, "log": False}
    assert record["backend"] == "ray_tune"
    assert full.data.params["seed"] == "7"  # constants of the config are params too

    # Stopped by ASHA at its first rung: pruned, no objective value.
    assert "score" not in cut.data.metrics
    assert cut.data.tags[names.TAG_RAY_STOPPED_AT] == "1"
    assert cut.data.tags[names.TAG_PRUNED_STEP] == "1"

    # Returned by itself before max_t: complete.
    assert returned.data.metrics["score"] == pytest.approx(1.8)
    assert names.TAG_RAY_STOPPED_AT not in returned.data.tags

    # Errored: FAILED, with the worker's traceback (no colour codes) in error.txt.
    assert failed.data.tags[names.TAG_ERROR_CLASS] == "ValueError"
    error = Path(client.download_artifacts(failed.info.run_id, "error.txt")).read_text()
    assert "ValueError: boom from trial x=0.95" in error
    assert "\x1b[" not in error

    assert parent.data.metrics["n_trials_complete"] == 2
    assert parent.data.metrics["n_trials_pruned"] == 1
    assert parent.data.metrics["n_trials_fail"] == 1
    assert parent.data.metrics["best_score"] == pytest.approx(3.2)
    assert parent.data.tags[names.TAG_BEST_TRIAL_RUN_ID] == full.info.run_id
    table = Path(client.download_artifacts(parent.info.run_id, "trials.csv")).read_text()
    rows = list(csv.DictReader(io.StringIO(table)))
    assert [r["state"] for r in rows] == ["COMPLETE", "FAIL", "PRUNED", "COMPLETE"]
    assert callback.warning_count == 0
    assert_no_running(client, "ray-exp")


def _checkpointed(config: dict[str, Any]) -> None:
    """Three steps with a checkpoint each; resumes from its checkpoint after a restore."""
    import time

    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = json.loads(Path(folder, "state.json").read_text())["step"]
    for step in range(start + 1, 4):
        time.sleep(0.3)
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "state.json").write_text(json.dumps({"step": step}))
            checkpoint = tune.Checkpoint.from_directory(folder)
            tune.report({"score": config["x"] * step}, checkpoint=checkpoint)


class _InterruptOnce(tune.Callback):
    """Interrupts the experiment (as Ctrl-C does) when a trial reports its last step, before
    Tune sees it return, so its restored trainable has nothing left to report; the other
    trial running then is cut mid-way and reports its last steps again after the restore.
    Once: ``Tuner.restore`` brings this callback back, and the marker file keeps it quiet."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        if result["training_iteration"] == 3 and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGUSR1)


def test_restore_resumes_into_the_same_parent_with_each_trial_once(
    client: MlflowClient, tracking_uri: str, tmp_path: Path
) -> None:
    space = {"x": tune.grid_search([0.1, 0.2, 0.3, 0.4])}
    callback = MlflowTuneCallback("score", "max", experiment_name="ray-resume")
    interrupt = _InterruptOnce(tmp_path / "interrupted")
    tuner = _tuner(
        _checkpointed, space, [callback, interrupt], tmp_path / "ray", "resume",
        max_concurrent_trials=2,
    )  # fmt: skip
    tuner.fit()
    parent, first = study_runs(client, "ray-resume")
    assert parent.info.status == "KILLED"
    assert "KILLED" in {t.info.status for t in first}  # a trial cut short by the interrupt
    assert "RUNNING" not in {t.info.status for t in first}
    path = str(tmp_path / "ray" / "resume")
    assert tune.Tuner.can_restore(path)

    results = tune.Tuner.restore(path, _checkpointed, resume_unfinished=True).fit()

    assert results.num_errors == 0 and len(results) == 4
    again, trials = study_runs(client, "ray-resume")
    assert again.info.run_id == parent.info.run_id
    assert again.info.status == "FINISHED"
    assert sorted(t.data.tags[names.TAG_RAY_TRIAL_ID] for t in trials) == sorted(
        r.metrics["trial_id"] for r in results
    )  # every trial exactly once
    assert [t.info.status for t in trials] == ["FINISHED"] * 4
    assert [t.data.params["trial_number"] for t in trials] == ["0", "1", "2", "3"]
    for trial in trials:
        x = float(trial.data.params["x"])
        assert trial.data.metrics["score"] == pytest.approx(3 * x)
        steps = [m.step for m in client.get_metric_history(trial.info.run_id, "epoch_score")]
        assert sorted(steps) == [1, 2, 3]  # steps reported again after the restore: once
    assert again.data.metrics["n_trials_complete"] == 4
    assert again.data.metrics["n_trials_killed"] == 0
    assert again.data.metrics["best_score"] == pytest.approx(1.2)
    assert_no_running(client, "ray-resume")


def _fit_digits(config: dict[str, Any]) -> None:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    model = LogisticRegression(C=config["C"], max_iter=200).fit(x[:1000], y[:1000])
    with tempfile.TemporaryDirectory() as folder:
        joblib.dump(model, os.path.join(folder, "model.joblib"))
        numpy.save(os.path.join(folder, "input_example.npy"), x[:3])  # for its signature
        tune.report(
            {"score": float(model.score(x[1000:], y[1000:]))},
            checkpoint=tune.Checkpoint.from_directory(folder),
        )


def test_checkpointed_model_is_logged_promoted_and_loaded(
    client: MlflowClient, tracking_uri: str, tmp_path: Path
) -> None:
    from sklearn.datasets import load_digits

    callback = MlflowTuneCallback("score", "max", experiment_name="ray-models", log_models="all")
    space = {"C": tune.grid_search([1e-4, 1.0])}
    results = _tuner(_fit_digits, space, [callback], tmp_path / "ray", "models").fit()

    parent, trials = study_runs(client, "ray-models")
    assert parent.info.status == "FINISHED" and len(trials) == 2
    assert all(names.TAG_MODEL_URI in t.data.tags for t in trials)  # log_models="all"
    promotion = promote_best(callback.study_run_id, "ray-digits")
    best = results.get_best_result()
    assert promotion.value == pytest.approx(best.metrics["score"])
    signature = mlflow.models.get_model_info(promotion.uri).signature
    assert signature is not None and signature.inputs.inputs[0].shape == (-1, 64)
    model = load_best("ray-digits")
    x, y = load_digits(return_X_y=True)
    assert model.score(x[1000:], y[1000:]) == pytest.approx(best.metrics["score"])
    assert_no_running(client, "ray-models")


@pytest.mark.parametrize(
    ("arguments", "argument"),
    [
        ({"experiment_name": "digits"}, "metric"),  # Tune does not tell callbacks
        ({"metric": "score"}, "mode"),
        ({"metric": "", "mode": "max"}, "metric"),
        ({"metric": "score", "mode": "maximize"}, "mode"),
        ({"metric": "score", "mode": "max", "max_t": 0}, "max_t"),
        ({"metric": "score", "mode": "max", "param_space": [1]}, "param_space"),
        ({"metric": "score", "mode": "max", "log_models": "some"}, "log_models"),
        ({"metric": "score", "mode": "max", "experiment": "x"}, "option"),
    ],
)
def test_bad_arguments_raise_before_any_run(
    client: MlflowClient, arguments: dict[str, Any], argument: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        MlflowTuneCallback(**arguments)
    assert raised.value.argument == argument
    assert client.search_experiments(filter_string="name != 'Default'") == []


def test_the_callback_pickles_as_its_arguments() -> None:
    """``Tuner()`` pickles the callback into ``tuner.pkl`` before anything runs."""
    callback = MlflowTuneCallback("score", "min", max_t=3, verbose=0)
    copy = pickle.loads(pickle.dumps(callback))
    assert copy.__getstate__() == callback.__getstate__()
    assert copy.study_run_id is None

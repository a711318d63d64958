"""``mlflow_hpo.optuna.MLflowCallback`` against the real optuna-integration callback."""

from __future__ import annotations

import threading
import warnings

import mlflow
import optuna
import pytest
from conftest import all_runs
from mlflow import MlflowClient
from optuna_integration.mlflow import MLflowCallback as UpstreamCallback

from mlflow_hpo.errors import ConfigurationError
from mlflow_hpo.optuna import MLflowCallback

optuna.logging.set_verbosity(optuna.logging.ERROR)


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0, 1)
    trial.suggest_categorical("act", ["relu", "tanh"])
    trial.set_user_attr("owner", "me")
    return x


def _shape(client: MlflowClient, experiment: str) -> list[tuple]:
    """What a user sees per run: name, param keys, metric keys, tag keys (without MLflow's
    own system tags and mlflow-hpo's bookkeeping tags)."""
    return sorted(
        (
            r.info.run_name,
            sorted(r.data.params),
            sorted(r.data.metrics),
            sorted(k for k in r.data.tags if not k.startswith(("mlflow.", "mlflow_hpo."))),
        )
        for r in all_runs(client, experiment)
    )


def test_drop_in_logs_the_same_keys_tags_and_run_names(
    client: MlflowClient, tracking_uri: str
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        upstream = UpstreamCallback(tracking_uri=tracking_uri, metric_name="acc")
    ours = MLflowCallback(tracking_uri=tracking_uri, metric_name="acc")
    for name, callback in (("upstream", upstream), ("ours", ours)):
        study = optuna.create_study(study_name=name, sampler=optuna.samplers.RandomSampler(0))
        study.optimize(_objective, n_trials=3, callbacks=[callback])
    # create_experiment=True: one experiment per study name, as upstream does.
    assert _shape(client, "upstream") == _shape(client, "ours")
    run = all_runs(client, "ours")[0]
    # The journal's bookkeeping: which study and trial a run is, and which process wrote it.
    ours = {k for k in run.data.tags if k.startswith("mlflow_hpo.")}
    assert ours == {"mlflow_hpo.study_key", "mlflow_hpo.trial_key", "mlflow_hpo.owner"}
    assert run.data.tags["direction"] == "MINIMIZE"
    assert run.data.tags["state"] == "COMPLETE"
    assert run.data.tags["owner"] == "me"
    assert "FloatDistribution" in run.data.tags["x_distribution"]


def test_drop_in_fixes_states_and_pruned_values(client: MlflowClient, tracking_uri: str) -> None:
    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0, 1)
        trial.report(0.5, 0)
        if trial.number == 1:
            raise optuna.TrialPruned()
        if trial.number == 2:
            raise ValueError("bad")
        return 1.0

    study = optuna.create_study(study_name="states")
    study.optimize(objective, n_trials=3, callbacks=[MLflowCallback()], catch=(ValueError,))
    runs = {r.info.run_name: r for r in all_runs(client, "states")}
    assert runs["0"].info.status == "FINISHED"
    assert runs["1"].info.status == "KILLED"
    assert "value" not in runs["1"].data.metrics  # upstream logs the last report as "value"
    assert runs["2"].info.status == "FAILED"


def test_drop_in_runs_trials_in_parallel_and_keeps_them_nested(
    client: MlflowClient, tracking_uri: str
) -> None:
    barrier = threading.Barrier(2, timeout=60)
    callback = None

    def objective(trial: optuna.Trial) -> float:
        if trial.number < 2:
            barrier.wait()  # only passes if two trials are inside at once
        mlflow.log_metric("inside", trial.number)
        return trial.suggest_float("x", 0, 1)

    mlflow.set_experiment("nested")
    with mlflow.start_run(run_name="outer") as outer:
        callback = MLflowCallback(create_experiment=False, mlflow_kwargs={"nested": True})
        study = optuna.create_study(study_name="par")
        study.optimize(
            callback.track_in_mlflow()(objective), n_trials=4, n_jobs=2, callbacks=[callback]
        )
    children = [r for r in all_runs(client, "nested") if r.info.run_id != outer.info.run_id]
    assert len(children) == 4
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == outer.info.run_id
        assert child.data.metrics["inside"] == float(child.data.tags["number"])
        assert child.info.status == "FINISHED"


def test_drop_in_ends_the_run_of_an_uncaught_exception(
    client: MlflowClient, tracking_uri: str
) -> None:
    callback = MLflowCallback()

    @callback.track_in_mlflow()
    def objective(trial: optuna.Trial) -> float:
        raise RuntimeError("user bug")

    study = optuna.create_study(study_name="boom")
    with pytest.raises(RuntimeError, match="user bug"):
        study.optimize(objective, n_trials=1, callbacks=[callback])
    (run,) = all_runs(client, "boom")
    assert run.info.status == "FAILED"


def test_drop_in_validates_arguments() -> None:
    with pytest.raises(ConfigurationError, match="metric_name"):
        MLflowCallback(metric_name=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="mlflow_kwargs"):
        MLflowCallback(mlflow_kwargs=["nested"])  # type: ignore[arg-type]

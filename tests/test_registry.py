"""Promote, load and rebuild the best trial of each backend, with one shared space builder."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import optuna
import pytest
from click.testing import CliRunner
from conftest import study_runs
from mlflow import MlflowClient
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

import mlflow_hpo
from mlflow_hpo import names, space
from mlflow_hpo.cli import cli
from mlflow_hpo.errors import ConfigurationError
from mlflow_hpo.keras_tuner import RandomSearch
from mlflow_hpo.layers import LayerGuard
from mlflow_hpo.optuna import MlflowStudyCallback
from mlflow_hpo.registry import RebuildError, load_best, promote_best
from mlflow_hpo.sklearn import TrackedSampler, tracked_sampler

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, ...]:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8, 1).astype("float32")
    return x[:400], y[:400], x[400:560], y[400:560]


@space.builder
def build(hp: space.HP) -> keras.Model:
    """One builder for Optuna, Keras Tuner and the scikit-learn sampler."""
    model = keras.Sequential([keras.Input((8, 8, 1))])
    guard = LayerGuard(model)
    for i in range(1, hp.int("n_blocks", 1, 3) + 1):
        guard.add(keras.layers.Conv2D(4, hp.choice("kernel", [3, 5])), name=f"Conv_L{i}")
    model.add(keras.layers.Flatten())
    if hp.boolean("hidden"):
        model.add(keras.layers.Dense(16, activation="relu"))
    model.add(keras.layers.Dense(10, activation="softmax"))
    model.compile(
        keras.optimizers.Adam(hp.float("learning_rate", 1e-3, 3e-2, log=True)),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _val_accuracy(model: keras.Model, xv: np.ndarray, yv: np.ndarray) -> float:
    return float(model.evaluate(xv, yv, verbose=0)[1])


def _optuna_study(digits, experiment: str, log_models: str = "best", weights: bool = False):
    x, y, xv, yv = digits

    def objective(trial: optuna.Trial) -> float:
        model = build(trial)
        model.fit(x, y, epochs=2, batch_size=64, verbose=0)
        if weights:
            mlflow_hpo.log_weights(model)
        return _val_accuracy(model, xv, yv)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    with MlflowStudyCallback(
        experiment_name=experiment, metric_name="val_accuracy", log_models=log_models
    ) as tracker:
        study.optimize(tracker.track(objective), n_trials=3, callbacks=[tracker])
    return tracker.parent_run_id, study


def test_optuna_promote_load_rebuild_and_promote_again(
    client: MlflowClient, tracking_uri: str, digits
) -> None:
    _, _, xv, yv = digits
    parent_id, study = _optuna_study(digits, "optuna-reg")
    done = promote_best(parent_id, "digits-cnn")
    assert done.created and done.moved and done.version == "1"
    assert done.value == pytest.approx(study.best_value)
    version = client.get_model_version_by_alias("digits-cnn", "champion")
    trial_run = client.get_run(version.tags[names.TAG_VERSION_TRIAL_RUN_ID])
    assert int(trial_run.data.params["trial_number"]) == study.best_trial.number
    assert version.tags[names.TAG_BACKEND] == "optuna"
    assert version.tags[names.TAG_VERSION_STUDY_RUN_ID] == parent_id
    assert "learning_rate" in version.description
    model = load_best("digits-cnn")
    assert isinstance(model, keras.Model)
    assert _val_accuracy(model, xv, yv) == pytest.approx(study.best_value, abs=1e-6)
    rebuilt = mlflow_hpo.rebuild(build, trial_run)
    assert _val_accuracy(rebuilt, xv, yv) == pytest.approx(study.best_value, abs=1e-6)
    again = promote_best(parent_id, "digits-cnn")
    assert not again.created and again.version == "1"
    assert len(client.search_model_versions("name = 'digits-cnn'")) == 1
    pyfunc = load_best("digits-cnn", flavor="pyfunc")
    assert np.asarray(pyfunc.predict(xv[:5])).shape == (5, 10)
    with pytest.raises(ConfigurationError, match="alias='production'"):
        load_best("digits-cnn", alias="production")  # names the promote_best call that sets it
    with pytest.raises(ConfigurationError, match="'native' or 'pyfunc'"):
        load_best("digits-cnn", flavor="onnx")


def test_keras_tuner_promote_load_and_report(
    client: MlflowClient, tracking_uri: str, digits, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_HPO_REPORTS", "1")  # Keras Tuner importances, via Optuna
    x, y, xv, yv = digits
    tuner = RandomSearch(
        build,
        objective="val_accuracy",
        max_trials=2,
        seed=0,
        directory=str(tmp_path / "kt"),
        project_name="reg",
        experiment_name="kt-reg",
    )
    tuner.search(x, y, epochs=2, validation_data=(xv, yv), verbose=0)
    tuner.flush()  # the reports are drawn after the study run's status is written
    parent, _ = study_runs(client, "kt-reg")
    done = promote_best(parent.info.run_id, "digits-kt")
    best = client.get_run(done.trial_run_id)
    assert done.value == pytest.approx(tuner.oracle.get_best_trials(1)[0].score)
    model = load_best("digits-kt")
    assert _val_accuracy(model, xv, yv) == pytest.approx(best.data.metrics["val_accuracy"], 1e-6)
    rebuilt = mlflow_hpo.rebuild(build, best)  # Keras Tuner HyperParameters with the values
    assert _val_accuracy(rebuilt, xv, yv) == pytest.approx(done.value, abs=1e-6)
    report = client.download_artifacts(parent.info.run_id, "reports/param_importances.json")
    importances = json.loads(Path(report).read_text())["data"][0]
    assert "learning_rate" in importances["y"]  # Keras Tuner's trials, ranked by Optuna
    curves = client.download_artifacts(parent.info.run_id, "reports/intermediate_values.json")
    epochs = [t for t in json.loads(Path(curves).read_text())["data"] if t.get("x")]
    assert len(epochs) == 2 and all(list(t["x"]) == [0, 1] for t in epochs)


def _sampler(sampler: object, name: str) -> TrackedSampler:
    return tracked_sampler(
        sampler, objective="val_accuracy", direction="maximize", experiment_name=name
    )


def test_sklearn_sampler_promote_load_and_only_if_better(
    client: MlflowClient, tracking_uri: str, digits
) -> None:
    x, y, xv, yv = digits
    flat, flat_v = x.reshape(len(x), -1), xv.reshape(len(xv), -1)

    @space.builder
    def make(hp: space.HP) -> LogisticRegression:
        return LogisticRegression(C=hp.float("C", 1e-4, 10.0, log=True), max_iter=300)

    def run_study(name: str, seed: int, n_iter: int) -> str:
        with _sampler(make.sampler(n_iter, seed), name) as study:
            for _, trial in study:
                model = trial.build(make).fit(flat, y)
                trial.log(val_accuracy=model.score(flat_v, yv))
                trial.log_model(model)
        return study_runs(client, name)[0].info.run_id

    first = promote_best(run_study("sk-a", 0, 1), "digits-lr", only_if_better=True)
    assert load_best("digits-lr").score(flat_v, yv) == pytest.approx(first.value)
    # A study whose best is worse moves nothing and registers nothing.
    worse = []
    with _sampler([{"C": 1e-4}], "sk-b") as study:
        for _, trial in study:
            model = make({"C": 1e-4}).fit(flat, y)
            trial.log(val_accuracy=model.score(flat_v, yv))
            trial.log_model(model)
            worse.append(model.score(flat_v, yv))
    assert worse[0] < first.value
    kept = promote_best("list", "digits-lr", experiment_name="sk-b", only_if_better=True)
    assert not kept.moved and kept.version == first.version
    assert len(client.search_model_versions("name = 'digits-lr'")) == 1
    # Without only_if_better the alias follows the latest promotion.
    moved = promote_best("list", "digits-lr", experiment_name="sk-b")
    assert moved.moved and moved.version == "2"
    assert str(client.get_model_version_by_alias("digits-lr", "champion").version) == "2"


def test_same_builder_tuned_by_the_sampler_rebuilds_too(
    client: MlflowClient, tracking_uri: str, digits
) -> None:
    x, y, xv, yv = digits
    with _sampler(build.sampler(2, 0), "sampler-keras") as study:
        for _params, trial in study:
            model = trial.build(build)
            model.fit(x, y, epochs=2, batch_size=64, verbose=0)
            trial.log(val_accuracy=_val_accuracy(model, xv, yv))
    parent, _ = study_runs(client, "sampler-keras")
    done = promote_best(parent.info.run_id, "digits-sampler")
    assert _val_accuracy(load_best("digits-sampler"), xv, yv) == pytest.approx(done.value, 1e-6)
    rebuilt = mlflow_hpo.rebuild(build, done.trial_run_id)
    assert _val_accuracy(rebuilt, xv, yv) == pytest.approx(done.value, abs=1e-6)


def test_weights_only_trials_need_the_builder_to_be_promoted(
    client: MlflowClient, tracking_uri: str, digits
) -> None:
    _, _, xv, yv = digits
    parent_id, study = _optuna_study(digits, "weights", log_models="none", weights=True)
    with pytest.raises(RebuildError, match="builder="):
        promote_best(parent_id, "digits-weights")
    done = promote_best(parent_id, "digits-weights", builder=build)
    assert _val_accuracy(load_best("digits-weights"), xv, yv) == pytest.approx(
        study.best_value, abs=1e-6
    )
    assert done.created


def test_clear_errors_name_the_fix(client: MlflowClient, tracking_uri: str, digits) -> None:
    parent_id, _ = _optuna_study(digits, "no-models", log_models="none")
    with pytest.raises(RebuildError, match="log_models='best'"):
        promote_best(parent_id, "nothing")

    study = optuna.create_study()
    with MlflowStudyCallback(experiment_name="all-failed", metric_name="loss") as tracker:

        def broken(trial: optuna.Trial) -> float:
            raise ValueError("diverged")

        study.optimize(tracker.track(broken), n_trials=2, callbacks=[tracker], catch=(ValueError,))
    with pytest.raises(RebuildError, match="no FINISHED trial"):
        promote_best(tracker.parent_run_id, "nothing")
    with pytest.raises(ConfigurationError, match="Promote a study first"):
        load_best("never-promoted")
    with pytest.raises(ConfigurationError, match="experiment_name"):
        promote_best("not-a-run-id", "x")
    assert client.search_registered_models() == []


def test_cli_show_and_promote(client: MlflowClient, tracking_uri: str, digits) -> None:
    parent_id, study = _optuna_study(digits, "cli")
    runner = CliRunner()
    shown = runner.invoke(cli, ["show", parent_id, "--tracking-uri", tracking_uri])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert "objective val_accuracy (maximize); 3 trials: 3 COMPLETE" in lines[1]
    assert lines[2].split()[:3] == ["trial", "state", "val_accuracy"]
    assert lines[3].split()[0] == str(study.best_trial.number)  # best first
    assert "learning_rate" in lines[2]
    promoted = runner.invoke(
        cli, ["promote", parent_id, "--model-name", "cli-model", "--tracking-uri", tracking_uri]
    )
    assert promoted.exit_code == 0, promoted.output
    assert "models:/cli-model@champion" in promoted.output
    bad = runner.invoke(cli, ["promote", "missing", "--model-name", "m"])
    assert bad.exit_code != 0 and "experiment_name" in bad.output


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_show_ranks_a_study_larger_than_it_reads_exactly(
    client: MlflowClient, tracking_uri: str, direction: str
) -> None:
    """``show`` narrows a large study to a bound before the store orders it (ordering every
    run by a metric is slow); the top rows must still be exactly the best trials, ties in
    trial order."""
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(3))
    with MlflowStudyCallback(experiment_name=f"big-{direction}", tracking_uri=tracking_uri) as cb:
        # Values with many ties, well spread: 0.0 .. 5.0 in steps of 0.5.
        study.optimize(
            lambda t: round(t.suggest_float("x", 0, 5) * 2) / 2, n_trials=60, callbacks=[cb]
        )
    shown = CliRunner().invoke(
        cli, ["show", cb.study_run_id, "--top", "4", "--tracking-uri", tracking_uri]
    )
    assert shown.exit_code == 0, shown.output
    numbers = [int(line.split()[0]) for line in shown.output.splitlines()[3:]]
    sign = 1 if direction == "minimize" else -1
    expected = sorted(study.trials, key=lambda t: (sign * t.value, t.number))[:4]
    assert numbers == [t.number for t in expected]
    assert len({t.value for t in study.trials}) > 1 and len(study.trials) > 8 * 4  # narrowed


def test_promote_best_gives_a_tie_to_the_earliest_trial(
    client: MlflowClient, tracking_uri: str
) -> None:
    """Trials with the same value (the same configuration, trained the same way): the
    earliest one is the best, as in every tuning library, whatever order the store keeps."""
    x, y = load_digits(return_X_y=True)
    model = LogisticRegression(max_iter=50).fit(x[:200], y[:200])
    study = optuna.create_study(direction="maximize")

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("c", 0.1, 1.0)
        mlflow_hpo.log_model(model, input_example=x[:2])
        return 0.5

    with MlflowStudyCallback(
        experiment_name="ties", tracking_uri=tracking_uri, log_models="all"
    ) as tracker:
        study.optimize(tracker.track(objective), n_trials=4, callbacks=[tracker])
    done = promote_best(tracker.study_run_id, "ties")
    best = client.get_run(done.trial_run_id)
    assert best.data.params[names.PARAM_TRIAL_NUMBER] == "0" == str(study.best_trial.number)

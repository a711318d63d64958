"""Keras Tuner backend: tracked tuners on tiny digits models, asserted through MlflowClient."""

from __future__ import annotations

import csv
import gc
from pathlib import Path

import keras
import keras_tuner
import mlflow.keras
import numpy as np
import pytest
from conftest import assert_no_running, hyperparameters, output_exceptions, study_runs
from mlflow import MlflowClient
from sklearn.datasets import load_digits

from mlflow_hpo import names
from mlflow_hpo.errors import ConfigurationError
from mlflow_hpo.keras_tuner import (
    BayesianOptimization,
    GridSearch,
    Hyperband,
    MlflowTunerMixin,
    RandomSearch,
    SklearnTuner,
)
from mlflow_hpo.layers import LayerGuard

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    return (digits.images[:240] / 16.0).astype("float32")[..., None], digits.target[:240]


def build(hp: keras_tuner.HyperParameters) -> keras.Model:
    model = keras.Sequential([keras.Input((8, 8, 1))])
    guard = LayerGuard(model)
    for i in range(1, hp.Int("blocks", 1, 3) + 1):
        guard.add(
            keras.layers.Conv2D(4, hp.Choice("kernel", [2, 3]), activation="relu"),
            name=f"Conv_L{i}",
        )
        guard.add(keras.layers.MaxPooling2D(2), name=f"Pool_L{i}")
    model.add(keras.layers.Flatten())
    model.add(keras.layers.Dense(10, activation="softmax"))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def expected_exceptions(blocks: int, kernel: int) -> list[str]:
    model = keras.Sequential([keras.Input((8, 8, 1))])
    guard = LayerGuard(model)
    for i in range(1, blocks + 1):
        guard.add(keras.layers.Conv2D(4, kernel), name=f"Conv_L{i}")
        guard.add(keras.layers.MaxPooling2D(2), name=f"Pool_L{i}")
    return guard.exceptions


def test_hyperband_logs_epochs_continuations_exceptions_and_best_checkpoint(
    client: MlflowClient, tracking_uri: str, tmp_path: Path, data
) -> None:
    x, y = data
    tuner = Hyperband(
        build,
        objective="val_accuracy",
        max_epochs=3,
        factor=3,
        seed=1,
        directory=str(tmp_path / "kt"),
        project_name="hb",
        experiment_name="hb",
    )
    tuner.search(x, y, validation_split=0.25, verbose=0)

    parent, trials = study_runs(client, "hb")
    assert parent.data.tags[names.TAG_BACKEND] == "keras_tuner"
    assert parent.info.status == "FINISHED"
    assert len(trials) == len(tuner.oracle.trials)
    by_id = {t.data.params["trial_number"]: t for t in trials}
    continued = [t for t in trials if "tuner/trial_id" in t.data.params]
    assert continued, "Hyperband should continue at least one configuration"
    for run in continued:
        source = by_id[str(int(run.data.params["tuner/trial_id"]))]
        assert run.data.tags[names.TAG_CONTINUES_RUN_ID] == source.info.run_id
        assert run.data.params["tuner/initial_epoch"] != "0"
    for run in trials:
        trial = tuner.oracle.get_trial(f"{int(run.data.params['trial_number']):04d}")
        assert {"tuner/epochs", "tuner/bracket", "tuner/round"} <= set(run.data.params)
        epochs = int(run.data.params["tuner/epochs"]) - int(run.data.params["tuner/initial_epoch"])
        assert len(client.get_metric_history(run.info.run_id, "loss")) == epochs
        assert run.data.metrics["val_accuracy"] == pytest.approx(trial.score)
        blocks, kernel = trial.hyperparameters.get("blocks"), trial.hyperparameters.get("kernel")
        assert output_exceptions(run) == expected_exceptions(blocks, kernel)
        assert run.data.metrics[names.METRIC_N_OUTPUT_EXCEPTIONS] == len(
            expected_exceptions(blocks, kernel)
        )

    best = client.get_run(parent.data.tags[names.TAG_BEST_TRIAL_RUN_ID])
    best_trial = tuner.oracle.get_best_trials(1)[0]
    assert best.data.params["trial_number"] == str(int(best_trial.trial_id))
    model = mlflow.keras.load_model(best.data.tags[names.TAG_MODEL_URI])  # no builder needed
    _, accuracy = model.evaluate(x[180:], y[180:], verbose=0)
    assert accuracy == pytest.approx(best_trial.score, abs=1e-6)  # the best epoch's weights
    assert_no_running(client, "hb")


def test_random_search_conditional_scopes_log_only_active_values(
    client: MlflowClient, tracking_uri: str, tmp_path: Path, data
) -> None:
    x, y = data

    def conditional(hp: keras_tuner.HyperParameters) -> keras.Model:
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten()])
        kind = hp.Choice("kind", ["dense", "wide"])
        with hp.conditional_scope("kind", "dense"):
            if kind == "dense":
                model.add(keras.layers.Dense(hp.Int("units", 4, 8, step=4)))
        with hp.conditional_scope("kind", "wide"):
            if kind == "wide":
                model.add(keras.layers.Dense(hp.Int("width", 16, 32, step=16)))
        model.add(keras.layers.Dense(10, activation="softmax"))
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    tuner = RandomSearch(
        conditional,
        objective="val_accuracy",
        max_trials=4,
        seed=3,
        directory=str(tmp_path / "kt"),
        project_name="cond",
        experiment_name="cond",
        log_models="none",
    )
    tuner.search(x, y, validation_split=0.25, epochs=1, verbose=0)
    _, trials = study_runs(client, "cond")
    kinds = set()
    for run in trials:
        kind = run.data.params["kind"]
        kinds.add(kind)
        assert ("units" in run.data.params) == (kind == "dense")
        assert ("width" in run.data.params) == (kind == "wide")
        assert names.TAG_MODEL_URI not in run.data.tags
        space = hyperparameters(run)["distributions"]
        assert {p["config"]["name"] for p in space["space"]} >= {"kind", "units", "width"}
    assert kinds == {"dense", "wide"}


def test_build_that_raises_and_fit_that_fails_end_failed(
    client: MlflowClient, tracking_uri: str, tmp_path: Path, data
) -> None:
    x, y = data

    def flaky(hp: keras_tuner.HyperParameters) -> keras.Model:
        mode = hp.Choice("mode", ["ok", "bad_build", "bad_fit"])
        if mode == "bad_build":
            raise ValueError("cannot build this configuration")
        model = keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Flatten(),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
        # "bad_fit": a loss that cannot take integer labels against 10 outputs.
        bad = mode == "bad_fit"
        model.compile(
            "adam", "categorical_crossentropy" if bad else "sparse_categorical_crossentropy"
        )
        return model

    tuner = GridSearch(
        flaky,
        objective="val_loss",
        max_trials=3,
        max_retries_per_trial=0,
        max_consecutive_failed_trials=5,
        directory=str(tmp_path / "kt"),
        project_name="flaky",
        experiment_name="flaky",
    )
    tuner.search(x, y, validation_split=0.25, epochs=1, verbose=0)
    _, trials = study_runs(client, "flaky")
    by_mode = {run.data.params["mode"]: run for run in trials}
    assert by_mode["ok"].info.status == "FINISHED"
    for mode in ("bad_build", "bad_fit"):
        assert by_mode[mode].info.status == "FAILED"
        error = client.download_artifacts(by_mode[mode].info.run_id, names.ARTIFACT_ERROR)
        assert "Traceback" in Path(error).read_text()
    assert (
        "cannot build this configuration"
        in Path(
            client.download_artifacts(by_mode["bad_build"].info.run_id, names.ARTIFACT_ERROR)
        ).read_text()
    )


def test_resumed_search_reuses_parent_and_logs_no_trial_twice(
    client: MlflowClient, tracking_uri: str, tmp_path: Path, data
) -> None:
    x, y = data
    for max_trials in (2, 4):  # the second search continues the first (overwrite=False)
        tuner = BayesianOptimization(
            build,
            objective="val_accuracy",
            max_trials=max_trials,
            num_initial_points=2,
            directory=str(tmp_path / "kt"),
            project_name="resume",
            overwrite=False,
            experiment_name="resume",
            log_models="none",
        )
        tuner.search(x, y, validation_split=0.25, epochs=1, verbose=0)
    parent, trials = study_runs(client, "resume")
    assert gc.get_freeze_count() == 0  # the search's gc.freeze() was undone
    assert [t.data.params["trial_number"] for t in trials] == ["0", "1", "2", "3"]
    assert parent.info.status == "FINISHED"
    # overwrite=True starts a new study: a new parent run, not the old one.
    tuner = RandomSearch(
        build,
        objective="val_accuracy",
        max_trials=1,
        overwrite=True,
        directory=str(tmp_path / "kt"),
        project_name="resume",
        experiment_name="resume",
        log_models="none",
    )
    tuner.search(x, y, validation_split=0.25, epochs=1, verbose=0)
    with pytest.raises(AssertionError, match="expected one parent run, found 2"):
        study_runs(client, "resume")


def test_a_freeze_the_application_made_is_left_as_it_is(
    client: MlflowClient, tracking_uri: str, tmp_path: Path, data
) -> None:
    x, y = data
    gc.freeze()  # the application's own
    frozen = gc.get_freeze_count()
    try:
        tuner = RandomSearch(
            build,
            objective="val_accuracy",
            max_trials=1,
            directory=str(tmp_path / "kt"),
            project_name="frozen",
            experiment_name="frozen",
            log_models="none",
        )
        tuner.search(x, y, validation_split=0.25, epochs=1, verbose=0)
        assert gc.get_freeze_count() > frozen // 2  # not unfrozen (0) by the search
    finally:
        gc.unfreeze()
    assert keras.Model.fit.__module__.startswith("keras")  # the tuner never wrapped fit


def test_repeated_executions_keep_one_history_each(
    client: MlflowClient, tracking_uri: str, tmp_path: Path, data
) -> None:
    x, y = data
    tuner = RandomSearch(
        build,
        objective="val_accuracy",
        max_trials=1,
        executions_per_trial=2,
        directory=str(tmp_path / "kt"),
        project_name="exec",
        experiment_name="exec",
        log_models="none",
    )
    tuner.search(x, y, validation_split=0.25, epochs=2, verbose=0)
    _, (run,) = study_runs(client, "exec")
    for index in (0, 1):
        history = client.get_metric_history(run.info.run_id, f"execution_{index}/loss")
        assert [m.step for m in history] == [0, 1]
    trial = next(iter(tuner.oracle.trials.values()))
    assert output_exceptions(run) == expected_exceptions(
        trial.hyperparameters.get("blocks"), trial.hyperparameters.get("kernel")
    )


def test_custom_tuner_with_its_own_run_trial_and_sklearn_tuner(
    client: MlflowClient, tracking_uri: str, tmp_path: Path, data
) -> None:
    from sklearn import ensemble, metrics, model_selection

    class MyTuner(MlflowTunerMixin, keras_tuner.Tuner):
        def run_trial(self, trial, *args, **kwargs):
            return {"score": (trial.hyperparameters.Float("x", -1, 1) - 0.3) ** 2}

    tuner = MyTuner(
        oracle=keras_tuner.oracles.RandomSearchOracle(
            objective=keras_tuner.Objective("score", "min"), max_trials=3, seed=0
        ),
        directory=str(tmp_path / "kt"),
        project_name="custom",
        experiment_name="custom",
    )
    tuner.search()
    parent, trials = study_runs(client, "custom")
    assert len(trials) == 3
    assert parent.data.tags[names.TAG_DIRECTIONS] == "minimize"
    assert min(t.data.metrics["score"] for t in trials) == parent.data.metrics["best_score"]

    x, y = data
    sk = SklearnTuner(
        oracle=keras_tuner.oracles.RandomSearchOracle(
            objective=keras_tuner.Objective("score", "max"), max_trials=2, seed=0
        ),
        hypermodel=lambda hp: ensemble.RandomForestClassifier(
            n_estimators=hp.Int("n_estimators", 5, 20), random_state=0
        ),
        scoring=metrics.make_scorer(metrics.accuracy_score),
        cv=model_selection.KFold(2, shuffle=True, random_state=0),
        directory=str(tmp_path / "kt"),
        project_name="sk",
        experiment_name="sk",
        log_models="all",
    )
    sk.search(x.reshape(len(x), -1), y)
    _, trials = study_runs(client, "sk")
    assert len(trials) == 2
    import mlflow.sklearn

    model = mlflow.sklearn.load_model(trials[0].data.tags[names.TAG_MODEL_URI])
    assert model.predict(x.reshape(len(x), -1)[:5]).shape == (5,)


def test_bad_tracking_arguments_fail_before_the_tuner_exists(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="log_models"):
        RandomSearch(
            build,
            objective="val_accuracy",
            max_trials=1,
            log_models="most",
            directory=str(tmp_path / "kt"),
            project_name="bad",
        )
    assert not (tmp_path / "kt").exists()


def test_non_blocking_mode_never_disturbs_the_tuners_own_builds(
    client: MlflowClient, tracking_uri: str, tmp_path: Path, data
) -> None:
    # Rebuilding a checkpoint calls keras.backend.clear_session(); done on the writer
    # thread it would reset Keras's layer-name counters under the tuner's next build.
    x, y = data
    tuner = RandomSearch(
        build,
        objective="val_accuracy",
        max_trials=4,
        seed=2,
        directory=str(tmp_path / "kt"),
        project_name="async",
        experiment_name="async",
        synchronous=False,
        log_models="all",
    )
    tuner.search(x, y, validation_split=0.25, epochs=1, verbose=0)
    assert all(t.status == "COMPLETED" for t in tuner.oracle.trials.values())
    _, trials = study_runs(client, "async")
    assert len(trials) == 4
    assert all(t.info.status == "FINISHED" and names.TAG_MODEL_URI in t.data.tags for t in trials)


def _scored_tuner(tmp_path: Path, fail: dict[str, int], **kwargs) -> MlflowTunerMixin:
    """A custom tuner whose trial ``id`` raises ``fail[id]`` more times before it scores."""

    class Scored(MlflowTunerMixin, keras_tuner.Tuner):
        def run_trial(self, trial, *args, **kw):
            x = trial.hyperparameters.Float("x", 0, 1)
            if fail.get(trial.trial_id, 0) > 0:
                fail[trial.trial_id] -= 1
                raise kw.get("error", ValueError)("not this time")
            return {"score": x + (1.0 if trial.trial_id in fail else 0.0)}

    return Scored(
        oracle=keras_tuner.oracles.RandomSearchOracle(
            objective=keras_tuner.Objective("score", "max"), seed=0, **kwargs
        ),
        directory=str(tmp_path / "kt"),
        project_name="scored",
        experiment_name="scored",
        overwrite=False,
    )


def test_retried_trial_gets_its_own_run_and_the_summary_points_at_the_success(
    client: MlflowClient, tracking_uri: str, tmp_path: Path
) -> None:
    tuner = _scored_tuner(tmp_path, {"0": 1}, max_trials=2, max_retries_per_trial=1)
    tuner.search()
    parent, trials = study_runs(client, "scored")
    attempts = [t for t in trials if t.data.params["trial_number"] == "0"]
    assert sorted(t.info.status for t in attempts) == ["FAILED", "FINISHED"]
    failed = next(t for t in attempts if t.info.status == "FAILED")
    finished = next(t for t in attempts if t.info.status == "FINISHED")
    table = Path(client.download_artifacts(parent.info.run_id, names.ARTIFACT_TRIALS))
    rows = {r["trial_key"]: r for r in csv.DictReader(table.read_text().splitlines())}
    assert rows["0"]["run_id"] == failed.info.run_id and rows["0"]["state"] == "FAIL"
    assert rows["0-retry1"]["run_id"] == finished.info.run_id
    assert rows["0-retry1"]["state"] == "COMPLETE"
    # The retried trial scores best (by construction): the summary points at its success.
    assert tuner.oracle.get_best_trials(1)[0].trial_id == "0"
    assert parent.data.tags[names.TAG_BEST_TRIAL_RUN_ID] == finished.info.run_id


def test_a_trial_interrupted_then_resumed_is_written_again(
    client: MlflowClient, tracking_uri: str, tmp_path: Path
) -> None:
    class Interrupting(MlflowTunerMixin, keras_tuner.Tuner):
        calls = 0

        def run_trial(self, trial, *args, **kw):
            Interrupting.calls += 1
            if Interrupting.calls == 2:
                raise KeyboardInterrupt
            return {"score": trial.hyperparameters.Float("x", 0, 1)}

    def make():
        return Interrupting(
            oracle=keras_tuner.oracles.RandomSearchOracle(
                objective=keras_tuner.Objective("score", "max"), max_trials=3, seed=0
            ),
            directory=str(tmp_path / "kt"),
            project_name="intr",
            experiment_name="intr",
            overwrite=False,
        )

    with pytest.raises(KeyboardInterrupt):
        make().search()
    parent, trials = study_runs(client, "intr")
    assert parent.info.status == "KILLED"
    assert [t.info.status for t in trials] == ["FINISHED", "KILLED"]
    make().search()  # resume: Keras Tuner re-runs the interrupted trial under its old id
    parent, trials = study_runs(client, "intr")
    assert parent.info.status == "FINISHED"
    statuses = sorted((t.data.params["trial_number"], t.info.status) for t in trials)
    assert ("1", "KILLED") in statuses and ("1", "FINISHED") in statuses
    assert sum(s == "FINISHED" for _, s in statuses) == 3
    assert_no_running(client, "intr")


def test_fatal_error_ends_the_trial_failed_with_its_traceback(
    client: MlflowClient, tracking_uri: str, tmp_path: Path
) -> None:
    class Fatal(MlflowTunerMixin, keras_tuner.Tuner):
        def run_trial(self, trial, *args, **kw):
            trial.hyperparameters.Float("x", 0, 1)
            raise keras_tuner.errors.FatalError("stop everything")

    tuner = Fatal(
        oracle=keras_tuner.oracles.RandomSearchOracle(
            objective=keras_tuner.Objective("score", "max"), max_trials=2, seed=0
        ),
        directory=str(tmp_path / "kt"),
        project_name="fatal",
        experiment_name="fatal",
    )
    with pytest.raises(keras_tuner.errors.FatalError):
        tuner.search()
    parent, (run,) = study_runs(client, "fatal")
    assert parent.info.status == "FAILED"
    assert run.info.status == "FAILED"
    assert run.data.tags[names.TAG_ERROR_CLASS] == "FatalError"
    assert (
        "stop everything"
        in Path(client.download_artifacts(run.info.run_id, names.ARTIFACT_ERROR)).read_text()
    )

"""Every private access of ``mlflow_hpo._core.compat``, run against the pinned libraries.

A new release that moves one of these internals fails here, by name, instead of showing up
only as "nothing logged, one warning".
"""

from __future__ import annotations

import importlib.metadata
import os
import pickle
import warnings
from pathlib import Path

import keras_tuner
import mlflow
import optuna
import pytest
from mlflow import MlflowClient
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.tree import DecisionTreeClassifier

from mlflow_hpo._core import compat


def test_the_versions_it_was_checked_on_are_the_installed_ones() -> None:
    for dist, version in compat.CHECKED_ON.items():
        assert importlib.metadata.version(dist) == version, (
            f"{dist} {importlib.metadata.version(dist)} is installed but compat.py was "
            f"checked on {version}: re-check each of its functions, then update CHECKED_ON"
        )


def test_mlflow_active_run_stack_and_experiments(client: MlflowClient, tracking_uri: str) -> None:
    run = client.create_run(client.create_experiment("compat"))
    active = mlflow.ActiveRun(run)
    compat.push_active_run(active)
    try:
        assert mlflow.active_run().info.run_id == run.info.run_id
    finally:
        compat.pop_active_run(active)
    assert mlflow.active_run() is None
    compat.pop_active_run(active)  # popping again is harmless
    assert compat.default_experiment_id() == "0"
    mlflow.set_experiment("compat")
    assert compat.active_experiment_id() == run.info.experiment_id
    assert os.environ["MLFLOW_EXPERIMENT_ID"] == run.info.experiment_id
    compat.clear_active_experiment("0")  # not the active one: nothing changes
    assert compat.active_experiment_id() == run.info.experiment_id
    compat.clear_active_experiment(run.info.experiment_id)
    assert compat.active_experiment_id() is None and "MLFLOW_EXPERIMENT_ID" not in os.environ
    assert compat.default_experiment_id() == "0"
    client.set_terminated(run.info.run_id)


def test_artifact_repository_writes_where_the_client_reads(
    client: MlflowClient, tracking_uri: str, tmp_path: Path
) -> None:
    run = client.create_run(client.create_experiment("artifacts"))
    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / "trials.csv").write_text("number,value\n0,1.5\n")
    repository = compat.artifact_repository(run.info.artifact_uri, client.tracking_uri)
    assert repository is not None
    repository.log_artifacts(str(folder), "tables")
    assert [f.path for f in client.list_artifacts(run.info.run_id, "tables")] == [
        "tables/trials.csv"
    ]
    assert compat.artifact_repository("dbfs:/x", tracking_uri) is None
    client.set_terminated(run.info.run_id)


def test_optuna_storage_internals(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'o.db'}")
    assert isinstance(compat.optuna_study_id(study), int)
    location = compat.optuna_storage_location(study)
    assert location is not None and str(tmp_path) in location and "RDBStorage" in location
    assert compat.optuna_storage_location(optuna.create_study()) is None  # in memory
    compat.optuna_set_study_system_attr(study, "k", "v")
    assert compat.optuna_study_system_attr(study, "k") == "v"
    trial = study.ask()
    assert compat.optuna_frozen_trial(trial).number == trial.number


def test_keras_tuner_internals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    status = compat.keras_tuner_trial_status()
    assert {status.COMPLETED, status.FAILED, status.INVALID} == {"COMPLETED", "FAILED", "INVALID"}
    tuner = keras_tuner.RandomSearch(
        lambda hp: None, objective="val_loss", max_trials=1, directory=str(tmp_path),
        project_name="p",
    )  # fmt: skip
    assert compat.keras_tuner_checkpoint(tuner, "00").startswith(str(tmp_path))
    assert not compat.keras_tuner_is_distributed() and not compat.keras_tuner_is_worker()
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
    assert compat.keras_tuner_is_distributed() and compat.keras_tuner_is_worker()
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    assert not compat.keras_tuner_is_worker()


def test_keras_tuner_rebuild_returns_what_load_model_returns(tmp_path: Path) -> None:
    import keras
    import numpy as np

    def build(hp: keras_tuner.HyperParameters) -> keras.Model:
        model = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(hp.Int("units", 2, 4)), keras.layers.Dense(1)]
        )
        model.compile(optimizer="adam", loss="mse")
        return model

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)), rng.normal(size=(32, 1))
    tuner = keras_tuner.RandomSearch(
        build, objective="val_loss", max_trials=1, directory=str(tmp_path), project_name="p"
    )
    tuner.search(x, y, validation_split=0.25, epochs=2, verbose=0)
    trial = tuner.oracle.get_best_trials(1)[0]
    rebuilt = compat.keras_tuner_rebuild(tuner, trial)
    loaded = tuner.load_model(trial)
    assert [w.shape for w in rebuilt.get_weights()] == [w.shape for w in loaded.get_weights()]
    for ours, theirs in zip(rebuilt.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)  # the best checkpoint's weights
    assert rebuilt.optimizer is not None  # compiled as the builder compiles it


def test_warnings_point_at_the_users_line() -> None:
    def library_function() -> None:  # what mlflow-hpo does, several frames down
        warnings.warn("x", UserWarning, stacklevel=compat.user_stacklevel())

    with pytest.warns(UserWarning) as caught:
        library_function()  # this file is outside mlflow-hpo: the warning points here
    assert caught[0].filename == __file__


def test_scikit_learn_internals() -> None:
    x, y = load_digits(return_X_y=True)
    search = GridSearchCV(DecisionTreeClassifier(random_state=0), {"max_depth": [2, 3]}, cv=2)
    assert isinstance(search, compat.sklearn_base_search_cv())
    assert compat.sklearn_callbacks(search) == []
    with compat.sklearn_fold_outputs(search) as folds:
        search.fit(x[:200], y[:200])
    assert len(folds) == 4 and {"fit_time", "score_time"} <= set(folds[0])
    assert "_format_results" not in vars(search)  # removed after the fit
    hook = compat.LocalOnly(lambda: 1)
    assert hook() == 1 and pickle.loads(pickle.dumps(hook)) is None

"""Trial models as first-class MLflow 3 models: signatures, datasets, ranked in the Models tab."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import mlflow
import numpy as np
import optuna
import pytest
from conftest import study_runs
from mlflow import MlflowClient
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV

from mlflow_hpo import names
from mlflow_hpo.keras_tuner import RandomSearch
from mlflow_hpo.optuna import MlflowStudyCallback
from mlflow_hpo.registry import load_best, promote_best
from mlflow_hpo.sklearn import track_search

pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, ...]:
    data = load_digits()
    x = (data.images[:300] / 16.0).astype("float32")[..., None]
    y = data.target[:300]
    return x[:240], y[:240], x[240:], y[240:]


def _cnn(units: int) -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _inputs(run: mlflow.entities.Run) -> dict[str, str]:
    """Context -> digest of the run's dataset inputs."""
    out = {}
    for entry in run.inputs.dataset_inputs:
        context = {t.key: t.value for t in entry.tags}["mlflow.data.context"]
        out[context] = entry.dataset.digest
    return out


def test_captured_fit_gives_signatures_datasets_and_the_models_tab_ranking(
    client: MlflowClient, tracking_uri: str, digits, caplog: pytest.LogCaptureFixture
) -> None:
    x, y, xv, yv = digits

    def objective(trial: optuna.Trial) -> float:
        model = _cnn(trial.suggest_categorical("units", [4, 16, 32]))
        model.fit(x, y, validation_data=(xv, yv), epochs=1, batch_size=64, verbose=0)
        return float(model.evaluate(xv, yv, verbose=0)[1])

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(1))
    caplog.set_level(logging.WARNING, logger="mlflow")
    tracker = MlflowStudyCallback(
        experiment_name="models", metric_name="val_accuracy", log_models="all"
    )
    with tracker:
        study.optimize(tracker.track(objective), n_trials=3, callbacks=[tracker])
    assert "without specifying model signature" not in caplog.text
    parent, trials = study_runs(client, "models")
    digests = _inputs(trials[0])
    assert set(digests) == {"training", "validation"}
    for run in trials:
        assert _inputs(run) == digests  # every trial fit on the same data: same digests
        info = mlflow.models.get_model_info(run.data.tags[names.TAG_MODEL_URI])
        assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 8, 8, 1]
        assert list(info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 10]
        assert (
            Path(mlflow.artifacts.download_artifacts(info.model_uri))
            .joinpath("input_example.json")
            .exists()
        )  # a few rows, never the whole set
    assert _inputs(parent) == digests  # the study run lists each dataset once
    assert len(parent.inputs.dataset_inputs) == 2

    ranked = mlflow.search_logged_models(
        experiment_ids=[parent.info.experiment_id],
        order_by=[{"field_name": "metrics.val_accuracy", "ascending": False}],
        output_format="list",
    )
    by_run = {t.info.run_id: t.data.metrics["val_accuracy"] for t in trials}
    assert [by_run[m.source_run_id] for m in ranked] == sorted(by_run.values(), reverse=True)
    best_run = parent.data.tags[names.TAG_BEST_TRIAL_RUN_ID]
    # The Models tab's first model has the study's best value (equal values in any order:
    # the study's best is the earliest of them, as Optuna's best_trial).
    assert by_run[ranked[0].source_run_id] == by_run[best_run] == max(by_run.values())
    tied = [t for t in trials if by_run[t.info.run_id] == by_run[best_run]]
    assert best_run == min(tied, key=lambda t: t.info.start_time).info.run_id
    # The Models tab's dataset filter knows the validation data.
    evaluated = mlflow.search_logged_models(
        experiment_ids=[parent.info.experiment_id],
        filter_string="metrics.val_accuracy >= 0",
        datasets=[{"dataset_name": "validation", "dataset_digest": digests["validation"]}],
        output_format="list",
    )
    assert len(evaluated) == 3
    elsewhere = mlflow.search_logged_models(
        experiment_ids=[parent.info.experiment_id],
        filter_string="metrics.val_accuracy >= 0",
        datasets=[{"dataset_name": "training", "dataset_digest": digests["training"]}],
        output_format="list",
    )
    assert elsewhere == []  # the metrics were measured on the validation data

    done = promote_best(parent.info.run_id, "ranked")
    version = client.get_model_version_by_alias("ranked", "champion")
    assert done.trial_run_id == best_run
    assert version.tags[names.TAG_VERSION_SELECTED_BY].startswith("logged models")
    reloaded = load_best("ranked")
    accuracy = float(reloaded.evaluate(xv, yv, verbose=0)[1])
    assert accuracy == pytest.approx(by_run[best_run], abs=1e-6)


def test_keras_tuner_and_search_cv_models_have_signatures_and_datasets(
    client: MlflowClient, tracking_uri: str, digits, tmp_path: Path
) -> None:
    x, y, xv, yv = digits
    tuner = RandomSearch(
        lambda hp: _cnn(hp.Choice("units", [4, 16])),
        objective="val_accuracy",
        max_trials=2,
        seed=0,
        directory=str(tmp_path / "kt"),
        project_name="sig",
        experiment_name="kt-models",
    )
    tuner.search(x, y, validation_data=(xv, yv), epochs=1, verbose=0)
    parent, trials = study_runs(client, "kt-models")
    best = client.get_run(parent.data.tags[names.TAG_BEST_TRIAL_RUN_ID])
    info = mlflow.models.get_model_info(best.data.tags[names.TAG_MODEL_URI])
    assert info.signature is not None and info.signature.inputs.to_dict()[0]["type"] == "tensor"
    assert all(set(_inputs(t)) == {"training", "validation"} for t in trials)

    flat = x.reshape(len(x), -1)
    search = track_search(
        GridSearchCV(LogisticRegression(max_iter=200), {"C": [0.1, 1.0]}, cv=2),
        experiment_name="cv-models",
    )
    search.fit(flat, y)
    parent, trials = study_runs(client, "cv-models")
    best = client.get_run(parent.data.tags[names.TAG_BEST_TRIAL_RUN_ID])
    info = mlflow.models.get_model_info(best.data.tags[names.TAG_MODEL_URI])
    assert [c["type"] for c in info.signature.inputs.to_dict()][:1] in (["tensor"], ["double"])
    assert all(set(_inputs(t)) == {"training"} for t in trials)

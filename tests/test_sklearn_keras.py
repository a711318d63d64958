"""Keras through scikit-learn: a SciKeras search and a sampler loop, with tiny CNNs."""

from __future__ import annotations

import keras
import mlflow.keras
import numpy as np
import pytest
from conftest import assert_no_running, output_exceptions, study_runs
from mlflow import MlflowClient
from scikeras.wrappers import KerasClassifier
from sklearn.datasets import load_digits
from sklearn.model_selection import ParameterGrid, RandomizedSearchCV

from mlflow_hpo import names
from mlflow_hpo.layers import LayerGuard
from mlflow_hpo.sklearn import MlflowScorer, track_search, tracked_sampler

pytestmark = pytest.mark.slow

# What the hand-written recipe's shape arithmetic gives for two conv+pool blocks on 8x8:
# kernel 3: 8 -> 6 -> 3 -> 1, then pooling 1 by 2 is empty; kernel 5: 8 -> 4 -> 2, then a
# 5x5 convolution does not fit.
EXPECTED_EXCEPTIONS = {3: ["Pool_L2"], 5: ["Conv_L2"]}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x[:240] / 16.0).reshape(-1, 8, 8, 1).astype("float32"), y[:240]


def build(kernel: int = 3, units: int = 16) -> keras.Model:
    model = keras.Sequential([keras.Input((8, 8, 1))])
    guard = LayerGuard(model)
    for i in (1, 2):
        guard.add(keras.layers.Conv2D(4, kernel, activation="relu"), name=f"Conv_L{i}")
        guard.add(keras.layers.MaxPooling2D(2), name=f"Pool_L{i}")
    model.add(keras.layers.Flatten())
    model.add(keras.layers.Dense(units, activation="relu"))
    model.add(keras.layers.Dense(10, activation="softmax"))
    return model


def _exceptions(client: MlflowClient, run_id: str) -> list[str]:
    return output_exceptions(client.get_run(run_id))


def test_scikeras_search_keeps_weights_and_exception_lists(
    client: MlflowClient, tracking_uri: str, digits
) -> None:
    x, y = digits
    classifier = KerasClassifier(
        model=build,
        loss="sparse_categorical_crossentropy",
        optimizer="adam",
        epochs=2,
        batch_size=32,
        verbose=0,  # no random_state: SciKeras would leave TF op determinism switched on
    )
    search = track_search(
        RandomizedSearchCV(
            classifier,
            {"model__kernel": [3, 5], "model__units": [8, 16]},
            n_iter=3,
            cv=2,
            n_jobs=2,
            random_state=0,
            scoring=MlflowScorer("accuracy"),
        ),
        experiment_name="scikeras",
        synchronous=False,  # live folds go through the writer thread: each list kept once
    )
    search.fit(x, y)
    parent, trials = study_runs(client, "scikeras")
    assert len(trials) == 3 and parent.info.status == "FINISHED"
    for run in trials:
        kernel = int(run.data.params["model__kernel"])
        assert _exceptions(client, run.info.run_id) == EXPECTED_EXCEPTIONS[kernel]
        assert len(client.get_metric_history(run.info.run_id, "test_score")) == 2
    best = client.get_run(parent.data.tags[names.TAG_BEST_TRIAL_RUN_ID])
    model = mlflow.keras.load_model(best.data.tags[names.TAG_MODEL_URI])
    assert isinstance(model, keras.Model)  # the Keras model itself, not the wrapper
    predicted = model.predict(x, verbose=0).argmax(axis=1)
    assert (predicted == search.best_estimator_.predict(x)).all()
    assert_no_running(client, "scikeras")


def test_sampler_loop_with_layer_guard_logs_epochs_and_the_keras_model(
    client: MlflowClient, tracking_uri: str, digits
) -> None:
    x, y = digits
    xv, yv = x[:60], y[:60]
    loop = tracked_sampler(
        ParameterGrid({"kernel": [3, 5]}),
        objective="val_accuracy",
        direction="maximize",
        experiment_name="keras-loop",
    )
    with loop as study:
        for params, trial in study:
            model = build(kernel=params["kernel"])
            model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
            model.fit(x, y, epochs=3, batch_size=32, verbose=0, validation_data=(xv, yv))
            loss, accuracy = model.evaluate(xv, yv, verbose=0)
            trial.log(val_accuracy=accuracy, val_loss=loss)
    parent, trials = study_runs(client, "keras-loop")
    for run in trials:
        kernel = int(run.data.params["kernel"])
        assert _exceptions(client, run.info.run_id) == EXPECTED_EXCEPTIONS[kernel]
        epochs = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in epochs] == [0, 1, 2]  # the fit's epochs, logged live
    best = client.get_run(parent.data.tags[names.TAG_BEST_TRIAL_RUN_ID])
    model = mlflow.keras.load_model(best.data.tags[names.TAG_MODEL_URI])  # captured from fit
    _, accuracy = model.evaluate(xv, yv, verbose=0)
    assert accuracy == pytest.approx(best.data.metrics["val_accuracy"], abs=1e-6)

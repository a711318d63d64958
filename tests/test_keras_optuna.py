"""Keras inside tracked Optuna trials: epochs, LayerGuard lists and model weights, for real."""

from __future__ import annotations

import keras
import mlflow.keras
import numpy as np
import optuna
import pytest
from conftest import output_exceptions, study_runs
from mlflow import MlflowClient
from sklearn.datasets import load_digits

import mlflow_hpo
from mlflow_hpo import names
from mlflow_hpo.errors import ConfigurationError
from mlflow_hpo.layers import LayerGuard
from mlflow_hpo.optuna import MlflowStudyCallback

pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    x = (data.images[:400] / 16.0).astype("float32")[..., None]
    return x, data.target[:400]


def _builder(n_blocks: int, kernel: int) -> tuple[keras.Model, list[str]]:
    model = keras.Sequential([keras.Input((8, 8, 1))])
    guard = LayerGuard(model)
    for i in range(1, n_blocks + 1):
        guard.add(keras.layers.Conv2D(4, kernel, activation="relu"), name=f"Conv_L{i}")
        guard.add(keras.layers.MaxPooling2D(2), name=f"Pool_L{i}")
    model.add(keras.layers.Flatten())
    model.add(keras.layers.Dense(10, activation="softmax"))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, guard.exceptions


def test_layer_guard_uses_keras_shapes_for_any_layer() -> None:
    model = keras.Sequential([keras.Input((8, 8, 1))])
    guard = LayerGuard(model)
    assert guard.add(keras.layers.Conv2D(2, 3), name="c1")  # 8 -> 6
    assert guard.add(keras.layers.MaxPooling2D(2), name="p1")  # 6 -> 3
    assert not guard.add(keras.layers.Conv2D(2, 5), name="c2")  # 3 - 5 + 1 < 1
    assert guard.add(keras.layers.Conv2D(2, 3, padding="same"), name="c3")  # stays 3
    assert not guard.add(keras.layers.MaxPooling2D(4), name="p2")  # 3 // 4 == 0
    assert guard.add(keras.layers.GlobalAveragePooling2D(), name="gap")
    assert guard.exceptions == ["c2", "p2"]
    assert [layer.name for layer in model.layers][-1].startswith("global_average")
    assert guard.shape == (None, 2)


def test_layer_guard_rejects_models_it_cannot_guard() -> None:
    with pytest.raises(ConfigurationError, match=r"keras\.Sequential"):
        LayerGuard(keras.Model())
    with pytest.raises(ConfigurationError, match=r"keras.Input\(shape\)"):
        LayerGuard(keras.Sequential())


def test_keras_trials_log_epochs_output_exceptions_and_best_model(
    client: MlflowClient, tracking_uri: str, digits
) -> None:
    x, y = digits

    def objective(trial: optuna.Trial) -> float:
        model, _ = _builder(trial.suggest_int("n_blocks", 1, 3), trial.suggest_int("kernel", 2, 3))
        history = model.fit(x, y, validation_split=0.25, epochs=2, batch_size=64, verbose=0)
        return float(history.history["val_accuracy"][-1])

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.GridSampler({"n_blocks": [1, 3], "kernel": [2, 3]}),
    )
    with MlflowStudyCallback(
        experiment_name="keras", metric_name="val_accuracy", log_models="best"
    ) as tracker:
        study.optimize(tracker.track(objective), n_trials=4, callbacks=[tracker])

    parent, trials = study_runs(client, "keras")
    for run, trial in zip(trials, study.trials, strict=True):
        expected = _builder(trial.params["n_blocks"], trial.params["kernel"])[1]
        assert output_exceptions(run) == expected
        assert run.data.metrics[names.METRIC_N_OUTPUT_EXCEPTIONS] == len(expected)
        # Epoch logs are live metric histories; the objective keeps its own column.
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [0, 1]
        assert len(client.get_metric_history(run.info.run_id, "epoch_val_accuracy")) == 2
        assert run.data.metrics["val_accuracy"] == pytest.approx(trial.value)
    assert any(len(_builder(t.params["n_blocks"], t.params["kernel"])[1]) for t in study.trials)

    best_run = client.get_run(parent.data.tags[names.TAG_BEST_TRIAL_RUN_ID])
    assert best_run.data.metrics["val_accuracy"] == pytest.approx(study.best_value)
    model_uri = best_run.data.tags[names.TAG_MODEL_URI]
    reloaded = mlflow.keras.load_model(model_uri)  # no builder code needed
    accuracy = float(np.mean(np.argmax(reloaded.predict(x[300:], verbose=0), axis=1) == y[300:]))
    assert accuracy == pytest.approx(study.best_value, abs=1e-6)  # x[300:] is the val split
    first = trials[0]
    assert names.TAG_MODEL_URI in first.data.tags  # the first trial is always an improvement


def test_log_model_hands_over_an_explicit_model_and_none_policy_logs_nothing(
    client: MlflowClient, tracking_uri: str, digits
) -> None:
    x, y = digits

    def objective(trial: optuna.Trial) -> float:
        model, _ = _builder(1, 2)
        model.fit(x, y, epochs=1, verbose=0)
        mlflow_hpo.log_model(model)
        return trial.suggest_float("x", 0, 1)

    study = optuna.create_study()
    with MlflowStudyCallback(experiment_name="all", log_models="all") as tracker:
        study.optimize(tracker.track(objective), n_trials=2, callbacks=[tracker])
    _, trials = study_runs(client, "all")
    assert all(names.TAG_MODEL_URI in t.data.tags for t in trials)

    study = optuna.create_study()
    with MlflowStudyCallback(experiment_name="none", log_models="none") as tracker:
        study.optimize(tracker.track(objective), n_trials=2, callbacks=[tracker])
    _, trials = study_runs(client, "none")
    assert not any(names.TAG_MODEL_URI in t.data.tags for t in trials)


def test_top_k_keeps_only_k_models(client: MlflowClient, tracking_uri: str, digits) -> None:
    x, y = digits
    values = iter([0.1, 0.5, 0.3, 0.9])

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0, 1)
        model, _ = _builder(1, 2)
        model.fit(x[:64], y[:64], epochs=1, verbose=0)
        return next(values)

    study = optuna.create_study(direction="maximize")
    with MlflowStudyCallback(experiment_name="topk", log_models=2) as tracker:
        study.optimize(tracker.track(objective), n_trials=4, callbacks=[tracker])
    experiment = client.get_experiment_by_name("topk")
    alive = client.search_logged_models([experiment.experiment_id])
    kept_trials = sorted(int(m.tags[names.PARAM_TRIAL_NUMBER]) for m in alive)
    assert kept_trials == [1, 3]  # 0.5 and 0.9
    tagged = {
        int(r.data.params["trial_number"])
        for r in client.search_runs([experiment.experiment_id])
        if names.TAG_MODEL_URI in r.data.tags
    }
    assert tagged == {1, 3}  # no run points at a model that was deleted


def test_fit_with_positional_callbacks_or_a_callback_list_still_works(
    client: MlflowClient, tracking_uri: str, digits
) -> None:
    x, y = digits
    seen: list[int] = []
    probe = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch))

    def objective(trial: optuna.Trial) -> float:
        model, _ = _builder(1, 2)
        if trial.number == 0:
            model.fit(x[:64], y[:64], 32, 2, 0, [probe])  # batch, epochs, verbose, callbacks
        else:
            model.fit(
                x[:64],
                y[:64],
                epochs=2,
                verbose=0,
                callbacks=keras.callbacks.CallbackList([probe], add_history=True, model=model),
            )
        return trial.suggest_float("x", 0, 1)

    study = optuna.create_study()
    with MlflowStudyCallback(experiment_name="pos", log_models="none") as tracker:
        study.optimize(tracker.track(objective), n_trials=2, callbacks=[tracker])
    assert seen == [0, 1, 0, 1]
    _, trials = study_runs(client, "pos")
    for run in trials:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [0, 1]


def test_fit_is_kerass_own_again_after_a_tracker_closes_and_the_explicit_callback(
    client: MlflowClient, tracking_uri: str, digits
) -> None:
    import mlflow_hpo.keras

    original = keras.Model.fit
    x, y = digits

    def captured(trial: optuna.Trial) -> float:
        assert keras.Model.fit is not original  # wrapped while a capturing tracker is open
        model = _builder(1, 3)[0]
        return float(model.fit(x, y, epochs=2, verbose=0).history["loss"][-1])

    with MlflowStudyCallback(experiment_name="captured", metric_name="loss") as tracker:
        optuna.create_study().optimize(tracker.track(captured), n_trials=1, callbacks=[tracker])
    assert keras.Model.fit is original  # put back when the tracker closed

    def explicit(trial: optuna.Trial) -> float:
        assert keras.Model.fit is original  # capture_fit=False: fit is never wrapped
        model = _builder(1, 3)[0]
        history = model.fit(x, y, epochs=2, verbose=0, callbacks=[mlflow_hpo.keras.callback()])
        return float(history.history["loss"][-1])

    tracker = MlflowStudyCallback(experiment_name="explicit", metric_name="loss", capture_fit=False)
    with tracker:
        optuna.create_study().optimize(tracker.track(explicit), n_trials=1, callbacks=[tracker])
    for experiment in ("captured", "explicit"):
        _, (run,) = study_runs(client, experiment)
        epochs = client.get_metric_history(run.info.run_id, "epoch_loss")
        assert [m.step for m in epochs] == [0, 1]  # the objective's name: epoch_<name>
    assert keras.Model.fit is original

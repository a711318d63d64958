"""``mlflow-hpo export-tensorboard``: a study read back with TensorBoard's own event reader."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from conftest import study_runs
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from mlflow_hpo.cli import cli
from mlflow_hpo.optuna import MlflowStudyCallback

pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.ERROR)


def _hparams(folder: Path) -> plugin_data_pb2.HParamsPluginData:
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    events.Reload()
    (content,) = events.PluginTagToContent("hparams").values()
    return plugin_data_pb2.HParamsPluginData.FromString(content)


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    import tensorflow as tf

    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    events.Reload()
    return {
        tag: [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
        for tag in events.Tags()["tensors"]
        if tag != "_hparams_/session_start_info"
    }


def test_a_study_exports_one_tensorboard_session_per_trial(
    client: MlflowClient, tracking_uri: str, tmp_path: Path
) -> None:
    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        units = trial.suggest_int("units", 4, 32)
        act = trial.suggest_categorical("act", ["relu", "tanh"])
        for epoch in range(3):
            trial.report(lr * (epoch + 1), epoch)
        return units * lr + (act == "relu")

    study = optuna.create_study(direction="maximize", study_name="tb")
    with MlflowStudyCallback(experiment_name="tb", metric_name="score") as tracker:
        study.optimize(tracker.track(objective), n_trials=3, callbacks=[tracker])
    _, trials = study_runs(client, "tb")
    out = tmp_path / "tb"
    result = CliRunner().invoke(
        cli, ["export-tensorboard", "tb", str(out), "--experiment-name", "tb",
              "--tracking-uri", tracking_uri],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3 trials written" in result.output

    config = _hparams(out).experiment
    assert {h.name for h in config.hparam_infos} == {"lr", "units", "act"}
    assert [m.name.tag for m in config.metric_infos] == ["score"]
    for run, trial in zip(trials, study.trials, strict=True):
        folder = out / run.info.run_name
        session = _hparams(folder).session_start_info
        assert session.hparams["lr"].number_value == pytest.approx(trial.params["lr"])
        assert session.hparams["units"].number_value == trial.params["units"]
        assert session.hparams["act"].string_value == trial.params["act"]
        scalars = _scalars(folder)
        assert scalars["score"] == [(0, pytest.approx(trial.value))]
        assert [s for s, _ in scalars["intermediate_value"]] == [0, 1, 2]

"""The README's main job and the MLproject entry point, run the way a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import all_runs, study_runs
from mlflow import MlflowClient

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _env(uri: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_HPO_STRICT": "1"}


def _run(tmp_path: Path, *command: str) -> str:
    """Run ``command`` in ``tmp_path`` against a fresh SQLite store; return that store's URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run(
        [sys.executable, *command],
        cwd=tmp_path,
        env=_env(uri),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    if "mlflow" not in command[:2]:  # the examples end by printing how to open the UI
        assert out.stdout.strip().splitlines()[-1].endswith(f"mlflow ui --backend-store-uri {uri}")
    return uri


def test_optuna_example_tracks_a_study_and_prints_the_ui_command(tmp_path: Path) -> None:
    uri = _run(
        tmp_path, str(ROOT / "examples" / "optuna_digits.py"), "--n-trials", "4", "--epochs", "3"
    )
    client = MlflowClient(uri)
    parent, trials = study_runs(client, "digits-optuna")
    assert len(trials) == 4
    assert parent.info.status == "FINISHED"
    assert sum(t.data.metrics["n_output_exceptions"] for t in trials) > 0
    best = client.get_run(parent.data.tags["mlflow_hpo.best_trial_run_id"])
    assert "mlflow_hpo.model_uri" in best.data.tags


def test_keras_tuner_example_tracks_a_hyperband_search(tmp_path: Path) -> None:
    uri = _run(
        tmp_path,
        str(ROOT / "examples" / "keras_tuner_digits.py"),
        "--max-epochs",
        "2",
        "--directory",
        str(tmp_path / "kt"),
    )
    parent, trials = study_runs(MlflowClient(uri), "digits-keras-tuner")
    assert parent.data.tags["mlflow_hpo.backend"] == "keras_tuner"
    assert trials and all(t.info.status == "FINISHED" for t in trials)


def test_sklearn_example_tracks_a_scikeras_randomized_search(tmp_path: Path) -> None:
    uri = _run(
        tmp_path,
        str(ROOT / "examples" / "sklearn_digits.py"),
        *("--n-iter", "3", "--epochs", "1", "--cv", "2"),
    )
    client = MlflowClient(uri)
    parent, trials = study_runs(client, "digits-sklearn")
    assert len(trials) == 3 and parent.info.status == "FINISHED"
    for trial in trials:
        assert len(client.get_metric_history(trial.info.run_id, "test_score")) == 2
    best = client.get_run(parent.data.tags["mlflow_hpo.best_trial_run_id"])
    assert "mlflow_hpo.model_uri" in best.data.tags


def test_sampler_example_tracks_the_parameter_sampler_loop(tmp_path: Path) -> None:
    uri = _run(
        tmp_path, str(ROOT / "examples" / "sampler_digits.py"), "--n-iter", "3", "--epochs", "2"
    )
    client = MlflowClient(uri)
    parent, trials = study_runs(client, "digits-sampler")
    assert len(trials) == 3 and parent.data.tags["mlflow_hpo.objectives"] == "val_accuracy"
    assert all(len(client.get_metric_history(t.info.run_id, "loss")) == 2 for t in trials)


def test_mlflow_run_entry_point_nests_the_study_under_the_project_run(tmp_path: Path) -> None:
    uri = _run(
        tmp_path,
        "-m",
        "mlflow",
        "run",
        str(ROOT),
        "-e",
        "optuna",
        "-P",
        "n_trials=2",
        "-P",
        "epochs=1",
        "--env-manager",
        "local",
        "--experiment-name",
        "project",
    )
    client = MlflowClient(uri)
    runs = all_runs(client, "project")
    top_level = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(top_level) == 1, "mlflow run must not end up with a second top-level run"
    project_run = top_level[0]
    parent, trials = study_runs(client, "project")
    assert parent.data.tags["mlflow.parentRunId"] == project_run.info.run_id
    assert len(trials) == 2
    assert project_run.info.status == "FINISHED"

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


def _run(tmp_path: Path, *command: str) -> tuple[str, str]:
    """Run ``command`` in ``tmp_path`` against a fresh SQLite store, in the default mode
    users run; return that store's URI and what the command printed."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run(
        [sys.executable, *command],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    if "mlflow" not in command[:2]:  # the examples end by printing how to open the UI
        assert out.stdout.strip().splitlines()[-1].endswith(f"mlflow ui --backend-store-uri {uri}")
    assert "MlflowHpoWarning" not in out.stderr, out.stderr[-3000:]
    return uri, out.stdout


def test_optuna_example_tracks_a_study_and_prints_the_ui_command(tmp_path: Path) -> None:
    uri, _ = _run(
        tmp_path, str(ROOT / "examples" / "optuna_digits.py"), "--n-trials", "4", "--epochs", "3"
    )
    client = MlflowClient(uri)
    parent, trials = study_runs(client, "digits-optuna")
    assert len(trials) == 4
    assert parent.info.status == "FINISHED"
    assert sum(t.data.metrics["n_output_exceptions"] for t in trials) > 0
    best = client.get_run(parent.data.tags["mlflow_hpo.best_trial_run_id"])
    assert "mlflow_hpo.model_uri" in best.data.tags


def _mlflow_run(
    tmp_path: Path, entry: str, experiment: str, **params: object
) -> tuple[MlflowClient, str]:
    """``mlflow run`` an entry point of this project in the experiment ``mlflow run`` is
    given; assert one top-level run there, FINISHED, and no mlflow-hpo warning."""
    options = [item for k, v in params.items() for item in ("-P", f"{k}={v}")]
    uri, printed = _run(
        tmp_path,
        *("-m", "mlflow", "run", str(ROOT), "-e", entry, *options),
        *("--env-manager", "local", "--experiment-name", experiment),
    )
    client = MlflowClient(uri)
    top_level = [r for r in all_runs(client, experiment) if "mlflow.parentRunId" not in r.data.tags]
    assert len(top_level) == 1, "mlflow run must not end up with a second top-level run"
    assert top_level[0].info.status == "FINISHED"
    return client, printed


def _studies(client: MlflowClient, experiment: str) -> list:
    runs = all_runs(client, experiment)
    project = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    studies = [r for r in runs if r.data.tags.get("mlflow_hpo.role") == "study"]
    assert studies and all(
        s.data.tags["mlflow.parentRunId"] == project.info.run_id for s in studies
    )
    return studies


def test_main_entry_point_tunes_three_backends_and_promotes_the_best(tmp_path: Path) -> None:
    client, printed = _mlflow_run(
        tmp_path, "main", "demo", n_trials=2, epochs=1, model_name="demo-cnn"
    )
    studies = _studies(client, "demo")
    by_backend = {s.data.tags["mlflow_hpo.backend"]: s for s in studies}
    assert sorted(by_backend) == ["hyperopt", "keras_tuner", "optuna", "sklearn"]
    champion = client.get_model_version_by_alias("demo-cnn", "champion")
    ranked = [s for s in studies if "best_val_accuracy" in s.data.metrics]
    assert len(ranked) == 3  # Hyperopt's study minimises val_error: shown, not compared
    best = max(float(s.data.metrics["best_val_accuracy"]) for s in ranked)
    assert float(champion.tags["mlflow_hpo.objective_value"]) == pytest.approx(best)
    # Each study's line shows that study's own best, not the champion's.
    for line in printed.splitlines():
        backend = line.split(" ", 1)[0]
        if backend in by_backend and "best val_accuracy" in line:
            shown = float(line.split("best val_accuracy ", 1)[1].split()[0])
            own = by_backend[backend].data.metrics["best_val_accuracy"]
            assert shown == pytest.approx(own, abs=1e-4)


def test_keras_tuner_entry_point_tracks_a_hyperband_search(tmp_path: Path) -> None:
    client, _ = _mlflow_run(tmp_path, "keras_tuner", "kt", max_epochs=2)
    (study,) = _studies(client, "kt")
    trials = [r for r in all_runs(client, "kt") if r.data.tags.get("mlflow_hpo.role") == "trial"]
    assert study.data.tags["mlflow_hpo.backend"] == "keras_tuner"
    assert trials and all(t.info.status == "FINISHED" for t in trials)


def test_sklearn_entry_point_tracks_a_scikeras_randomized_search(tmp_path: Path) -> None:
    client, _ = _mlflow_run(tmp_path, "sklearn", "sk", n_iter=3, epochs=1, cv=2)
    (study,) = _studies(client, "sk")
    trials = [r for r in all_runs(client, "sk") if r.data.tags.get("mlflow_hpo.role") == "trial"]
    assert len(trials) == 3
    for trial in trials:
        assert len(client.get_metric_history(trial.info.run_id, "test_score")) == 2
    best = client.get_run(study.data.tags["mlflow_hpo.best_trial_run_id"])
    assert "mlflow_hpo.model_uri" in best.data.tags


def test_sampler_entry_point_tracks_the_parameter_sampler_loop(tmp_path: Path) -> None:
    client, _ = _mlflow_run(tmp_path, "sampler", "loop", n_iter=3, epochs=2)
    (study,) = _studies(client, "loop")
    trials = [r for r in all_runs(client, "loop") if r.data.tags.get("mlflow_hpo.role") == "trial"]
    assert len(trials) == 3 and study.data.tags["mlflow_hpo.objectives"] == "val_accuracy"
    assert all(len(client.get_metric_history(t.info.run_id, "loss")) == 2 for t in trials)


def test_optuna_and_promote_entry_points(tmp_path: Path) -> None:
    client, _ = _mlflow_run(tmp_path, "optuna", "project", n_trials=2, epochs=1)
    (study,) = _studies(client, "project")
    trials = [
        r for r in all_runs(client, "project") if r.data.tags.get("mlflow_hpo.role") == "trial"
    ]
    assert len(trials) == 2
    _mlflow_run(
        tmp_path, "promote", "promotions", study=study.info.run_id, model_name="from-project"
    )
    version = client.get_model_version_by_alias("from-project", "champion")
    assert version.tags["mlflow_hpo.study_run_id"] == study.info.run_id


def test_ray_entry_point_nests_the_experiment_under_the_project_run(tmp_path: Path) -> None:
    client, _ = _mlflow_run(tmp_path, "ray", "ray-project", num_samples=2, max_epochs=1)
    (study,) = _studies(client, "ray-project")
    assert study.data.tags["mlflow_hpo.backend"] == "ray_tune"
    trials = [
        r for r in all_runs(client, "ray-project") if r.data.tags.get("mlflow_hpo.role") == "trial"
    ]
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)
    assert all(t.data.tags["mlflow.parentRunId"] == study.info.run_id for t in trials)

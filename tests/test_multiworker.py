"""Several worker processes on one Optuna RDB storage log into one parent run.

Real parts only: PostgreSQL for Optuna's storage and for the MLflow backend, and a real
``mlflow server`` on a free loopback port that the workers talk to over HTTP.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from _services import mlflow_server, postgres_database
from conftest import free_port, study_runs
from mlflow import MlflowClient

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

WORKER = textwrap.dedent("""
    import sys, optuna
    from mlflow_hpo.optuna import MlflowStudyCallback
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage, n_trials = sys.argv[1], int(sys.argv[2])
    study = optuna.load_study(study_name="shared", storage=storage)

    def objective(trial):
        x = trial.suggest_float("x", -5, 5)
        for step in range(3):
            trial.report(x * step, step)
        return (x - 1) ** 2

    with MlflowStudyCallback(experiment_name="mp", metric_name="loss") as tracker:
        study.optimize(tracker.track(objective), n_trials=n_trials, callbacks=[tracker])
""")


def _run_workers(storage: str, tracking_uri: str, count: int, n_trials: int) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, storage, str(n_trials)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(count)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]


def test_two_workers_share_one_parent_and_log_every_trial_once(tmp_path: Path) -> None:
    with (
        postgres_database() as optuna_db,
        postgres_database() as mlflow_db,
        mlflow_server(mlflow_db, tmp_path / "artifacts", free_port()) as url,
    ):
        optuna.create_study(study_name="shared", storage=optuna_db)
        _run_workers(optuna_db, url, count=2, n_trials=5)
        # A third worker joining later (a resumed study) reuses the same parent.
        _run_workers(optuna_db, url, count=1, n_trials=2)

        client = MlflowClient(url)
        parent, trials = study_runs(client, "mp")
        study = optuna.load_study(study_name="shared", storage=optuna_db)
        assert len(study.trials) == 12
        assert sorted(int(t.data.params["trial_number"]) for t in trials) == list(range(12))
        assert all(t.info.status == "FINISHED" for t in trials)
        assert parent.info.status == "FINISHED"
        assert parent.data.metrics["n_trials_complete"] == 12
        best = client.get_run(parent.data.tags["mlflow_hpo.best_trial_run_id"])
        assert int(best.data.params["trial_number"]) == study.best_trial.number
        history = client.get_metric_history(trials[0].info.run_id, "intermediate_value")
        assert len(history) == 3

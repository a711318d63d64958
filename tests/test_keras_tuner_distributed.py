"""Keras Tuner's own distributed mode: a chief and two workers on loopback, one parent run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _services import mlflow_server, postgres_database
from conftest import free_port, study_runs
from mlflow import MlflowClient

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    from sklearn.datasets import load_digits
    from mlflow_hpo.keras_tuner import RandomSearch

    def build(hp):
        model = keras.Sequential([keras.Input((64,)),
                                  keras.layers.Dense(hp.Int("units", 4, 32, step=4)),
                                  keras.layers.Dense(10, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    digits = load_digits()
    x, y = digits.data[:200] / 16.0, digits.target[:200]
    tuner = RandomSearch(build, objective="val_accuracy", max_trials=4, seed=0,
                         directory=sys.argv[1], project_name="dist", experiment_name="dist",
                         log_models="none")
    tuner.search(x, y, validation_split=0.25, epochs=1, verbose=0)
""")


def test_chief_and_two_workers_log_into_one_parent(tmp_path: Path) -> None:
    port = free_port()
    with (
        postgres_database() as backend,
        mlflow_server(backend, tmp_path / "artifacts", free_port()) as url,
    ):
        base = {
            **os.environ,
            "MLFLOW_TRACKING_URI": url,
            "MLFLOW_HPO_STRICT": "1",
            "KERASTUNER_ORACLE_IP": "127.0.0.1",
            "KERASTUNER_ORACLE_PORT": str(port),
        }
        procs = {}
        for tuner_id in ("chief", "tuner0", "tuner1"):
            env = {**base, "KERASTUNER_TUNER_ID": tuner_id}
            procs[tuner_id] = subprocess.Popen(
                [sys.executable, "-c", SCRIPT, str(tmp_path / f"kt-{tuner_id}")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        for tuner_id, proc in procs.items():
            out, _ = proc.communicate(timeout=400)
            assert proc.returncode == 0, f"{tuner_id}:\n{out[-3000:]}"

        client = MlflowClient(url)
        parent, trials = study_runs(client, "dist")
        assert sorted(int(t.data.params["trial_number"]) for t in trials) == [0, 1, 2, 3]
        assert all(t.info.status == "FINISHED" for t in trials)
        assert parent.info.status == "FINISHED"
        assert parent.data.metrics["n_trials_complete"] == 4
        # Trials run on the workers; the chief only serves the oracle and writes the summary.
        assert {t.data.tags["keras_tuner.tuner_id"] for t in trials} <= {"tuner0", "tuner1"}

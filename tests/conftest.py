"""Shared fixtures: a fresh SQLite MLflow store per test, a private journal home, leak checks.

Tests run in the default (non-strict) mode that users run; the few tests that assert what
strict mode does pass ``strict=True`` themselves.
"""

from __future__ import annotations

import os
import shutil
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run, ViewType

from mlflow_hpo._core import compat

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(autouse=True)
def _isolated_and_no_leaks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Each test gets its own journal home; no test may leave an active run behind, nor
    write into the working tree (MLflow's default artifact root is ./mlruns of the cwd)."""
    monkeypatch.delenv("MLFLOW_HPO_STRICT", raising=False)
    monkeypatch.setenv("MLFLOW_HPO_HOME", str(tmp_path / "mlflow-hpo-home"))
    # Reports take a second or two per study: only the tests of reports turn them on.
    monkeypatch.setenv("MLFLOW_HPO_REPORTS", "0")
    monkeypatch.chdir(tmp_path)
    yield
    chosen = compat.active_experiment_id()  # a test's own mlflow.set_experiment
    if chosen is not None:
        compat.clear_active_experiment(chosen)
    leaked = mlflow.active_run()
    while mlflow.active_run() is not None:
        mlflow.end_run()
    assert leaked is None, f"active run leaked out of the test: {leaked.info.run_id}"


@pytest.fixture(scope="session")
def _template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty store whose schema MLflow created once; copied for each test (migrating a
    fresh SQLite file costs seconds)."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    cwd = os.getcwd()
    os.chdir(path.parent)  # the Default experiment's artifact root: ./mlruns of here
    try:
        MlflowClient(f"sqlite:///{path}").search_experiments(max_results=1)
    finally:
        os.chdir(cwd)
    return path


@pytest.fixture
def tracking_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _template_db: Path
) -> Iterator[str]:
    """A fresh SQLite store under ``tmp_path``, set as MLflow's tracking URI."""
    shutil.copy(_template_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    monkeypatch.chdir(tmp_path)  # anything writing to ./mlruns lands in tmp_path, not the repo
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture
def client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri)


def all_runs(client: MlflowClient, experiment_name: str) -> list[Run]:
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, f"experiment {experiment_name!r} was not created"
    return client.search_runs(
        [experiment.experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=5000
    )


def study_runs(client: MlflowClient, experiment_name: str) -> tuple[Run, list[Run]]:
    """The single parent run and its trial runs (asserts there is exactly one parent)."""
    runs = all_runs(client, experiment_name)
    parents = [r for r in runs if r.data.tags.get("mlflow_hpo.role") == "study"]
    assert len(parents) == 1, f"expected one parent run, found {len(parents)}"
    children = [r for r in runs if r.data.tags.get("mlflow_hpo.role") == "trial"]
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    return parents[0], sorted(children, key=_trial_order)


def _trial_order(run: Run) -> tuple[int, str]:
    """A run's trial number: its param, or (a run whose process died before writing its
    params) the number in its name, ``trial-<n>``."""
    number = run.data.params.get("trial_number") or run.info.run_name.rsplit("-", 1)[-1]
    return int(number), run.info.run_name


def assert_no_running(client: MlflowClient, experiment_name: str) -> None:
    running = [
        r.info.run_name for r in all_runs(client, experiment_name) if r.info.status == "RUNNING"
    ]
    assert not running, f"runs left RUNNING: {running}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hyperparameters(run: Run, client: MlflowClient | None = None) -> dict:
    """The trial's typed hyperparameter record, as its run shows it: a small JSON tag, or
    (too big for a tag, then ``client`` is needed) the ``hyperparameters.json`` artifact."""
    import json

    if "mlflow_hpo.hyperparameters" in run.data.tags:
        return json.loads(run.data.tags["mlflow_hpo.hyperparameters"])
    assert client is not None, "the record is an artifact: pass the client"
    with open(client.download_artifacts(run.info.run_id, "hyperparameters.json")) as f:
        return json.load(f)


def output_exceptions(run: Run) -> list[str]:
    """The trial's output exception list, as its run shows it (a small JSON tag)."""
    import json

    return json.loads(run.data.tags["mlflow_hpo.output_exceptions"])

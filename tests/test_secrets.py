"""Credentials never leave the process: not in what we print or raise, not in what we store."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pytest
from conftest import free_port

from mlflow_hpo.errors import ConfigurationError
from mlflow_hpo.optuna import MlflowStudyCallback

SECRET = "s3cr3t-pass"


def test_credentials_in_the_uri_and_the_environment_are_never_shown_nor_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-" + SECRET)
    with pytest.raises(ConfigurationError) as raised:
        MlflowStudyCallback(tracking_uri=f"http://user:{SECRET}@:5000")
    assert SECRET not in str(raised.value) and "***" in str(raised.value)

    # A server that is down: MLflow's own errors repeat the URI, credentials included.
    uri = f"http://user:{SECRET}@127.0.0.1:{free_port()}"
    study = optuna.create_study()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with MlflowStudyCallback(tracking_uri=uri, close_timeout=1) as tracker:
            study.optimize(tracker.track(lambda t: 1.0), n_trials=2, callbacks=[tracker])
    messages = [str(w.message) for w in caught]
    assert messages and any("127.0.0.1" in m for m in messages)
    assert not [m for m in messages if SECRET in m]
    # The journal that waits for the store keeps the URI without its credentials.
    stored = b"".join(
        p.read_bytes() for p in (tmp_path / "mlflow-hpo-home").rglob("*") if p.is_file()
    )
    assert b"127.0.0.1" in stored
    assert SECRET.encode() not in stored
    import mlflow

    mlflow.set_tracking_uri(None)

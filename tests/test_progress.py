"""The progress line: shown on a terminal, quiet with verbose=0 and in non-TTY logs."""

from __future__ import annotations

import io
import sys

import pytest
from mlflow import MlflowClient
from sklearn.model_selection import ParameterGrid

from mlflow_hpo.errors import ConfigurationError
from mlflow_hpo.sklearn import tracked_sampler


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _loop(experiment: str, **options: object) -> None:
    loop = tracked_sampler(
        ParameterGrid({"x": [1, 3, 2]}),
        objective="score",
        direction="maximize",
        experiment_name=experiment,
        **options,
    )
    with loop as study:
        for params, trial in study:
            trial.log(score=params["x"])


def test_terminal_shows_done_best_and_eta_on_one_line(
    client: MlflowClient, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    _loop("progress")
    out = terminal.getvalue()
    updates = out.rstrip("\n").split("\r")[1:]
    assert "\n" not in out.rstrip("\n")  # rewritten in place, one line
    assert updates[0].startswith("[mlflow-hpo] ParameterGrid: 1/3 trials, best score 1")
    assert "ETA" in updates[1] and "best score 3" in updates[1]
    assert updates[2].startswith("[mlflow-hpo] ParameterGrid: 3/3 trials, best score 3")
    assert "elapsed" in updates[2]


def test_quiet_with_verbose_0_and_without_a_terminal(
    client: MlflowClient, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    _loop("quiet", verbose=0)
    log = io.StringIO()  # e.g. stderr redirected to a CI log
    monkeypatch.setattr(sys, "stderr", log)
    _loop("log")
    assert "[mlflow-hpo]" not in terminal.getvalue() + log.getvalue()
    with pytest.raises(ConfigurationError, match="verbose"):
        tracked_sampler(
            ParameterGrid({"x": [1]}), objective="score", direction="maximize", verbose=-1
        )


def test_optuna_shows_an_eta_when_told_how_many_trials_to_expect(
    client: MlflowClient, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna

    from mlflow_hpo.optuna import MlflowStudyCallback

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    study = optuna.create_study(study_name="eta")
    with MlflowStudyCallback(
        experiment_name="eta", metric_name="loss", expected_trials=4
    ) as tracker:
        study.optimize(
            tracker.track(lambda t: t.suggest_float("x", 0, 1)), n_trials=4, callbacks=[tracker]
        )
    updates = terminal.getvalue().rstrip("\n").split("\r")[1:]
    assert updates[0].startswith("[mlflow-hpo] eta: 1/4 trials, best loss")
    assert "ETA" in updates[2] and updates[3].startswith("[mlflow-hpo] eta: 4/4 trials")
    with pytest.raises(ConfigurationError, match="expected_trials"):
        MlflowStudyCallback(expected_trials=0)

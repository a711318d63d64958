"""``mlflow_hpo.space``: one builder, translated for each backend, checked like a constructor."""

from __future__ import annotations

import keras_tuner
import optuna
import pytest
from sklearn.model_selection import ParameterSampler

from mlflow_hpo import space
from mlflow_hpo.errors import ConfigurationError


@space.builder
def configure(hp: space.HP) -> dict:
    """A builder that returns what it was given, so each translation can be checked."""
    config = {
        "layers": hp.int("layers", 1, 4),
        "units": hp.int("units", 8, 64, step=8),
        "width": hp.int("width", 8, 256, log=True),
        "rate": hp.float("rate", 1e-4, 1e-1, log=True),
        "dropout": hp.float("dropout", 0.0, 0.5, step=0.1),
        "activation": hp.choice("activation", ["relu", "tanh"]),
        "batch_norm": hp.boolean("batch_norm"),
    }
    if config["layers"] > 2:  # a conditional parameter
        config["skip"] = hp.boolean("skip")
    return config


def test_optuna_gets_the_same_space_with_bounds_step_and_log() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
    study.optimize(lambda trial: configure(trial)["rate"], n_trials=20)
    distributions = study.trials[0].distributions
    assert distributions["units"] == optuna.distributions.IntDistribution(8, 64, step=8)
    assert distributions["rate"] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    assert distributions["dropout"].step == pytest.approx(0.1)
    assert distributions["batch_norm"].choices == (False, True)
    assert any("skip" in t.params for t in study.trials)  # conditionals reach the backend


def test_keras_tuner_gets_the_same_space() -> None:
    hp = keras_tuner.HyperParameters()
    configure(hp)
    units = hp.get_config()["space"]
    by_name = {item["config"]["name"]: item for item in units}
    assert by_name["units"]["config"]["step"] == 8
    assert by_name["rate"]["config"]["sampling"] == "log"
    assert by_name["width"]["config"]["sampling"] == "log"  # a log int works here too
    assert 8 <= hp.get("width") <= 256
    assert by_name["activation"]["class_name"] == "Choice"
    assert by_name["batch_norm"]["class_name"] == "Boolean"


def test_sampler_samples_are_valid_values_of_the_space() -> None:
    samples = list(configure.sampler(n_iter=50, random_state=0))
    assert isinstance(configure.sampler(2), ParameterSampler)
    for values in samples:
        config = configure(values)  # the builder accepts every sample as it is
        assert config["units"] == values["units"] and config["rate"] == values["rate"]
        assert 1 <= values["layers"] <= 4 and values["units"] % 8 == 0
        assert 1e-4 <= values["rate"] <= 1e-1
    assert {v["activation"] for v in samples} == {"relu", "tanh"}
    assert "skip" not in samples[0]  # read from one default call: the branch is not sampled


def test_values_are_checked_against_the_declaration() -> None:
    with pytest.raises(ConfigurationError, match=r"units: expected a value in \[8, 64\]"):
        configure({"units": 128})
    with pytest.raises(ConfigurationError, match="activation: expected one of"):
        configure({"activation": "gelu"})
    assert configure({})["units"] == 8  # a missing value takes its default
    with pytest.raises(ConfigurationError, match="low < high"):
        space.builder(lambda hp: hp.int("n", 5, 1))({})
    with pytest.raises(ConfigurationError, match="non-empty list"):
        space.builder(lambda hp: hp.choice("c", []))({})
    with pytest.raises(ConfigurationError, match="an optuna Trial"):
        configure(42)

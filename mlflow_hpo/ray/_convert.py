"""Translate Ray Tune objects (trials, results, search spaces, checkpoints) into the core's
neutral types, and a restored experiment's record (the callback's state, the study's runs)
into what the tracker needs to go on. Everything here runs in the driver, in Tune's hooks."""

from __future__ import annotations

import glob
import math
import os
import pickle
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ray.tune import result as tune_result
from ray.tune.search import sample
from ray.tune.utils import flatten_dict

from mlflow_hpo._core import names
from mlflow_hpo._core.trial import TrialResult
from mlflow_hpo._core.validate import name_string
from mlflow_hpo.errors import ConfigurationError

if TYPE_CHECKING:
    from ray.tune import Checkpoint
    from ray.tune.experiment import Trial


# What Tune adds to every result: bookkeeping, not the user's metrics.
BOOKKEEPING = frozenset(
    {
        *tune_result.AUTO_RESULT_KEYS,
        *tune_result.DEBUG_METRICS,
        tune_result.DONE,
        tune_result.SHOULD_CHECKPOINT,
        tune_result.EXPERIMENT_TAG,
        "__duplicate__",
    }
)
# Model files a checkpoint may hold, in the order they are looked for (top level only).
# Pickles are read only under these names: other pickles in a checkpoint may be anything.
MODEL_PATTERNS = ("*.keras", "model.joblib", "model.pkl", "model.pickle")
# A few rows of the model's input, saved beside it with numpy.save: the logged model's
# input example and signature.
INPUT_EXAMPLE = "input_example.npy"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def plain(value: Any) -> Any:
    """``value`` with NumPy scalars as Python numbers (the typed record keeps ``int`` an
    ``int``: ``tune.randint`` samples ``numpy.int64``)."""
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


def metrics_of(result: Mapping[str, Any]) -> dict[str, float]:
    """The user's numeric values of a Tune result, nested dicts flattened with ``/``."""
    mine = {k: v for k, v in result.items() if k not in BOOKKEEPING}
    out: dict[str, float] = {}
    for name, value in flatten_dict(mine, delimiter="/").items():
        value = plain(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[name] = float(value)
    return out


def params_of(trial: Trial) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(hyperparameters, constants)``: the values the searcher chose (``/`` for nested
    keys), and the rest of the resolved config. A searcher that does not say what it chose
    makes the whole config the hyperparameters."""
    config = {k: plain(v) for k, v in flatten_dict(dict(trial.config), delimiter="/").items()}
    chosen = {k: plain(v) for k, v in dict(trial.evaluated_params or {}).items()}
    if not chosen:
        return config, {}
    return chosen, {k: v for k, v in config.items() if k not in chosen}


def describe(space: Mapping[str, Any] | None) -> dict[str, Any]:
    """A JSON-able description of each searched entry of a ``param_space`` (constants are
    left out), keyed like :func:`params_of` (``/`` for nested keys)."""
    out: dict[str, Any] = {}
    for name, value in dict(space or {}).items():
        key = str(name)
        if isinstance(value, Mapping) and set(value) == {"grid_search"}:
            out[key] = {"type": "grid", "values": [plain(v) for v in value["grid_search"]]}
        elif isinstance(value, Mapping):
            out.update({f"{key}/{k}": v for k, v in describe(value).items()})
        elif isinstance(value, sample.Domain):
            out[key] = _domain(value)
    return out


def _domain(domain: sample.Domain) -> dict[str, Any]:
    if isinstance(domain, sample.Categorical):
        return {"type": "categorical", "choices": [plain(c) for c in domain.categories]}
    if not isinstance(domain, sample.Float | sample.Integer):
        return {"type": type(domain).__name__.lower()}  # sample_from(...)
    sampler = domain.get_sampler()
    out: dict[str, Any] = {"type": "int" if isinstance(domain, sample.Integer) else "float"}
    if isinstance(sampler, sample.Quantized):
        out["step"] = plain(sampler.q)
        sampler = sampler.get_sampler()
    if isinstance(sampler, sample.Normal):
        out.update(normal=True, mean=plain(sampler.mean), sd=plain(sampler.sd))
        return out
    out.update(low=plain(domain.lower), high=plain(domain.upper))
    out["log"] = isinstance(sampler, sample.LogUniform)
    if isinstance(domain, sample.Integer) and "step" not in out:
        out["high_exclusive"] = True  # tune.randint / lograndint
    return out


def error_text(trial: Trial) -> str:
    """The trial's ``error.txt`` (every failure, with the remote traceback), colours
    removed. Read from the driver's copy, which is current in ``on_trial_error`` (the
    synced copy ``trial.get_error()`` reads can lag behind)."""
    text = ""
    path = trial.error_file
    if path and os.path.exists(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    if not text.strip():
        try:
            text = str(trial.get_error() or "")
        except Exception:  # the synced copy may not exist at all
            text = ""
    return _ANSI.sub("", text).strip() or "Ray Tune reported the trial as errored."


def experiment_path(trial: Trial) -> str:
    """Where Tune keeps the experiment (``Tuner.restore`` takes this path)."""
    return str(trial.remote_experiment_path)


def model_file(folder: str) -> str | None:
    """The model file at the top of a checkpoint folder, if it holds one."""
    for pattern in MODEL_PATTERNS:
        found = sorted(glob.glob(os.path.join(glob.escape(folder), pattern)))
        if found:
            return found[0]
    return None


def load_model(checkpoint: Checkpoint) -> tuple[Any, Any]:
    """``(model, input example)`` from ``checkpoint``: the Keras model (``*.keras``) or the
    scikit-learn estimator (``model.joblib``, ``model.pkl``) it holds, else ``None``; and the rows
    of ``input_example.npy`` if it has one. Loaded now: Tune may delete the folder once a
    newer checkpoint exists (``CheckpointConfig(num_to_keep=...)``)."""
    with checkpoint.as_directory() as folder:
        path = model_file(folder)
        if path is None:
            return None, None
        example = None
        if os.path.exists(os.path.join(folder, INPUT_EXAMPLE)):
            import numpy

            example = numpy.load(os.path.join(folder, INPUT_EXAMPLE), allow_pickle=False)
        if path.endswith(".keras"):
            import keras

            return keras.models.load_model(path), example
        if path.endswith(".joblib"):
            import joblib

            model = joblib.load(path)
        else:
            with open(path, "rb") as f:
                model = pickle.load(f)  # the user's own checkpoint, written by their trainable
    from sklearn.base import BaseEstimator

    return (model, example) if isinstance(model, BaseEstimator) else (None, None)


def ran_full(last: Mapping[str, Any], budget: tuple[str, float | None], stop: Mapping) -> bool:
    """Whether Tune stopped a trial (its last result has ``done=True``) because the trial
    used its whole budget: the scheduler's ``max_t`` of ``time_attr`` (``budget``), or a
    ``RunConfig(stop={...})`` criterion."""
    time_attr, max_t = budget
    values = {**metrics_of(last), **{k: plain(v) for k, v in last.items()}}

    def reached(key: str, limit: Any) -> bool:
        value = values.get(key)
        if not isinstance(value, int | float) or not isinstance(limit, int | float):
            return False
        if isinstance(value, bool) or isinstance(limit, bool):
            return False
        return math.isfinite(value) and value >= limit

    return (max_t is not None and reached(time_attr, max_t)) or any(
        reached(k, v) for k, v in stop.items()
    )


# ---------------------------------------------------------------- restored experiments
def outcome(result: TrialResult) -> dict[str, Any]:
    """What the callback's state keeps of a finished trial (plain data: Tune pickles it)."""
    values = list(result.values.values())
    return {
        "state": result.state,
        "value": values[0] if values else None,
        "params": dict(result.params),
        "start": result.start_ms,
        "end": result.end_ms,
    }


def earlier(
    outcomes: Mapping[str, Mapping[str, Any]],
    numbers: Mapping[str, int],
    written: set[str],
    metric: str,
) -> list[tuple[str, int, TrialResult]]:
    """The trials an earlier session of a restored experiment finished, as the core's
    records (``written``: the ones this session wrote itself)."""
    out = []
    for key, o in outcomes.items():
        if key in written:
            continue
        value = o.get("value")
        result = TrialResult(
            state=o["state"],
            params=dict(o.get("params") or {}),
            values={metric: value} if value is not None else {},
            tags={names.TAG_RAY_TRIAL_ID: key},
            start_ms=o.get("start"),
            end_ms=o.get("end"),
        )
        out.append((key, numbers.get(key, 0), result))
    return out


MODES = {"max": "maximize", "min": "minimize"}


def checked_arguments(
    metric: Any, mode: Any, max_t: Any, time_attr: Any, param_space: Any
) -> tuple[str, str, float | None, str]:
    """``(metric, mode, max_t, time_attr)`` of the callback, checked before any run exists.

    Raises:
        ConfigurationError: One of them (or ``param_space``) is not what Tune takes.
    """
    fix = (
        "Tune does not tell callbacks what it optimises: give the TuneConfig's metric and "
        'mode again, e.g. MlflowTuneCallback("val_accuracy", "max", ...).'
    )
    if metric is None:
        raise ConfigurationError("metric", "the metric of TuneConfig(metric=...)", None, fix)
    checked_metric = str(name_string("metric", metric, allow_none=False))
    if not isinstance(mode, str) or mode not in MODES:
        raise ConfigurationError("mode", '"max" or "min" (as in TuneConfig)', mode, fix)
    number = isinstance(max_t, int | float) and not isinstance(max_t, bool)
    if max_t is not None and not (number and math.isfinite(max_t) and max_t > 0):
        raise ConfigurationError("max_t", "None or a number > 0 (the scheduler's)", max_t)
    checked_time = str(name_string("time_attr", time_attr, allow_none=False))
    if param_space is not None and not isinstance(param_space, Mapping):
        raise ConfigurationError("param_space", "None or the Tuner's param_space dict", param_space)
    return checked_metric, mode, max_t, checked_time

"""One search space for three backends: a builder ``build(hp)`` written once.

``hp.int``, ``hp.float``, ``hp.choice`` and ``hp.boolean`` declare and return a value. The
decorated builder accepts whatever the backend hands it and translates the calls:

* an Optuna ``Trial`` (or ``FixedTrial``): ``suggest_int``/``suggest_float``/...;
* a Keras Tuner ``HyperParameters``: ``Int``/``Float``/``Choice``/``Boolean``;
* a plain ``dict`` of values (a scikit-learn ``ParameterSampler`` sample, or the values a
  trial recorded): the values themselves, each checked against its declaration.

``build.sampler(n_iter)`` gives the ``ParameterSampler`` of the same space, and
:func:`mlflow_hpo.rebuild` calls the builder with a trial's recorded values.

Example:
    >>> from mlflow_hpo import space
    >>> @space.builder
    ... def build(hp):
    ...     model = keras.Sequential([keras.Input((8, 8, 1))])
    ...     for i in range(hp.int("n_blocks", 1, 3)):
    ...         model.add(keras.layers.Conv2D(hp.choice("filters", [8, 16]), 2))
    ...     ...
    ...     return model
    >>> study.optimize(lambda trial: train(build(trial)))          # Optuna
    >>> kt.RandomSearch(build, objective="val_accuracy")            # Keras Tuner
    >>> tracked_sampler(build.sampler(n_iter=10))                  # scikit-learn
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlflow_hpo.errors import ConfigurationError


@dataclass(frozen=True)
class Dimension:
    """One declared hyperparameter."""

    name: str
    kind: str  # "int", "float", "choice", "boolean"
    low: Any = None
    high: Any = None
    step: Any = None
    log: bool = False
    values: tuple[Any, ...] = ()

    def default(self) -> Any:
        return self.values[0] if self.kind in ("choice", "boolean") else self.low


class HP(ABC):
    """The ``hp`` a space builder receives. Subclasses decide where values come from."""

    def __init__(self) -> None:
        self.dimensions: dict[str, Dimension] = {}

    def int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        _check_range(name, low, high, int, log)
        if isinstance(step, bool) or not isinstance(step, int) or step < 1 or (log and step != 1):
            raise ConfigurationError(
                f"{name}.step", "an int >= 1 (and 1 with log=True)", step, "Drop step=."
            )
        return int(self._value(Dimension(name, "int", low, high, step, log)))

    def float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        _check_range(name, low, high, float, log)
        if step is not None and (
            not isinstance(step, int | float) or not math.isfinite(step) or step <= 0 or log
        ):
            raise ConfigurationError(
                f"{name}.step", "None, or a finite step > 0 (and None with log=True)", step
            )
        return float(self._value(Dimension(name, "float", low, high, step, log)))

    def choice(self, name: str, values: Sequence[Any]) -> Any:
        if isinstance(values, str) or not values:
            raise ConfigurationError(f"{name}.values", "a non-empty list of choices", values)
        return self._value(Dimension(name, "choice", values=tuple(values)))

    def boolean(self, name: str) -> bool:
        return bool(self._value(Dimension(name, "boolean", values=(False, True))))

    def _value(self, dimension: Dimension) -> Any:
        self.dimensions[dimension.name] = dimension
        return self._suggest(dimension)

    @abstractmethod
    def _suggest(self, dimension: Dimension) -> Any:
        """The value of ``dimension``: suggested by the backend, or given up front."""


def _check_range(name: str, low: Any, high: Any, kind: type, log: bool) -> None:
    """Bounds that every backend can sample: finite numbers, ``low < high``, and ``low > 0``
    on a log scale. Raises :class:`ConfigurationError` naming the parameter."""
    numbers = (int,) if kind is int else (int, float)
    if not all(isinstance(v, numbers) and not isinstance(v, bool) for v in (low, high)):
        raise ConfigurationError(
            f"bounds of {name!r}", f"{kind.__name__} bounds (low, high)", (low, high)
        )
    if not all(math.isfinite(v) for v in (low, high)):
        raise ConfigurationError(
            f"bounds of {name!r}", "finite numbers (no NaN, no infinity)", (low, high)
        )
    if low >= high:
        raise ConfigurationError(
            f"bounds of {name!r}",
            "low < high",
            (low, high),
            "Swap the bounds, or use hp.choice for a single value.",
        )
    if log and low <= 0:
        raise ConfigurationError(
            f"bounds of {name!r}",
            "low > 0 on a log scale",
            (low, high),
            "Use a positive low bound, or log=False.",
        )


class OptunaHP(HP):
    def __init__(self, trial: Any) -> None:
        super().__init__()
        self.trial = trial

    def _suggest(self, d: Dimension) -> Any:
        if d.kind == "int":
            return self.trial.suggest_int(d.name, d.low, d.high, step=d.step, log=d.log)
        if d.kind == "float":
            return self.trial.suggest_float(d.name, d.low, d.high, step=d.step, log=d.log)
        return self.trial.suggest_categorical(d.name, list(d.values))


class KerasTunerHP(HP):
    def __init__(self, hp: Any) -> None:
        super().__init__()
        self.hp = hp

    def _suggest(self, d: Dimension) -> Any:
        sampling = "log" if d.log else "linear"
        if d.kind == "int":
            # Keras Tuner refuses an explicit step with sampling="log" (1.4.8).
            step = None if d.log else d.step
            return self.hp.Int(d.name, d.low, d.high, step=step, sampling=sampling)
        if d.kind == "float":
            return self.hp.Float(d.name, d.low, d.high, step=d.step, sampling=sampling)
        if d.kind == "boolean":
            return self.hp.Boolean(d.name)
        return self.hp.Choice(d.name, list(d.values))


class FixedHP(HP):
    """Values given up front (a sampler's sample, or a trial's recorded values).

    A name missing from ``values`` (a conditional branch the sample did not decide) takes
    its declaration's default: ``low``, or the first choice.
    """

    def __init__(self, values: Mapping[str, Any]) -> None:
        super().__init__()
        self.values = dict(values)

    def _suggest(self, d: Dimension) -> Any:
        if d.name not in self.values:
            return d.default()
        value = self.values[d.name]
        if d.kind in ("int", "float"):
            if not (d.low - 1e-9 <= float(value) <= d.high + 1e-9):
                raise ConfigurationError(d.name, f"a value in [{d.low}, {d.high}]", value)
            if d.kind == "float" and d.step is not None:
                value = round(float(value), 12)  # 0.1 + 2 * 0.1 is 0.30000000000000004
        elif value not in d.values:
            raise ConfigurationError(d.name, f"one of {list(d.values)}", value)
        return value


class _Recorder(FixedHP):
    def __init__(self) -> None:
        super().__init__({})


class SpaceBuilder:
    """A builder ``build(hp)`` usable by Optuna, Keras Tuner and scikit-learn samplers."""

    _mlflow_hpo_space = True

    def __init__(self, build: Callable[[HP], Any]) -> None:
        if not callable(build):
            raise ConfigurationError("build", "a callable build(hp)", build)
        self.build = build
        functools.update_wrapper(self, build)

    def __call__(self, source: Any, *args: Any, **kwargs: Any) -> Any:
        return self.build(adapt(source), *args, **kwargs)

    def dimensions(self) -> dict[str, Dimension]:
        """The declared hyperparameters, found by calling the builder once with defaults."""
        recorder = _Recorder()
        self.build(recorder)
        return recorder.dimensions

    def distributions(self) -> dict[str, Any]:
        """The space as ``ParameterSampler`` distributions (scipy.stats or lists)."""
        from scipy import stats

        out: dict[str, Any] = {}
        for d in self.dimensions().values():
            if d.kind == "int":
                if d.log:  # log-uniform over the ints, as Optuna and Keras Tuner do
                    out[d.name] = _IntLogUniform(d.low, d.high)
                else:
                    out[d.name] = list(range(d.low, d.high + 1, d.step))
            elif d.kind == "float":
                if d.log:
                    out[d.name] = stats.loguniform(d.low, d.high)
                elif d.step is not None:
                    n = math.floor((d.high - d.low) / d.step + 1e-9)
                    out[d.name] = [d.low + i * d.step for i in range(n + 1)]
                else:
                    out[d.name] = stats.uniform(d.low, d.high - d.low)
            else:
                out[d.name] = list(d.values)
        return out

    def hyperopt_space(self) -> dict[str, Any]:
        """The space as Hyperopt expressions (``hp.*``), for ``fmin(space=...)``.

        Ints and stepped floats are drawn as an index into their exact grid, so every value
        is one the declaration allows (Hyperopt's ``quniform`` can step past the bounds);
        ``hyperopt.space_eval`` gives the values, which the builder then takes as a dict.
        """
        from hyperopt import hp
        from hyperopt.pyll import scope

        out: dict[str, Any] = {}
        for d in self.dimensions().values():
            if d.kind == "int" and d.log:
                draw = hp.qloguniform(d.name, math.log(d.low), math.log(d.high), 1)
                out[d.name] = scope.int(scope.minimum(scope.maximum(draw, d.low), d.high))
            elif d.kind == "int":
                n = (d.high - d.low) // d.step + 1
                out[d.name] = scope.int(d.low + d.step * hp.randint(d.name, 0, n))
            elif d.kind == "float" and d.log:
                out[d.name] = hp.loguniform(d.name, math.log(d.low), math.log(d.high))
            elif d.kind == "float" and d.step is not None:
                n = math.floor((d.high - d.low) / d.step + 1e-9) + 1
                out[d.name] = d.low + d.step * hp.randint(d.name, 0, n)
            elif d.kind == "float":
                out[d.name] = hp.uniform(d.name, d.low, d.high)
            else:
                out[d.name] = hp.choice(d.name, list(d.values))
        return out

    def tune_space(self) -> dict[str, Any]:
        """The space as Ray Tune distributions (``tune.*``), for ``param_space=``.

        Tune's ``randint`` and ``lograndint`` exclude their upper bound, and its
        ``qrandint(q=1)`` does too: the bounds are shifted so ``high`` stays possible.
        """
        from ray import tune

        out: dict[str, Any] = {}
        for d in self.dimensions().values():
            if d.kind == "int" and d.log:
                out[d.name] = tune.lograndint(d.low, d.high + 1)
            elif d.kind == "int" and d.step > 1:
                out[d.name] = tune.qrandint(d.low, d.high, d.step)
            elif d.kind == "int":
                out[d.name] = tune.randint(d.low, d.high + 1)
            elif d.kind == "float" and d.log:
                out[d.name] = tune.loguniform(d.low, d.high)
            elif d.kind == "float" and d.step is not None:
                out[d.name] = tune.quniform(d.low, d.high, d.step)
            elif d.kind == "float":
                out[d.name] = tune.uniform(d.low, d.high)
            else:
                out[d.name] = tune.choice(list(d.values))
        return out

    def sampler(self, n_iter: int, random_state: Any = None) -> Any:
        """``ParameterSampler`` over this space (for ``tracked_sampler``)."""
        from sklearn.model_selection import ParameterSampler

        return ParameterSampler(self.distributions(), n_iter=n_iter, random_state=random_state)


class _IntLogUniform:
    """Ints drawn log-uniformly from [low, high] (an ``rvs`` for ``ParameterSampler``)."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def rvs(self, random_state: Any = None) -> int:
        from scipy import stats

        value = stats.loguniform(self.low, self.high + 1).rvs(random_state=random_state)
        return int(min(self.high, math.floor(value)))

    def __repr__(self) -> str:
        return f"int_loguniform({self.low}, {self.high})"


def builder(build: Callable[[HP], Any]) -> SpaceBuilder:
    """Decorate ``build(hp)`` so every backend can call it (see the module docstring)."""
    return SpaceBuilder(build)


def adapt(source: Any) -> HP:
    """The ``hp`` for ``source``: an Optuna trial, Keras Tuner hyperparameters, or values."""
    if isinstance(source, HP):
        return source
    if isinstance(source, Mapping):
        return FixedHP(source)
    module = type(source).__module__
    if module.startswith("optuna"):
        return OptunaHP(source)
    if module.startswith("keras_tuner"):
        return KerasTunerHP(source)
    raise ConfigurationError(
        "hp",
        "an optuna Trial, keras_tuner HyperParameters or a dict of values",
        type(source).__name__,
    )

"""Translate Hyperopt's trial documents, results and search spaces into the core's types.

Checked on Hyperopt 0.3.0. The trial documents' fields (``tid``, ``state``, ``misc``,
``result``, ``book_time``, ``refresh_time``) are Hyperopt's documented trial format; the
documents of evaluations that raised come from ``compat.hyperopt_documents``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
from hyperopt import STATUS_OK, pyll, space_eval
from hyperopt.base import (
    JOB_STATE_DONE,
    JOB_STATE_ERROR,
    JOB_STATE_RUNNING,
    STATUS_FAIL,
    STATUS_STRINGS,
    spec_from_misc,
)
from hyperopt.exceptions import InvalidAnnotatedParameter, InvalidLoss, InvalidResultStatus
from hyperopt.pyll.base import Apply, Literal, MissingArgument

from mlflow_hpo._core import batch, compat, names
from mlflow_hpo._core.trial import TrialResult

# The misc["error"] of a document an interrupted evaluation left RUNNING, once retired.
INTERRUPTED = "<class 'KeyboardInterrupt'>"
_RETIRED = (
    "the evaluation was interrupted and never finished; mlflow-hpo retired it when fmin was "
    "called again, so it does not count toward max_evals"
)
_RESERVED = {"loss", "status"}  # result keys that are not extra metrics


# ----------------------------------------------------------------- documents (0.3.0)
def documents(trials: Any) -> list[dict[str, Any]]:
    """Every trial document, those of evaluations that raised included."""
    return compat.hyperopt_documents(trials)


def retire_zombies(trials: Any) -> int:
    """Mark documents left RUNNING by an interrupted ``fmin`` as errors; return how many.

    In serial mode nothing can be running when ``fmin`` starts. A RUNNING document would
    otherwise count toward ``max_evals`` forever, with no result.
    """
    retired = 0
    for doc in documents(trials):
        if doc.get("state") == JOB_STATE_RUNNING:
            doc["state"] = JOB_STATE_ERROR
            doc.setdefault("misc", {})["error"] = (INTERRUPTED, _RETIRED)
            retired += 1
    if retired:
        trials.refresh()
    return retired


def terminal(trials: Any) -> list[tuple[int, dict[str, Any]]]:
    """``(tid, document)`` of each finished evaluation (done, or raised), in tid order."""
    done = (JOB_STATE_DONE, JOB_STATE_ERROR)
    return sorted(
        ((int(d["tid"]), d) for d in documents(trials) if d.get("state") in done),
        key=lambda pair: pair[0],
    )


def started(doc: Mapping[str, Any]) -> tuple[int, int | None, dict[str, Any]]:
    """``(tid, start ms, spec)`` of a document being evaluated; the spec holds the raw
    draws of its active labels (a choice's index)."""
    return int(doc["tid"]), ms(doc.get("book_time")), spec_from_misc(doc["misc"])


def ms(moment: datetime | None) -> int | None:
    """Milliseconds since the epoch of a document time (naive, in UTC)."""
    if not isinstance(moment, datetime):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def annotated(fn: Callable[..., Any]) -> tuple[dict[str, Any], Callable[[Any], Any]]:
    """``(space, objective)`` for ``space="annotated"``, as ``hyperopt.fmin`` makes them
    before it calls ``trials.fmin`` (a direct ``trials.fmin`` call skips that step).

    Raises:
        InvalidAnnotatedParameter: An annotation is not a Hyperopt expression.
    """
    space = dict(inspect.getfullargspec(fn).annotations)
    if not all(isinstance(expr, Apply) for expr in space.values()):
        raise InvalidAnnotatedParameter(
            'When using `space="annotated"`, please annotate the objective function '
            "arguments with a `pyll.base.Apply` subclass."
        )
    return space, lambda params: fn(**params)


# ------------------------------------------------------------------------- results
def normalize(rval: Any) -> dict[str, Any]:
    """The result dict Hyperopt will store, by the rules of ``Domain.evaluate``.

    Raises:
        KeyError: A dict without ``status``.
        InvalidResultStatus: An unknown status.
        InvalidLoss: ``status`` is ``ok`` without a number as ``loss``.
        TypeError: Neither a number nor a mapping.
    """
    if isinstance(rval, float | int | np.number):
        return {"loss": float(rval), "status": STATUS_OK}
    result = dict(rval)
    if result["status"] not in STATUS_STRINGS:
        raise InvalidResultStatus(result)
    if result["status"] == STATUS_OK:
        try:
            result["loss"] = float(result["loss"])
        except (TypeError, KeyError) as error:
            raise InvalidLoss(result) from error
    return result


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return None
    return float(value)


def from_result(
    result: Mapping[str, Any], objective: str
) -> tuple[str, dict[str, float], dict[str, list[tuple[int, float]]], dict[str, Any]]:
    """``(state, values, histories, tags)`` of a normalised result dict.

    ``ok`` is COMPLETE with the loss as the objective; any other status is FAIL, with the
    status (and the ``reason`` of a ``fail``) as tags. Other numeric keys are metrics.
    """
    status = str(result.get("status"))
    state = names.STATE_COMPLETE if status == STATUS_OK else names.STATE_FAIL
    values: dict[str, float] = {}
    if state == names.STATE_COMPLETE:
        values[objective] = float(result["loss"])
    histories: dict[str, list[tuple[int, float]]] = {}
    for key, value in result.items():
        number = _number(value)
        if number is None or key in _RESERVED or batch.key(str(key)) == batch.key(objective):
            continue
        histories[str(key)] = [(0, number)]
    tags: dict[str, Any] = {names.TAG_HYPEROPT_STATUS: status}
    if status == STATUS_FAIL and result.get("reason") is not None:
        tags[names.TAG_FAIL_REASON] = result["reason"]
    return state, values, histories, tags


# -------------------------------------------------------------------------- spaces
def plain(value: Any) -> Any:
    """``value`` as JSON holds it: numpy scalars become Python numbers, tuples lists, and
    objects JSON cannot hold (an estimator class in ``hp.choice``) their name or repr."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, int | float):
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    qualname = getattr(value, "__qualname__", None)
    if isinstance(qualname, str):
        return f"{getattr(value, '__module__', '')}.{qualname}".lstrip(".")
    return repr(value)


def _labelled(space: Any) -> list[Apply]:
    return [n for n in pyll.dfs(pyll.as_apply(space)) if n.name == "hyperopt_param"]


def _choices(space: Any) -> dict[str, Apply]:
    """Label -> the ``switch`` node an ``hp.choice``/``hp.pchoice`` label selects in."""
    out = {}
    for node in pyll.dfs(pyll.as_apply(space)):
        if node.name == "switch" and node.pos_args[0].name == "hyperopt_param":
            out[str(node.pos_args[0].arg["label"].obj)] = node
    return out


def _literal(node: Any) -> Any:
    return plain(node.obj) if isinstance(node, Literal) else f"<{getattr(node, 'name', node)}>"


def distributions(space: Any) -> dict[str, Any]:
    """Each label's distribution as JSON: its Hyperopt name and literal arguments, or for
    a choice its options."""
    choices = _choices(space)
    out: dict[str, Any] = {}
    for param in _labelled(space):
        label = str(param.arg["label"].obj)
        dist = param.arg["obj"]
        if label in choices:
            kind = "pchoice" if dist.name == "categorical" else "choice"
            options = [_literal(o) for o in choices[label].pos_args[1:]]
            out[label] = {"type": kind, "options": options}
            continue
        args = {
            k: _literal(v)
            for k, v in dist.arg.items()
            if v is not MissingArgument and k not in ("rng", "size")
        }
        if dist.name == "randint" and "high" not in args:
            args = {"low": 0, "high": args.get("low")}  # randint(upper): [0, upper)
        out[label] = {"type": dist.name, **args}
    return out


def label_values(space: Any, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The real value of each active label: a choice's option (not its index), an
    ``hp.uniformint`` as an int, a ``hp.uniform`` as a float."""
    parents: dict[Apply, list[Apply]] = {}
    for node in pyll.dfs(pyll.as_apply(space)):
        for child in node.inputs():
            parents.setdefault(child, []).append(node)
    choices = _choices(space)
    out: dict[str, Any] = {}
    for param in _labelled(space):
        label = str(param.arg["label"].obj)
        if label not in spec:
            continue  # inactive in this trial (a branch of a choice not taken)
        node = choices.get(label)
        if node is None:  # climb the casts hp.uniform/hp.uniformint put around the draw
            node = param
            while len(above := parents.get(node, [])) == 1 and above[0].name in ("int", "float"):
                node = above[0]
        out[label] = plain(space_eval(node, dict(spec)))
    return out


def params(
    space: Any, spec: Mapping[str, Any], config: Any = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(params, extra_params)`` of a trial: what the objective received, as a flat dict.

    A dict space gives the dict the objective received (``space_eval`` applied: a choice's
    option, not its index), so ``build(params)`` rebuilds the trial. Any other space gives
    each label's real value. Nested dicts (conditional spaces) are kept whole in the typed
    record, and each of their leaves is a ``parent.child`` param too, for the UI.
    """
    if config is None:
        config = space_eval(space, dict(spec))
    if not isinstance(config, Mapping):
        return label_values(space, spec), {}
    values = plain(config)
    extra: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            extra.update(_leaves(value, key))
    return values, extra


def _leaves(value: dict[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    for key, inner in value.items():
        path = f"{prefix}.{key}"
        if isinstance(inner, dict):
            yield from _leaves(inner, path)
        else:
            yield path, inner


# ------------------------------------------------------------------- whole documents
def error_of(doc: Mapping[str, Any]) -> tuple[str, str | None, str]:
    """``(state, error_class, text)`` of a document whose evaluation raised."""
    error: tuple[Any, ...] = tuple(doc.get("misc", {}).get("error") or ())
    kind, message, *_ = (*error, "", "")
    name = str(kind).removeprefix("<class '").removesuffix("'>").rsplit(".", 1)[-1] or None
    if kind == INTERRUPTED:
        return names.STATE_KILLED, name, f"KeyboardInterrupt: {message}"
    text = f"{name}: {message}\n(Hyperopt keeps the message of an exception, not its traceback.)"
    return names.STATE_FAIL, name, text


def to_result(
    doc: Mapping[str, Any], space: Any, objective: str, dists: dict[str, Any]
) -> TrialResult:
    """A :class:`TrialResult` from a finished document (a trial this process did not see)."""
    spec = spec_from_misc(doc["misc"])
    values, extra = params(space, spec)
    common: dict[str, Any] = {
        "params": values,
        "extra_params": extra,
        "distributions": dists,
        "start_ms": ms(doc.get("book_time")),
        "end_ms": ms(doc.get("refresh_time")),
    }
    if doc.get("state") == JOB_STATE_ERROR:
        state, error_class, text = error_of(doc)
        return TrialResult(state=state, error=text, error_class=error_class, **common)
    state, objective_values, histories, tags = from_result(doc["result"], objective)
    return TrialResult(
        state=state, values=objective_values, histories=histories, tags=tags, **common
    )

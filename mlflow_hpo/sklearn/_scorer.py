"""``MlflowScorer`` and its fold callback: every fold recorded live, in whichever process.

scikit-learn 1.9's callback API (``sklearn.callback``) calls a search's callbacks around
each fold (``candidate-split-evaluation`` tasks), in the search's process or in a loky
worker, and scores the fold between the two calls, in the same thread. The
:class:`FoldCallback` notes the fold's context when it begins; the scorer computes the scores
with scikit-learn's own ``check_scoring`` and notes them; when the fold ends, the callback
writes one small JSON record (scores, fit and score times, params, output exception list)
to a spool directory that :func:`~mlflow_hpo.sklearn.track_search` owns. The search's process
turns the records into live metrics while the search is still going. Only that process ever
talks to MLflow, so workers need neither the tracking URI nor a store connection, and an
interrupted search keeps every fold that was scored.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sklearn.metrics import check_scoring

from mlflow_hpo.errors import ConfigurationError, MlflowHpoWarning
from mlflow_hpo.layers import output_exceptions_of

FOLD_TASK = "candidate-split-evaluation"  # scikit-learn's name for one candidate x fold
_local = threading.local()  # the fold this thread is evaluating (set by FoldCallback)


@dataclass
class FoldRecord:
    """What the callback and scorer saw for one fold of one candidate.

    ``batch`` names the ``evaluate_candidates`` call (the halving searches make one per
    iteration), ``candidate`` the candidate's index in it, ``fold`` the split index.
    """

    batch: list[int]
    batch_size: int
    candidate: int
    fold: int
    n_splits: int
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # part -> metric -> v
    fit_time: float | None = None
    score_time: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    output_exceptions: list[str] = field(default_factory=list)
    time_ms: int = 0
    pid: int = 0


class MlflowScorer:
    """Scorer for ``scoring=`` of any scikit-learn search CV that records every fold.

    Per fold it records the score(s), the real fit and score times and the candidate's
    params, also with ``n_jobs>1`` where scoring runs in worker processes. The records
    become live metrics (``test_<metric>`` / ``train_<metric>``, ``fit_time``,
    ``score_time``, step = fold) on the candidate's child run as soon as the fold is
    scored, so a long search shows its progress in the MLflow UI and an interrupted search
    keeps what it did. Runs are owned by :func:`~mlflow_hpo.sklearn.track_search`; wrap the
    search with it.

    Args:
        scoring: Anything scikit-learn's ``scoring=`` takes: ``None`` (the estimator's
            ``score``), a scorer name, a callable scorer, or a list/tuple/dict of them for
            multi-metric scoring (then set the search's ``refit`` to one of the names).

    Raises:
        ConfigurationError: ``scoring`` is of a type scikit-learn does not take.

    Example:
        >>> from mlflow_hpo.sklearn import MlflowScorer, track_search
        >>> search = track_search(
        ...     RandomizedSearchCV(model, dists, scoring=MlflowScorer("accuracy"), n_jobs=2),
        ...     experiment_name="digits")
    """

    def __init__(self, scoring: Any = None) -> None:
        if not (
            scoring is None
            or isinstance(scoring, str | list | tuple | dict | set)
            or callable(scoring)
        ):
            raise ConfigurationError(
                "scoring",
                "None, a scorer name, a callable scorer, or a list/tuple/dict of them",
                scoring,
                "Pass what you would pass as the search's scoring=.",
            )
        if isinstance(scoring, str | list | tuple | dict | set) and not scoring:
            raise ConfigurationError("scoring", "a non-empty scorer name or collection", scoring)
        self.scoring = scoring
        self.multimetric = isinstance(scoring, list | tuple | dict | set)
        self.tracked = False  # set by track_search
        self._warned = False

    @property
    def metric_names(self) -> list[str]:
        """The metric names this scorer reports (``["score"]`` for a single metric)."""
        if isinstance(self.scoring, dict | list | tuple | set):
            return [str(k) for k in self.scoring]
        return ["score"]

    def __call__(self, estimator: Any, X: Any, y: Any = None, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = check_scoring(estimator, self.scoring, raise_exc=True)(estimator, X, y, **kwargs)
        fold = getattr(_local, "fold", None)
        if fold is None:
            if not self._warned and not self.tracked:
                self._warned = True
                warnings.warn(
                    "mlflow-hpo: MlflowScorer only records folds inside a tracked search; "
                    "this search is not tracked, so it scores but records nothing. Wrap the "
                    "search: mlflow_hpo.sklearn.track_search(search, experiment_name=...).",
                    MlflowHpoWarning,
                    stacklevel=2,
                )
            return result
        scores = result if isinstance(result, dict) else {"score": result}
        # Test scores come first, on other rows than the fold was fit on; then train.
        part = "train" if X is fold["X_train"] else "test"
        if part == "test":
            fold["fit_end"] = start
            fold["estimator"] = estimator
            fold["score_time"] = time.perf_counter() - start
        fold["scores"][part] = {str(k): float(v) for k, v in scores.items()}
        return result

    def __repr__(self) -> str:
        return f"MlflowScorer({self.scoring!r})"


class FoldCallback:
    """A ``sklearn.callback`` fit callback that spools one record per scored fold.

    Registered on the search by ``track_search`` for the duration of ``fit``; pickled to
    worker processes with nothing but the spool's path and the searched parameter names.
    """

    def __init__(self, spool: str, searched: list[str]) -> None:
        self.spool = spool
        self.searched = searched

    def setup(self, estimator: Any, context: Any) -> None:
        return None

    def teardown(self, estimator: Any, context: Any) -> None:
        return None

    def on_fit_task_begin(self, estimator: Any, context: Any, *, X: Any = None) -> None:
        if context.task_name == FOLD_TASK:
            _local.fold = {"X_train": X, "start": time.perf_counter(), "scores": {}}

    def on_fit_task_end(self, estimator: Any, context: Any) -> bool:
        if context.task_name != FOLD_TASK:
            return False
        fold, _local.fold = getattr(_local, "fold", None), None
        try:
            if fold is not None and "test" in fold["scores"]:
                self._write(estimator, context, fold)
        except Exception as error:  # an end hook that raises would abort the search
            warnings.warn(
                f"mlflow-hpo: a fold could not be recorded ({error!r}); the search goes on.",
                MlflowHpoWarning,
                stacklevel=2,
            )
        return False

    def _write(self, search: Any, context: Any, fold: dict[str, Any]) -> None:
        n_splits = int(search.n_splits_)
        fitted = fold.get("estimator")
        params = {}
        if fitted is not None:
            values = fitted.get_params(deep=True)
            params = {k: _jsonable(values[k]) for k in self.searched if k in values}
        record = FoldRecord(
            batch=_path(context.parent),
            batch_size=int(context.parent.max_subtasks) // n_splits,
            candidate=int(context.task_id) // n_splits,
            fold=int(context.task_id) % n_splits,
            n_splits=n_splits,
            scores=fold["scores"],
            fit_time=fold["fit_end"] - fold["start"],
            score_time=fold.get("score_time"),
            params=params,
            output_exceptions=output_exceptions_of(fitted) if fitted is not None else [],
            time_ms=int(time.time() * 1000),
            pid=os.getpid(),
        )
        write_record(self.spool, record)


def _path(context: Any) -> list[int]:
    ids = []
    while context is not None:
        ids.append(int(context.task_id))
        context = context.parent
    return list(reversed(ids))


def searched_names(search: Any) -> list[str]:
    """The parameter names a search varies (and a halving search's resource)."""
    space = getattr(search, "param_grid", None) or getattr(search, "param_distributions", None)
    spaces = space if isinstance(space, list | tuple) else [space] if space else []
    keys = sorted({str(k) for d in spaces for k in d})
    resource = getattr(search, "resource", "n_samples")
    if isinstance(resource, str) and resource != "n_samples":
        keys.append(resource)
    return keys


def _jsonable(value: Any) -> Any:
    plain = value.item() if hasattr(value, "item") and callable(value.item) else value
    if isinstance(plain, bool | int | str) or plain is None:
        return plain
    if isinstance(plain, float):
        return plain if math.isfinite(plain) else repr(plain)
    return repr(plain)


def write_record(spool: str, record: FoldRecord) -> None:
    """Write atomically: a reader never sees half a record."""
    name = f"{record.time_ms}-{record.pid}-{uuid.uuid4().hex}"
    tmp = os.path.join(spool, f".{name}.tmp")
    with open(tmp, "w") as f:
        json.dump(record.__dict__, f)
    os.replace(tmp, os.path.join(spool, f"{name}.json"))


def read_records(spool: str, seen: set[str]) -> Iterator[FoldRecord]:
    """Records in ``spool`` not in ``seen`` (file names), oldest first; adds them to it."""
    try:
        entries = sorted(e for e in os.listdir(spool) if e.endswith(".json") and e not in seen)
    except FileNotFoundError:
        return
    for entry in entries:
        seen.add(entry)
        try:
            with open(os.path.join(spool, entry)) as f:
                yield FoldRecord(**json.load(f))
        except (OSError, ValueError, TypeError):
            continue

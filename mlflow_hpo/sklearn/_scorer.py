"""``MlflowScorer``: a scorer that records every fold it scores, in whichever process.

scikit-learn calls the scorer inside ``_fit_and_score`` right after the fold's fit, in the
search's process or (``n_jobs>1``) in a loky worker. Either way the scorer computes the
scores with scikit-learn's own scorers, times itself, reads the fold's fit time, index and
candidate params from that call, and writes one small JSON record per fold to a spool
directory that :func:`~mlflow_hpo.sklearn.track_search` owns. The search's process turns the
records into live metrics on the candidates' runs while the search is still going. Only
that process ever talks to MLflow, so worker processes need neither the tracking URI nor a
store connection, and an interrupted search keeps every fold that was scored.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sklearn.metrics import check_scoring
from sklearn.metrics._scorer import _check_multimetric_scoring, _MultimetricScorer

from mlflow_hpo.errors import ConfigurationError, MlflowHpoWarning
from mlflow_hpo.layers import output_exceptions_of

_FIT_AND_SCORE = "_fit_and_score"  # scikit-learn's per-fold function (model_selection)
_FRAMES_UP = 6  # _fit_and_score -> _score -> scorer: a few frames above us at most


@dataclass
class FoldRecord:
    """What the scorer saw for one fold of one candidate.

    ``candidate`` is the candidate's index within its ``evaluate_candidates`` call (for the
    halving searches: within its iteration); ``fold`` is the split index. Either is ``None``
    if the scorer ran outside scikit-learn's cross-validation (e.g. ``search.score``).
    """

    scores: dict[str, float]
    part: str  # "test" or "train"
    score_time: float
    fit_time: float | None = None
    fold: int | None = None
    n_splits: int | None = None
    candidate: int | None = None
    n_candidates: int | None = None
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
        self.spool: str | None = None  # set by track_search for the duration of fit()
        self._warned = False

    @property
    def metric_names(self) -> list[str]:
        """The metric names this scorer reports (``["score"]`` for a single metric)."""
        if isinstance(self.scoring, dict):
            return [str(k) for k in self.scoring]
        if isinstance(self.scoring, list | tuple | set):
            return [str(k) for k in self.scoring]
        return ["score"]

    def _scorer(self, estimator: Any) -> Any:
        if self.multimetric:
            return _MultimetricScorer(
                scorers=_check_multimetric_scoring(estimator, self.scoring),
                raise_exc=True,
            )
        return check_scoring(estimator, self.scoring)

    def __call__(self, estimator: Any, X: Any, y: Any = None, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = self._scorer(estimator)(estimator, X, y, **kwargs)
        score_time = time.perf_counter() - start
        try:
            self._record(estimator, result, score_time)
        except Exception as error:  # never break the user's search
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"mlflow-hpo: MlflowScorer could not record a fold ({error!r}); the "
                    "search goes on unchanged.",
                    MlflowHpoWarning,
                    stacklevel=2,
                )
        return result

    def _record(self, estimator: Any, result: Any, score_time: float) -> None:
        context = _cv_context()
        if context is None:  # e.g. search.score(X, y) after fit: not a fold
            return
        if self.spool is None:
            if not self._warned:
                self._warned = True
                warnings.warn(
                    "mlflow-hpo: MlflowScorer only records folds inside a tracked search; "
                    "this search is not tracked, so it scores but records nothing. Wrap the "
                    "search: mlflow_hpo.sklearn.track_search(search, experiment_name=...).",
                    MlflowHpoWarning,
                    stacklevel=3,
                )
            return
        scores = result if isinstance(result, dict) else {"score": result}
        record = FoldRecord(
            scores={str(k): float(v) for k, v in scores.items()},
            output_exceptions=output_exceptions_of(estimator),
            score_time=score_time,
            time_ms=int(time.time() * 1000),
            pid=os.getpid(),
            **context,
        )
        _write_record(self.spool, record)

    def __repr__(self) -> str:
        return f"MlflowScorer({self.scoring!r})"


def _cv_context() -> dict[str, Any] | None:
    """The fold being scored, read from scikit-learn's ``_fit_and_score`` that called us.

    ``fit_time``, ``parameters``, ``split_progress`` and ``candidate_progress`` are that
    function's own variables, set before it scores; a missing one is left ``None``.
    """
    frame = sys._getframe(2)
    for _ in range(_FRAMES_UP):
        if frame is None:
            return None
        if frame.f_code.co_name == _FIT_AND_SCORE and "sklearn" in frame.f_code.co_filename:
            break
        frame = frame.f_back  # type: ignore[assignment]
    else:
        return None
    local = frame.f_locals
    split = local.get("split_progress") or (None, None)
    candidate = local.get("candidate_progress") or (None, None)
    fit_time = local.get("fit_time")
    return {
        # The train scores are computed after the test ones, once score_time is set.
        "part": "train" if "score_time" in local else "test",
        "fit_time": float(fit_time) if isinstance(fit_time, int | float) else None,
        "fold": split[0],
        "n_splits": split[1],
        "candidate": candidate[0],
        "n_candidates": candidate[1],
        "params": _jsonable(local.get("parameters") or {}),
    }


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        plain = value.item() if hasattr(value, "item") and callable(value.item) else value
        if isinstance(plain, bool | int | str) or plain is None:
            out[str(key)] = plain
        elif isinstance(plain, float):
            out[str(key)] = plain if math.isfinite(plain) else repr(plain)
        else:
            out[str(key)] = repr(plain)
    return out


def _write_record(spool: str, record: FoldRecord) -> None:
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

"""``track_search``: every candidate of a scikit-learn search CV as a nested run.

scikit-learn already computes everything per candidate in ``cv_results_`` (scores per fold,
mean, std, rank; ``iter``/``n_resources`` for the halving searches), and the candidates are
written from it when the search ends. With an :class:`MlflowScorer`, each fold is also
written live, through scikit-learn's callback API (see ``_scorer``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlflow_hpo._backend import StudyHandle, new_tracker
from mlflow_hpo._core import batch, compat, names
from mlflow_hpo._core.validate import positive_int
from mlflow_hpo.errors import ConfigurationError
from mlflow_hpo.sklearn._candidates import log_candidates
from mlflow_hpo.sklearn._live import LiveFolds
from mlflow_hpo.sklearn._scorer import MlflowScorer

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from mlflow_hpo._core.options import TrackingOptions


def track_search(
    search: Any, *, max_child_runs: int | None = None, **options: Unpack[TrackingOptions]
) -> Any:
    """Track every ``fit`` of a scikit-learn search CV; returns the same object.

    Each ``fit()`` opens one study run (``mlflow_hpo.backend=sklearn``) with one child per
    candidate (for the halving searches: per candidate and iteration), the refitted
    ``best_estimator_`` logged on the best candidate's run, and ``cv_results.csv``. The
    study handle (``study_run_id``, ``warning_count``, ``flush()``, ``close()``) is
    ``search.mlflow``.

    Args:
        search: ``GridSearchCV``, ``RandomizedSearchCV``, ``HalvingGridSearchCV``,
            ``HalvingRandomSearchCV`` or any other ``BaseSearchCV``.
        max_child_runs: Log at most this many candidates (the best ranked); the study run's
            ``mlflow_hpo.left_out_candidates`` tag says how many were left out.
        **options: The shared tracking options (:class:`mlflow_hpo.TrackingOptions`). Only
            the refitted best estimator exists to be logged.

    Raises:
        ConfigurationError: ``search`` is not a search CV, or an argument is invalid.

    Example:
        >>> from sklearn.model_selection import RandomizedSearchCV
        >>> from mlflow_hpo.sklearn import track_search
        >>> search = track_search(RandomizedSearchCV(model, dists, n_iter=20),
        ...                       experiment_name="digits")
        >>> search.fit(x, y)
    """
    if not isinstance(search, compat.sklearn_base_search_cv()):
        raise ConfigurationError(
            "search",
            "a scikit-learn search CV (a BaseSearchCV such as GridSearchCV)",
            type(search).__name__,
            "Wrap the search object, not the estimator inside it.",
        )
    cap = positive_int("max_child_runs", max_child_runs)
    tracker = new_tracker(names.BACKEND_SKLEARN, options)
    if isinstance(search.scoring, MlflowScorer):
        search.scoring.tracked = True
    original_fit = search.fit

    def fit(*args: Any, **kwargs: Any) -> Any:
        tracker.open(
            type(search).__name__,
            directions=["maximize"],
            objective_names=[_objective(search)],
            tags={names.TAG_SK_ESTIMATOR: type(search.estimator).__name__},
        )
        live, callbacks = None, compat.sklearn_callbacks(search)
        if isinstance(search.scoring, MlflowScorer) and tracker.active:
            with tracker.safety.guard("starting live fold logging"):
                live = LiveFolds(tracker, search)
                search.set_callbacks(*callbacks, live.callback)
        start_ms, status = batch.now_ms(), "FINISHED"
        extra: tuple[dict[str, Any], dict[str, str]] = ({}, {})
        try:
            with compat.sklearn_fold_outputs(search) as folds:
                return original_fit(*args, **kwargs)
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            if live is not None:
                search.set_callbacks(*callbacks)
                with tracker.safety.guard("stopping live fold logging"):
                    live.close()
                    if status != "FINISHED":
                        live.finish_scored()
            if status == "FINISHED":
                with tracker.safety.guard("logging the search's candidates"):
                    data = _fit_data(args, kwargs)
                    extra = log_candidates(tracker, search, folds, start_ms, cap, live, data)
            # Candidates seen live and not fully scored (an interrupted search) end KILLED.
            tracker.close(status, tags=extra[0], tables=extra[1])

    search.fit = compat.LocalOnly(fit)
    search.mlflow = SearchStudy(tracker)
    search.__getstate__ = compat.LocalOnly(lambda: _untracked_state(search))
    return search


class SearchStudy(StudyHandle):
    """The study handle of a tracked search, as ``search.mlflow``."""

    def __init__(self, tracker: Any) -> None:
        self._study_tracker = tracker

    def __reduce__(self) -> Any:  # never shipped to workers nor saved with the search
        return compat.LocalOnly.__reduce__(compat.LocalOnly(None))


_OURS = ("fit", "mlflow", "__getstate__")


def _untracked_state(search: Any) -> dict[str, Any]:
    """What pickling a tracked search keeps: everything but our hooks, so a fitted search
    saved with joblib or pickle loads back as the plain scikit-learn search it is."""
    state: dict[str, Any] = dict(compat.sklearn_base_search_cv().__getstate__(search))
    for key in _OURS:
        state.pop(key, None)
    return state


def _fit_data(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """``(X, y)`` as given to ``fit`` (what the refitted best estimator was fit on)."""
    x = args[0] if args else kwargs.get("X")
    y = args[1] if len(args) > 1 else kwargs.get("y")
    return x, y


def _objective(search: Any) -> str:
    refit = getattr(search, "refit", True)
    scoring = getattr(search, "scoring", None)
    if isinstance(refit, str):
        return refit
    if isinstance(scoring, MlflowScorer):
        return scoring.metric_names[0]
    if isinstance(scoring, list | tuple) and scoring:
        return str(scoring[0])
    if isinstance(scoring, dict) and scoring:
        return str(next(iter(scoring)))
    return "score"

"""``track_search``: every candidate of a scikit-learn search CV as a nested run.

scikit-learn already computes everything per candidate in ``cv_results_`` (scores per fold,
mean, std, rank; ``iter``/``n_resources`` for the halving searches). What it throws away is
per fold: the real fit and score times and the traceback of a failed fit. The search's own
``_format_results`` receives them, so the tracked search keeps that call's input, which
works whatever ``n_jobs`` is because the folds' results come back to this process anyway.
"""

from __future__ import annotations

from typing import Any

from sklearn.model_selection._search import BaseSearchCV

from mlflow_hpo import _batch, names
from mlflow_hpo._tracker import StudyTracker
from mlflow_hpo.errors import ConfigurationError
from mlflow_hpo.sklearn._candidates import log_candidates
from mlflow_hpo.sklearn._live import LiveFolds
from mlflow_hpo.sklearn._scorer import MlflowScorer


def _dropped() -> None:
    return None


class _Hook:
    """A callable stored on the search object that pickles to ``None``.

    With ``n_jobs>1`` scikit-learn may ship the search object to worker processes; our hooks
    hold the tracker (locks, a store client) and are only ever called in this process.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self.__wrapped__ = call  # inspect.signature sees the wrapped call's parameters

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _dropped, ()


def _check_max(max_child_runs: Any) -> int | None:
    if max_child_runs is None:
        return None
    if (
        isinstance(max_child_runs, int)
        and not isinstance(max_child_runs, bool)
        and (max_child_runs >= 1)
    ):
        return max_child_runs
    raise ConfigurationError("max_child_runs", "None (no cap) or a positive int", max_child_runs)


def track_search(
    search: Any,
    *,
    experiment_name: str | None = None,
    tracking_uri: str | None = None,
    log_models: str | int = "best",
    synchronous: bool = True,
    strict: bool | None = None,
    verbose: int = 1,
    reports: bool | None = None,
    max_child_runs: int | None = None,
) -> Any:
    """Track every ``fit`` of a scikit-learn search CV; returns the same object.

    Each ``fit()`` opens one parent run (``mlflow_hpo.backend=sklearn``) with one child per
    candidate (for the halving searches: per candidate and iteration), the refitted
    ``best_estimator_`` logged on the best candidate's run, and ``cv_results.csv``.

    Args:
        search: ``GridSearchCV``, ``RandomizedSearchCV``, ``HalvingGridSearchCV``,
            ``HalvingRandomSearchCV`` or any other ``BaseSearchCV``.
        experiment_name / tracking_uri / log_models / synchronous / strict / verbose /
            reports: As for the other backends. Only the refitted best estimator exists to
            be logged.
        max_child_runs: Log at most this many candidates (the best ranked); the parent's
            ``mlflow_hpo.left_out_candidates`` tag says how many were left out.

    Raises:
        ConfigurationError: ``search`` is not a search CV, or an argument is invalid.

    Example:
        >>> from sklearn.model_selection import RandomizedSearchCV
        >>> from mlflow_hpo.sklearn import track_search
        >>> search = track_search(RandomizedSearchCV(model, dists, n_iter=20),
        ...                       experiment_name="digits")
        >>> search.fit(x, y)
    """
    if not isinstance(search, BaseSearchCV):
        raise ConfigurationError(
            "search",
            "a scikit-learn search CV (a BaseSearchCV such as GridSearchCV)",
            type(search).__name__,
            "Wrap the search object, not the estimator inside it.",
        )
    cap = _check_max(max_child_runs)
    tracker = StudyTracker(
        "sklearn",
        experiment_name=experiment_name,
        tracking_uri=tracking_uri,
        log_models=log_models,
        synchronous=synchronous,
        strict=strict,
        verbose=verbose,
        reports=reports,
    )
    original_fit = search.fit

    def fit(*args: Any, **kwargs: Any) -> Any:
        captured: list[Any] = []
        original_format = search._format_results

        def keep_splits(candidate_params: Any, n_splits: int, out: Any, *rest: Any) -> Any:
            captured[:] = [list(out)]
            return original_format(candidate_params, n_splits, out, *rest)

        with tracker.safety.guard("opening the study's parent run"):
            tracker.open(
                type(search).__name__,
                directions=["maximize"],
                objective_names=[_objective(search)],
                tags={names.TAG_SK_ESTIMATOR: type(search.estimator).__name__},
            )
        live = None
        if isinstance(search.scoring, MlflowScorer) and tracker.active:
            with tracker.safety.guard("starting live fold logging"):
                live = LiveFolds(tracker, search.scoring)
                bound_run_search = type(search)._run_search.__get__(search)
                search._run_search = _Hook(live.wrap_run_search(bound_run_search))
        search._format_results = _Hook(keep_splits)
        start_ms, status = _batch.now_ms(), "FINISHED"
        try:
            return original_fit(*args, **kwargs)
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            del search._format_results
            if live is not None:
                search.__dict__.pop("_run_search", None)
                with tracker.safety.guard("stopping live fold logging"):
                    live.close()
                    if status != "FINISHED":
                        live.finish_scored()
            if status == "FINISHED":
                with tracker.safety.guard("logging the search's candidates"):
                    splits = captured[0] if captured else []
                    log_candidates(tracker, search, splits, start_ms, cap, live)
            # Candidates seen live and not fully scored (an interrupted search) end KILLED.
            tracker.close(status)

    search.fit = _Hook(fit)
    search.__getstate__ = _Hook(lambda: _untracked_state(search))
    return search


def _untracked_state(search: Any) -> dict[str, Any]:
    """What pickling a tracked search keeps: everything but our hooks, so a fitted search
    saved with joblib or pickle loads back as the plain scikit-learn search it is."""
    state: dict[str, Any] = dict(BaseSearchCV.__getstate__(search))
    for key in [k for k, v in state.items() if isinstance(v, _Hook)]:
        del state[key]
    return state


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

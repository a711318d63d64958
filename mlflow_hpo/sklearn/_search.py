"""``track_search``: every candidate of a scikit-learn search CV as a nested run.

scikit-learn already computes everything per candidate in ``cv_results_`` (scores per fold,
mean, std, rank; ``iter``/``n_resources`` for the halving searches). What it throws away is
per fold: the real fit and score times and the traceback of a failed fit. The search's own
``_format_results`` receives them, so the tracked search keeps that call's input, which
works whatever ``n_jobs`` is because the folds' results come back to this process anyway.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.model_selection._search import BaseSearchCV

from mlflow_hpo import _batch, names
from mlflow_hpo._summary import StudySummary
from mlflow_hpo._tracker import StudyTracker
from mlflow_hpo._trial import TrialResult
from mlflow_hpo.errors import ConfigurationError

_SPLIT_KEYS = ("fit_time", "score_time")


def _dropped() -> None:
    return None


class _Hook:
    """A callable stored on the search object that pickles to ``None``.

    With ``n_jobs>1`` scikit-learn may ship the search object to worker processes; our hooks
    hold the tracker (locks, a store client) and are only ever called in this process.
    """

    def __init__(self, call: Any) -> None:
        self._call = call

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
    max_child_runs: int | None = None,
) -> Any:
    """Track every ``fit`` of a scikit-learn search CV; returns the same object.

    Each ``fit()`` opens one parent run (``mlflow_hpo.backend=sklearn``) with one child per
    candidate (for the halving searches: per candidate and iteration), the refitted
    ``best_estimator_`` logged on the best candidate's run, and ``cv_results.csv``.

    Args:
        search: ``GridSearchCV``, ``RandomizedSearchCV``, ``HalvingGridSearchCV``,
            ``HalvingRandomSearchCV`` or any other ``BaseSearchCV``.
        experiment_name / tracking_uri / log_models / synchronous / strict: As for the
            other backends. Only the refitted best estimator exists to be logged.
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
                tags={"sklearn.estimator": type(search.estimator).__name__},
            )
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
            if status == "FINISHED":
                with tracker.safety.guard("logging the search's candidates"):
                    _log_candidates(tracker, search, captured[0] if captured else [], start_ms, cap)
            tracker.close(status)

    search.fit = _Hook(fit)
    return search


def _objective(search: Any) -> str:
    refit = getattr(search, "refit", True)
    scoring = getattr(search, "scoring", None)
    if isinstance(refit, str):
        return refit
    if isinstance(scoring, list | tuple) and scoring:
        return str(scoring[0])
    if isinstance(scoring, dict) and scoring:
        return str(next(iter(scoring)))
    return "score"


def _log_candidates(
    tracker: StudyTracker, search: Any, splits: list[dict[str, Any]], start_ms: int, cap: int | None
) -> None:
    results = search.cv_results_
    n_candidates = len(results["params"])
    n_splits = len(splits) // n_candidates if splits else int(search.n_splits_)
    metrics = [k[len("mean_test_") :] for k in results if k.startswith("mean_test_")]
    objective = tracker.objective_names[0]
    rank = np.asarray(results.get(f"rank_test_{objective}", np.ones(n_candidates)))
    best = int(getattr(search, "best_index_", int(np.argmin(rank))))
    # Best first: it is the only candidate with a model (the refitted best_estimator_), and
    # a first trial is always an improvement for the "best" and top-k policies, ties or not.
    order = sorted(range(n_candidates), key=lambda i: (i != best, rank[i], i))
    kept = order if cap is None else order[:cap]
    for index in kept:
        folds = splits[index * n_splits : (index + 1) * n_splits] if splits else []
        errors = [f["fit_error"] for f in folds if f.get("fit_error")]
        histories: dict[str, list[tuple[int, float]]] = {}
        for metric in metrics:
            for part in ("test", "train"):
                key = f"split0_{part}_{metric}"
                if key in results:
                    histories[f"{part}_{metric}"] = [
                        (s, float(results[f"split{s}_{part}_{metric}"][index]))
                        for s in range(n_splits)
                    ]
        for key in _SPLIT_KEYS:
            if folds:
                histories[key] = [(s, float(f[key])) for s, f in enumerate(folds)]
        values = {}
        if not errors:
            values[objective] = float(results[f"mean_test_{objective}"][index])
        extra = {
            k: v[index]
            for k, v in results.items()
            if k.startswith(("mean_", "std_", "rank_")) and not isinstance(v[index], str)
        }
        busy_ms = int(1000 * sum(f.get("fit_time", 0) + f.get("score_time", 0) for f in folds))
        params = dict(results["params"][index])
        extra_params = {k: results[k][index] for k in ("iter", "n_resources") if k in results}
        result = TrialResult(
            state=names.STATE_FAIL if errors else names.STATE_COMPLETE,
            params=params,
            distributions={k: repr(v) for k, v in _space(search).items()},
            values=values,
            histories=histories,
            extra_params={k: _plain(v) for k, v in extra_params.items()},
            tags={f"cv.{k}": _plain(v) for k, v in extra.items()},
            start_ms=start_ms,
            end_ms=start_ms + busy_ms,  # fold fit + score time: the candidate's real cost
            error="\n\n".join(errors) or None,
            error_class=_batch.error_class(errors[0]) if errors else None,
        )
        handle = tracker.trial(str(index), index, start_ms)
        if index == best and getattr(search, "best_estimator_", None) is not None:
            handle.model = search.best_estimator_
        tracker.finish(handle, result)
    _summarize(tracker, search, best, objective, n_candidates - len(kept))


def _summarize(
    tracker: StudyTracker, search: Any, best: int, objective: str, left_out: int
) -> None:
    import pandas as pd

    results = search.cv_results_
    failed = sum(
        1 for i in range(len(results["params"])) if np.isnan(results[f"mean_test_{objective}"][i])
    )
    summary = StudySummary(
        counts={names.STATE_COMPLETE: len(results["params"]) - failed, names.STATE_FAIL: failed},
        best_key=str(best),
        best_number=best,
        best_values={
            objective: float(
                getattr(search, "best_score_", results[f"mean_test_{objective}"][best])
            )
        },
        best_params=dict(getattr(search, "best_params_", results["params"][best])),
        table_name=names.ARTIFACT_CV_RESULTS,
        tags={names.TAG_LEFT_OUT: left_out} if left_out else {},
    )
    frame = pd.DataFrame(results)

    def table(run_ids: dict[str, str]) -> str:
        frame.insert(0, "run_id", [run_ids.get(str(i), "") for i in range(len(frame))])
        return str(frame.to_csv(index=False))

    summary.trials_table = table
    tracker.summarize(summary)


def _space(search: Any) -> dict[str, Any]:
    for attribute in ("param_grid", "param_distributions"):
        space = getattr(search, attribute, None)
        if isinstance(space, dict):
            return space
        if isinstance(space, list) and space and isinstance(space[0], dict):
            return {f"grid_{i}": grid for i, grid in enumerate(space)}
    return {}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value

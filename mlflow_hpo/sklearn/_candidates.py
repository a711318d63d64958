"""Turning a finished search's ``cv_results_`` into one child run per candidate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mlflow_hpo._core import batch, names
from mlflow_hpo._core.tracker import StudyTracker
from mlflow_hpo._core.trial import TrialResult
from mlflow_hpo.layers import output_exceptions_of

if TYPE_CHECKING:
    from mlflow_hpo.sklearn._live import LiveFolds

_SPLIT_KEYS = ("fit_time", "score_time")


def log_candidates(
    tracker: StudyTracker,
    search: Any,
    splits: list[dict[str, Any]],
    start_ms: int,
    cap: int | None,
    live: LiveFolds | None = None,
    data: tuple[Any, Any] = (None, None),
) -> tuple[dict[str, Any], dict[str, str]]:
    """One finished child per ``cv_results_`` row (best first); returns the study run's
    extra ``(tags, tables)``: how many candidates were left out, and ``cv_results.csv``.

    Candidates whose folds ``MlflowScorer`` already logged live keep their run, their real
    start and end times, and get only the points not logged yet.
    """
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
    if live is not None and cap is not None:  # a run logged live is finished, cap or not
        kept += [i for i in order[cap:] if str(i) in live.spans]
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
        first_ms, last_ms = start_ms, start_ms + busy_ms  # fold fit + score: the real cost
        if live is not None:
            first_ms, last_ms = live.spans.get(str(index), (first_ms, last_ms))
            logged = live.logged.get(str(index), set())
            histories = {
                name: [(s, v) for s, v in points if (name, s) not in logged]
                for name, points in histories.items()
            }
        params = dict(results["params"][index])
        extra_params = {k: results[k][index] for k in ("iter", "n_resources") if k in results}
        result = TrialResult(
            state=names.STATE_FAIL if errors else names.STATE_COMPLETE,
            params=params,
            distributions={k: repr(v) for k, v in _space(search).items()},
            values=values,
            histories=histories,
            extra_params={k: plain(v) for k, v in extra_params.items()},
            tags={f"cv.{k}": plain(v) for k, v in extra.items()},
            start_ms=first_ms,
            end_ms=last_ms,
            error="\n\n".join(errors) or None,
            error_class=batch.error_class(errors[0]) if errors else None,
        )
        handle = tracker.trial(str(index), index, first_ms)
        x, y = data
        if x is not None and hasattr(x, "shape") and hasattr(x, "__getitem__"):
            handle.datasets = [(x, y, "training")]  # every candidate was fit on folds of it
        if index == best and getattr(search, "best_estimator_", None) is not None:
            handle.model = search.best_estimator_
            if handle.datasets:
                handle.input_example = x[:5]
            if not handle.output_exceptions:
                handle.add_output_exceptions(output_exceptions_of(search.best_estimator_))
        tracker.finish(handle, result)
    import pandas as pd

    left_out = n_candidates - len(kept)
    frame = pd.DataFrame(results)
    frame.insert(0, "trial_key", [str(i) for i in range(len(frame))])
    frame.insert(0, "run_id", "")  # filled in when written, once every run exists
    tags = {names.TAG_LEFT_OUT: left_out} if left_out else {}
    return tags, {names.ARTIFACT_CV_RESULTS: str(frame.to_csv(index=False))}


def _space(search: Any) -> dict[str, Any]:
    for attribute in ("param_grid", "param_distributions"):
        space = getattr(search, attribute, None)
        if isinstance(space, dict):
            return space
        if isinstance(space, list) and space and isinstance(space[0], dict):
            return {f"grid_{i}": grid for i, grid in enumerate(space)}
    return {}


def plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (params, tags)."""
    return value.item() if isinstance(value, np.generic) else value

"""Wall-clock cost of tracking a scikit-learn search, side by side with the plain search.

Run: ``python benchmarks/sklearn_overhead.py`` (``--candidates 12 --cv 5 --rounds 3``).

The same ``GridSearchCV`` (logistic regression on scikit-learn's digits, ``n_jobs=2``) runs
three ways, interleaved for ``--rounds`` rounds, each tracked run on a fresh SQLite store:

* ``plain``: the search as scikit-learn ships it;
* ``tracked``: ``track_search`` (one child per candidate, written when the search ends, plus
  the refitted best model);
* ``tracked+scorer``: ``track_search`` with ``MlflowScorer``, which also writes every fold
  live while the search runs.

It prints the median wall-clock time of each, the ratio to ``plain`` and the time added per
candidate. Creating a fresh store's schema (about a second, once per store) is not timed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")

import numpy as np
from mlflow import MlflowClient
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV

from mlflow_hpo.sklearn import MlflowScorer, track_search

VARIANTS = ("plain", "tracked", "tracked+scorer")


def run(variant: str, candidates: int, cv: int) -> float:
    x, y = load_digits(return_X_y=True)
    grid = {"C": list(np.logspace(-3, 2, candidates))}
    scoring = MlflowScorer("accuracy") if variant == "tracked+scorer" else "accuracy"
    search = GridSearchCV(LogisticRegression(max_iter=300), grid, cv=cv, n_jobs=2, scoring=scoring)
    with tempfile.TemporaryDirectory() as tmp:
        if variant != "plain":
            uri = f"sqlite:///{os.path.join(tmp, 'mlflow.db')}"
            MlflowClient(uri).search_experiments()  # creating the store's schema: not timed
            search = track_search(search, experiment_name="bench", tracking_uri=uri, reports=False)
        start = time.perf_counter()
        search.fit(x / 16.0, y)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=12)
    parser.add_argument("--cv", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    run("plain", 2, 2)  # warm-up: loky's workers and the imports are not the search's cost
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            times[variant].append(run(variant, args.candidates, args.cv))
    median = {v: sorted(t)[len(t) // 2] for v, t in times.items()}
    print(
        f"GridSearchCV, {args.candidates} candidates x {args.cv} folds, n_jobs=2, "
        f"median of {args.rounds} rounds"
    )
    for variant in VARIANTS:
        ratio = median[variant] / median["plain"]
        added = (median[variant] - median["plain"]) / args.candidates * 1000
        print(
            f"  {variant:16s} {median[variant]:7.2f} s   {ratio:5.2f}x plain"
            f"   {added:+6.0f} ms per candidate"
        )


if __name__ == "__main__":
    main()

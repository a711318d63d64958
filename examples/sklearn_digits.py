"""Tune a small Keras CNN on scikit-learn's digits with RandomizedSearchCV (SciKeras).

    python examples/sklearn_digits.py           # sqlite:///mlflow.db in this folder
    mlflow ui --backend-store-uri sqlite:///mlflow.db

Each candidate is a nested run under one search run. ``MlflowScorer`` logs every fold's
score and fit time while the search runs, also from the worker processes of ``n_jobs=2``;
``LayerGuard``'s output exception list and, for the best candidate, the refitted Keras
model (not the SciKeras wrapper) are logged too.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from digits_common import DEFAULT_TRACKING_URI, build_cnn, default_experiment, digits
from scikeras.wrappers import KerasClassifier
from scipy.stats import loguniform
from sklearn.model_selection import RandomizedSearchCV

from mlflow_hpo.sklearn import MlflowScorer, track_search

SPACE = {
    "model__n_blocks": [1, 2, 3],
    "model__filters": [8, 16, 32],
    "model__kernel": [2, 3, 4],
    "model__pool": [True, False],
    "model__learning_rate": loguniform(1e-3, 3e-2),
}


def main(argv: list[str] | None = None) -> RandomizedSearchCV:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-iter", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--cv", type=int, default=3)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--experiment-name", default=default_experiment("digits-sklearn"))
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    )
    args = parser.parse_args(argv)

    x_train, x_val, y_train, y_val = digits()
    classifier = KerasClassifier(
        model=build_cnn,  # compiles itself; SciKeras keeps that compilation
        model__n_blocks=2,
        model__filters=16,
        model__kernel=3,
        model__pool=True,
        model__learning_rate=1e-2,
        epochs=args.epochs,
        batch_size=64,
        verbose=0,
    )
    search = track_search(
        RandomizedSearchCV(
            classifier,
            SPACE,
            n_iter=args.n_iter,
            cv=args.cv,
            n_jobs=args.n_jobs,
            random_state=0,
            scoring=MlflowScorer("accuracy"),
        ),
        experiment_name=args.experiment_name,
        tracking_uri=args.tracking_uri,
    )
    search.fit(x_train, y_train)
    print(f"best cv accuracy {search.best_score_:.4f} with {search.best_params_}")
    print(f"held-out accuracy of the refitted best: {search.score(x_val, y_val):.4f}")
    print(f"open the MLflow UI:  mlflow ui --backend-store-uri {args.tracking_uri}")
    return search


if __name__ == "__main__":
    main()

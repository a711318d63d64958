"""Tune a small Keras CNN on scikit-learn's digits with Hyperopt's TPE, tracked in MLflow.

    python examples/hyperopt_digits.py          # sqlite:///mlflow.db in this folder
    mlflow ui --backend-store-uri sqlite:///mlflow.db

``MlflowTrials`` is a ``hyperopt.Trials``: each evaluation is a nested run under one study
run, with its real param values (a choice's option, not its index), its per-epoch metrics
(the captured ``fit``), the output exception list from ``LayerGuard`` and, for improving
trials, the model. The space is the shared builder's (``build_space_cnn.hyperopt_space()``).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
from digits_common import DEFAULT_TRACKING_URI, build_space_cnn, default_experiment, digits
from hyperopt import STATUS_OK, fmin, space_eval, tpe

from mlflow_hpo.hyperopt import MlflowTrials


def make_objective(epochs: int):
    x_train, x_val, y_train, y_val = digits()

    def objective(params: dict) -> dict:
        model = build_space_cnn(params)  # LayerGuard inside records the skipped layers
        history = model.fit(
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            epochs=epochs,
            batch_size=64,
            verbose=0,
        )
        best_val_accuracy = max(history.history["val_accuracy"])
        # Hyperopt minimises: the loss is the validation error, logged as val_error.
        return {
            "loss": 1.0 - best_val_accuracy,
            "status": STATUS_OK,
            "best_val_accuracy": best_val_accuracy,  # extra numbers become metrics too
        }

    return objective


def main(argv: list[str] | None = None) -> MlflowTrials:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-evals", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--experiment-name", default=default_experiment("digits-hyperopt"))
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    )
    args = parser.parse_args(argv)

    space = build_space_cnn.hyperopt_space()
    trials = MlflowTrials(
        experiment_name=args.experiment_name,
        metric_name="val_error",
        tracking_uri=args.tracking_uri,
        log_models="best",
        study_name="digits-cnn",
    )
    argmin = fmin(
        make_objective(args.epochs),
        space,
        algo=tpe.suggest,
        max_evals=args.max_evals,
        trials=trials,
        rstate=np.random.default_rng(0),
        show_progressbar=False,  # mlflow-hpo's progress line shows trials, best and ETA
    )
    best = trials.best_trial["result"]
    print(f"best val_accuracy {best['best_val_accuracy']:.4f} with {space_eval(space, argmin)}")
    print(f"study run: {trials.study_run_id}")
    print(f"open the MLflow UI:  mlflow ui --backend-store-uri {args.tracking_uri}")
    return trials


if __name__ == "__main__":
    main()

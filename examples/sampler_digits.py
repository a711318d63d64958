"""Tune a small Keras CNN on scikit-learn's digits with a hand-written ParameterSampler loop.

    python examples/sampler_digits.py           # sqlite:///mlflow.db in this folder
    mlflow ui --backend-store-uri sqlite:///mlflow.db

The loop is the common recipe's, minus its JSON files: each sample is a nested run with its
params, per-epoch metrics, output exception list and final values; the best model is kept.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from digits_common import DEFAULT_TRACKING_URI, build_cnn, default_experiment, digits
from scipy.stats import loguniform
from sklearn.model_selection import ParameterSampler

from mlflow_hpo.sklearn import tracked_sampler

SPACE = {
    "n_blocks": [1, 2, 3],
    "filters": [8, 16, 32],
    "kernel": [2, 3, 4],
    "pool": [True, False],
    "learning_rate": loguniform(1e-3, 3e-2),
}


def get_model(params: dict):
    """The recipe's builder; ``LayerGuard`` inside records the skipped layers."""
    return build_cnn(**params)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-iter", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--experiment-name", default=default_experiment("digits-sampler"))
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    )
    args = parser.parse_args(argv)

    x_train, x_val, y_train, y_val = digits()
    sampler = ParameterSampler(SPACE, n_iter=args.n_iter, random_state=0)
    best = (-1.0, None)
    loop = tracked_sampler(
        sampler,
        objective="val_accuracy",
        direction="maximize",
        experiment_name=args.experiment_name,
        tracking_uri=args.tracking_uri,
    )
    with loop as study:
        for params, trial in study:
            model = trial.build(get_model)
            model.fit(
                x_train,
                y_train,
                validation_data=(x_val, y_val),
                epochs=args.epochs,
                batch_size=64,
                verbose=0,
            )
            val_loss, val_accuracy = model.evaluate(x_val, y_val, verbose=0)
            trial.log(val_accuracy=val_accuracy, val_loss=val_loss)
            trial.log_model(model)
            if val_accuracy > best[0]:
                best = (val_accuracy, params)
    print(f"best val_accuracy {best[0]:.4f} with {best[1]}")
    print(f"open the MLflow UI:  mlflow ui --backend-store-uri {args.tracking_uri}")


if __name__ == "__main__":
    main()

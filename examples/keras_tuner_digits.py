"""Hyperband over a small Keras CNN on scikit-learn's digits, tracked in MLflow.

    python examples/keras_tuner_digits.py       # sqlite:///mlflow.db in this folder
    mlflow ui --backend-store-uri sqlite:///mlflow.db

The only change from plain Keras Tuner is the import: ``mlflow_hpo.keras_tuner.Hyperband``.
Every trial is a nested run with live epoch curves, its Hyperband bracket and round, the run
it continues, the ``LayerGuard`` output exception list, and (for improving trials) the
best-epoch weights as a reloadable MLflow model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras_tuner
from digits_common import DEFAULT_TRACKING_URI, build_cnn, default_experiment, digits

from mlflow_hpo.keras_tuner import Hyperband


def build(hp: keras_tuner.HyperParameters):
    return build_cnn(
        n_blocks=hp.Int("n_blocks", 1, 3),
        filters=hp.Choice("filters", [8, 16, 32]),
        kernel=hp.Int("kernel", 2, 4),
        pool=hp.Boolean("pool"),
        learning_rate=hp.Float("learning_rate", 1e-3, 3e-2, sampling="log"),
    )


def main(argv: list[str] | None = None) -> Hyperband:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=9)
    parser.add_argument("--experiment-name", default=default_experiment("digits-keras-tuner"))
    parser.add_argument(
        "--directory",
        default=None,
        help="Keras Tuner project folder (default: a fresh temporary one)",
    )
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    )
    args = parser.parse_args(argv)

    x_train, x_val, y_train, y_val = digits()
    tuner = Hyperband(
        build,
        objective="val_accuracy",
        max_epochs=args.max_epochs,
        factor=3,
        seed=0,
        directory=args.directory or tempfile.mkdtemp(prefix="kt-digits-"),
        project_name="digits-cnn",
        experiment_name=args.experiment_name,
        tracking_uri=args.tracking_uri,
        log_models="best",
    )
    tuner.search(x_train, y_train, validation_data=(x_val, y_val), batch_size=64, verbose=0)
    best = tuner.oracle.get_best_trials(1)[0]
    print(f"best val_accuracy {best.score:.4f} with {best.hyperparameters.values}")
    print(f"study run: {tuner.mlflow_parent_run_id}")
    print(f"open the MLflow UI:  mlflow ui --backend-store-uri {args.tracking_uri}")
    return tuner


if __name__ == "__main__":
    main()

"""Tune a small Keras CNN on scikit-learn's digits with Optuna, tracked in MLflow.

    python examples/optuna_digits.py            # sqlite:///mlflow.db in this folder
    mlflow ui --backend-store-uri sqlite:///mlflow.db

Each trial is a nested run under one study run: params, per-epoch metrics, the pruning
reports, the output exception list from ``LayerGuard`` and, for improving trials, the model.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import optuna
from digits_common import DEFAULT_TRACKING_URI, build_cnn, default_experiment, digits
from optuna_integration.keras import KerasPruningCallback

from mlflow_hpo.optuna import MlflowStudyCallback


def make_objective(epochs: int):
    x_train, x_val, y_train, y_val = digits()

    def objective(trial: optuna.Trial) -> float:
        model = build_cnn(
            n_blocks=trial.suggest_int("n_blocks", 1, 3),
            filters=trial.suggest_categorical("filters", [8, 16, 32]),
            kernel=trial.suggest_int("kernel", 2, 4),
            pool=trial.suggest_categorical("pool", [True, False]),
            learning_rate=trial.suggest_float("learning_rate", 1e-3, 3e-2, log=True),
        )
        history = model.fit(
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            epochs=epochs,
            batch_size=64,
            verbose=0,
            callbacks=[KerasPruningCallback(trial, "val_accuracy")],
        )
        return max(history.history["val_accuracy"])

    return objective


def main(argv: list[str] | None = None) -> optuna.Study:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--experiment-name", default=default_experiment("digits-optuna"))
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    )
    args = parser.parse_args(argv)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="digits-cnn",
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=0),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
    )
    with MlflowStudyCallback(
        experiment_name=args.experiment_name,
        metric_name="val_accuracy",
        tracking_uri=args.tracking_uri,
        log_models="best",
        expected_trials=args.n_trials,  # for the progress line's ETA
    ) as tracker:
        study.optimize(
            tracker.track(make_objective(args.epochs)), n_trials=args.n_trials, callbacks=[tracker]
        )
    print(f"best val_accuracy {study.best_value:.4f} with {study.best_params}")
    print(f"study run: {tracker.parent_run_id}")
    print(f"open the MLflow UI:  mlflow ui --backend-store-uri {args.tracking_uri}")
    return study


if __name__ == "__main__":
    main()

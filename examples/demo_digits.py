"""The demo: one CNN builder tuned on digits by Optuna, Keras Tuner, a scikit-learn
sampler and Hyperopt, then the best of the first three promoted to the Model Registry.

    python examples/demo_digits.py              # sqlite:///mlflow.db in this folder
    mlflow ui --backend-store-uri sqlite:///mlflow.db

The builder is written once with ``mlflow_hpo.space``; each backend gets its own study run
with nested trials. Each study's best trial is promoted with ``only_if_better``, so the
``champion`` alias ends on the best model of the three, loadable as
``models:/digits-cnn@champion``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hyperopt
import numpy as np
import optuna
from digits_common import DEFAULT_TRACKING_URI, build_space_cnn, default_experiment, digits

from mlflow_hpo.hyperopt import MlflowTrials
from mlflow_hpo.keras_tuner import RandomSearch
from mlflow_hpo.optuna import MlflowStudyCallback
from mlflow_hpo.registry import load_best, promote_best
from mlflow_hpo.sklearn import tracked_sampler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=4, help="trials per backend")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--experiment-name", default=default_experiment("digits-demo"))
    parser.add_argument("--model-name", default="digits-cnn")
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    )
    args = parser.parse_args(argv)
    x, xv, y, yv = digits()
    fit = {"epochs": args.epochs, "batch_size": 64, "verbose": 0, "validation_data": (xv, yv)}
    common = {"experiment_name": args.experiment_name, "tracking_uri": args.tracking_uri}
    studies = {}

    # Optuna: the builder takes the trial.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="optuna", direction="maximize", sampler=optuna.samplers.TPESampler(seed=0)
    )
    with MlflowStudyCallback(
        metric_name="val_accuracy", expected_trials=args.n_trials, **common
    ) as callback:

        def objective(trial: optuna.Trial) -> float:
            history = build_space_cnn(trial).fit(x, y, **fit)
            return history.history["val_accuracy"][-1]  # the logged model is the last epoch's

        study.optimize(callback.track(objective), n_trials=args.n_trials, callbacks=[callback])
    studies["optuna"] = callback.study_run_id

    # Keras Tuner: the builder is the hypermodel.
    tuner = RandomSearch(
        build_space_cnn,
        objective="val_accuracy",
        max_trials=args.n_trials,
        seed=0,
        directory=tempfile.mkdtemp(prefix="kt-demo-"),
        project_name="keras_tuner",
        **common,
    )
    tuner.search(x, y, **fit)
    studies["keras_tuner"] = tuner.study_run_id

    # scikit-learn: a ParameterSampler over the same space, the builder takes each sample.
    samples = tracked_sampler(
        build_space_cnn.sampler(args.n_trials, random_state=0),
        objective="val_accuracy",
        direction="maximize",
        study_name="sklearn",
        **common,
    )
    with samples as study:
        for _params, trial in study:
            history = trial.build(build_space_cnn).fit(x, y, **fit)
            trial.log(val_accuracy=history.history["val_accuracy"][-1])
    studies["sklearn"] = samples.study_run_id

    # Hyperopt: the same space as hp.* expressions; the objective gets a dict of values.
    # Hyperopt minimises a loss: its study is ranked by another objective than the others,
    # so it is shown, not compared with them for the champion.
    trials = MlflowTrials(study_name="hyperopt", metric_name="val_error", **common)

    def loss(params: dict) -> float:
        history = build_space_cnn(params).fit(x, y, **fit)
        return 1.0 - history.history["val_accuracy"][-1]

    hyperopt.fmin(
        loss,
        build_space_cnn.hyperopt_space(),
        algo=hyperopt.tpe.suggest,
        max_evals=args.n_trials,
        trials=trials,
        rstate=np.random.default_rng(0),
        show_progressbar=False,
    )
    best_error = min(trials.losses())
    print(f"{'hyperopt':12s} best val_error {best_error:.4f} (val_accuracy {1 - best_error:.4f})")

    for backend, run_id in studies.items():
        done = promote_best(
            run_id, args.model_name, only_if_better=True, tracking_uri=args.tracking_uri
        )
        best = f"{backend:12s} best val_accuracy {done.value:.4f}"
        if done.moved:
            print(f"{best}  -> version {done.version}, alias 'champion' moved")
        else:
            print(
                f"{best}  not better than the champion (version {done.version}, "
                f"val_accuracy {done.champion_value:.4f}): alias kept"
            )
    model = load_best(args.model_name, tracking_uri=args.tracking_uri)
    _, accuracy = model.evaluate(xv, yv, verbose=0)
    print(f"models:/{args.model_name}@champion reloaded: val_accuracy {accuracy:.4f}")
    print(f"open the MLflow UI:  mlflow ui --backend-store-uri {args.tracking_uri}")


if __name__ == "__main__":
    main()

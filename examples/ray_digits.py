"""Ray Tune (Optuna search, ASHA early stopping) over a small Keras CNN on scikit-learn's
digits, tracked in MLflow, then the best trial promoted to the Model Registry.

    python examples/ray_digits.py              # sqlite:///mlflow.db in this folder
    mlflow ui --backend-store-uri sqlite:///mlflow.db

The trainables run in Ray worker processes and only talk to Ray: they report
``val_accuracy`` each epoch with a checkpoint holding the Keras model. ``MlflowTuneCallback``
writes everything from the driver: one study run, a nested run per trial with its epoch
curves, ASHA's early stops as KILLED runs, and the model of each improving trial, loaded
from its checkpoint. On a cluster, pass ``--address auto`` and a ``--storage-path`` every
node can reach; the tracking URI only has to be reachable from this machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# Ray reads these when it starts: no usage report, the plain reporter.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import digits_common
import keras
import numpy as np
import optuna
import ray
from digits_common import DEFAULT_TRACKING_URI, build_space_cnn, default_experiment, digits
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from mlflow_hpo.ray import MlflowTuneCallback
from mlflow_hpo.registry import load_best, promote_best


def train(config: dict[str, Any], max_epochs: int) -> None:
    """One trial, in a Ray worker: an epoch per report, the model in each checkpoint."""
    x_train, x_val, y_train, y_val = digits()
    first = 1
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a restored experiment goes on from the last epoch
        with checkpoint.as_directory() as folder:
            model = keras.models.load_model(os.path.join(folder, "model.keras"))
            with open(os.path.join(folder, "epoch.json")) as f:
                first = json.load(f)["epoch"] + 1
    else:
        model = build_space_cnn(config)  # the builder takes the dict of sampled values
    for epoch in range(first, max_epochs + 1):
        history = model.fit(
            x_train,
            y_train,
            validation_data=(x_val, y_val),
            initial_epoch=epoch - 1,
            epochs=epoch,
            batch_size=64,
            verbose=0,
        )
        logs = {name: float(values[-1]) for name, values in history.history.items()}
        with tempfile.TemporaryDirectory() as folder:
            model.save(os.path.join(folder, "model.keras"))
            np.save(os.path.join(folder, "input_example.npy"), x_val[:5])  # its signature
            with open(os.path.join(folder, "epoch.json"), "w") as f:
                json.dump({"epoch": epoch}, f)
            tune.report(logs, checkpoint=tune.Checkpoint.from_directory(folder))


def main(argv: list[str] | None = None) -> tune.ResultGrid:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--max-epochs", type=int, default=6)
    parser.add_argument("--experiment-name", default=default_experiment("digits-ray"))
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    )
    parser.add_argument("--model-name", default="digits-cnn-ray")
    parser.add_argument("--address", default=None, help="a Ray cluster (default: start one)")
    parser.add_argument(
        "--storage-path",
        default=None,
        help="where Ray keeps the experiment (default: a fresh temporary folder)",
    )
    args = parser.parse_args(argv)

    # The workers get the example's shared module from here (on a cluster too).
    ray.init(
        address=args.address,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"py_modules": [digits_common]},
    )
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = build_space_cnn.tune_space()
    storage = os.path.abspath(args.storage_path or tempfile.mkdtemp(prefix="ray-digits-"))
    callback = MlflowTuneCallback(
        "val_accuracy",
        "max",
        max_t=args.max_epochs,  # ASHA's budget: a trial stopped there is complete
        param_space=space,
        experiment_name=args.experiment_name,
        tracking_uri=args.tracking_uri,
        log_models="best",
    )
    tuner = tune.Tuner(
        tune.with_parameters(train, max_epochs=args.max_epochs),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="val_accuracy",
            mode="max",
            num_samples=args.num_samples,
            search_alg=OptunaSearch(seed=0),
            scheduler=ASHAScheduler(max_t=args.max_epochs, grace_period=1, reduction_factor=3),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name="digits-cnn",
            storage_path=storage,
            callbacks=[callback],
            verbose=0,
        ),
    )
    results = tuner.fit()
    best = results.get_best_result()
    print(f"best val_accuracy {best.metrics['val_accuracy']:.4f} with {best.config}")
    print(f"study run: {callback.study_run_id}  (experiment kept in {storage})")

    promotion = promote_best(callback.study_run_id, args.model_name, tracking_uri=args.tracking_uri)
    model = load_best(args.model_name, tracking_uri=args.tracking_uri)
    _, x_val, _, y_val = digits()
    _, accuracy = model.evaluate(x_val, y_val, verbose=0)
    print(f"{promotion.uri} (version {promotion.version}) reloaded: val_accuracy {accuracy:.4f}")
    ray.shutdown()
    print(f"open the MLflow UI:  mlflow ui --backend-store-uri {args.tracking_uri}")
    return results


if __name__ == "__main__":
    main()

"""Per-trial cost of logging an Optuna study to MLflow, four variants side by side.

Run: ``python benchmarks/logging_overhead.py`` (``--trials 300 --sleep-ms 50`` by default).

Part 1 (trivial objective): bare Optuna, optuna-integration's ``MLflowCallback``,
mlflow-hpo, and mlflow-hpo with ``synchronous=False``, each on a fresh SQLite store in a
temporary folder; prints ms/trial and mlflow-hpo / MLflowCallback.
Part 2 (objective of ``--sleep-ms``): bare vs mlflow-hpo ``synchronous=False`` wall-clock;
prints the added fraction. Targets: ratio <= 0.65, added <= 5%.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore")


def _objective(sleep_s: float) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -10, 10)
        y = trial.suggest_int("y", 0, 5)
        if sleep_s:
            time.sleep(sleep_s)
        return (x - 2) ** 2 + y

    return objective


def _warm(uri: str) -> None:
    # Create the schema outside the timed region: every variant pays it once, equally.
    from mlflow import MlflowClient

    MlflowClient(uri).search_experiments()


def run(variant: str, n_trials: int, sleep_s: float) -> float:
    """Seconds for ``n_trials`` trials of ``variant`` on a fresh SQLite store."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{os.path.join(tmp, 'bench.db')}"
        mlflow.set_tracking_uri(uri)
        _warm(uri)
        study = optuna.create_study()
        objective = _objective(sleep_s)
        start = time.perf_counter()
        if variant == "bare":
            study.optimize(objective, n_trials=n_trials)
        elif variant == "optuna-integration":
            from optuna_integration.mlflow import MLflowCallback

            callback: Any = MLflowCallback(tracking_uri=uri, metric_name="loss")
            study.optimize(objective, n_trials=n_trials, callbacks=[callback])
        else:
            from mlflow_hpo.optuna import MlflowStudyCallback

            with MlflowStudyCallback(
                experiment_name="bench",
                metric_name="loss",
                tracking_uri=uri,
                log_models="none",
                synchronous=variant == "mlflow-hpo",
            ) as tracker:
                study.optimize(tracker.track(objective), n_trials=n_trials, callbacks=[tracker])
        return time.perf_counter() - start


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--sleep-ms", type=float, default=50.0)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="variants run interleaved this many times; medians are reported",
    )
    args = parser.parse_args()

    print(f"Part 1: trivial objective, {args.trials} trials, median of {args.rounds} rounds")
    variants = ["bare", "optuna-integration", "mlflow-hpo", "mlflow-hpo-async"]
    samples: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):  # interleaved, so machine noise hits every variant alike
        for variant in variants:
            samples[variant].append(run(variant, args.trials, 0.0) / args.trials * 1000)
    per_trial = {v: _median(samples[v]) for v in variants}
    for variant in variants:
        print(f"  {variant:20s} {per_trial[variant]:8.2f} ms/trial")
    ratio = per_trial["mlflow-hpo"] / per_trial["optuna-integration"]
    ratio_async = per_trial["mlflow-hpo-async"] / per_trial["optuna-integration"]
    print(f"  mlflow-hpo / MLflowCallback         = {ratio:.2f}  (target <= 0.65)")
    print(f"  mlflow-hpo async / MLflowCallback   = {ratio_async:.2f}")

    sleep_s = args.sleep_ms / 1000
    print(f"Part 2: objective of {args.sleep_ms:.0f} ms, {args.trials} trials")
    bare, tracked = [], []
    for _ in range(args.rounds):
        bare.append(run("bare", args.trials, sleep_s))
        tracked.append(run("mlflow-hpo-async", args.trials, sleep_s))
    added = _median(tracked) / _median(bare) - 1
    print(f"  bare {_median(bare):.2f} s, mlflow-hpo synchronous=False {_median(tracked):.2f} s")
    print(f"  added wall-clock = {added * 100:.1f}%  (target <= 5%)")


if __name__ == "__main__":
    main()

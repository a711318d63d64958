"""Wall-clock overhead of tracking a small Hyperband search, side by side with untracked.

Run: ``python benchmarks/keras_tuner_overhead.py`` (``--max-epochs 9 --rounds 3``).

The same seeded Hyperband search over a small CNN on scikit-learn's digits runs three ways,
interleaved for ``--rounds`` rounds, each in a fresh interpreter so that no variant inherits
another's leftover objects:

* ``plain``: ``keras_tuner.Hyperband``;
* ``plain-frozen``: the same inside ``gc.freeze()``/``gc.unfreeze()``, which the tracked
  tuners do by default (``freeze_gc=True``) because Keras Tuner runs a full garbage
  collection before every build;
* ``tracked``: ``mlflow_hpo.keras_tuner.Hyperband`` with its defaults (synchronous,
  ``log_models="best"``, reports on), on a fresh SQLite store;
* ``tracked-nonblocking``: the same with ``synchronous=False``.

The tracking overhead is ``tracked`` against ``plain-frozen`` (target: under 3%); ``tracked``
against ``plain`` is what a user sees end to end. ``tracked-nonblocking`` shows what the
writer thread costs a Keras search: each write it makes during an epoch takes the
interpreter lock from the training loop.

Beside the wall-clock ratios, each tracked search times mlflow-hpo's own steps inside it
(opening the study, each epoch's and each trial's logging, the kept models, the close): the
time the search waited for us, which the rounds' spread on a shared machine can hide.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # MLflow's own cost, as elsewhere
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
warnings.filterwarnings("ignore")

import keras_tuner
from digits_common import build_cnn, digits


def build(hp: keras_tuner.HyperParameters):
    return build_cnn(
        n_blocks=hp.Int("n_blocks", 1, 3),
        filters=hp.Choice("filters", [8, 16]),
        kernel=hp.Int("kernel", 2, 4),
        pool=hp.Boolean("pool"),
        learning_rate=hp.Float("learning_rate", 1e-3, 3e-2, sampling="log"),
    )


VARIANTS = {
    "plain": "keras_tuner.Hyperband",
    "plain-frozen": "keras_tuner.Hyperband inside gc.freeze()/gc.unfreeze()",
    "tracked": "mlflow_hpo Hyperband (defaults: synchronous)",
    "tracked-nonblocking": "mlflow_hpo Hyperband (synchronous=False)",
}


HOOKS = [0.0]  # seconds the search spent inside mlflow-hpo's own code (tracked variants)
# The tracked tuner's own steps, each timed whole: none calls another, and none includes
# Keras Tuner's work (its hooks call these around their own).
OWN_STEPS = (
    "_mlflow_open", "_mlflow_note_data", "_mlflow_log_epoch", "_mlflow_finish",
    "_mlflow_log_kept", "_mlflow_count_all",
)  # fmt: skip


def _timed(function: Any) -> Any:
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            HOOKS[0] += time.perf_counter() - start

    return timed


def _time_own_steps(tuner: Any) -> None:
    """Time mlflow-hpo's steps inside the search (this benchmark's instrumentation only)."""
    from mlflow_hpo.keras_tuner._mixin import MlflowTunerMixin

    for name in OWN_STEPS:
        if not hasattr(getattr(MlflowTunerMixin, name), "__wrapped_by_benchmark__"):
            timed = _timed(getattr(MlflowTunerMixin, name))
            timed.__wrapped_by_benchmark__ = True  # type: ignore[attr-defined]
            setattr(MlflowTunerMixin, name, timed)
    tuner.mlflow_tracker.close = _timed(tuner.mlflow_tracker.close)


def run(variant: str, max_epochs: int) -> float:
    x_train, x_val, y_train, y_val = digits()
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(
            objective="val_accuracy",
            max_epochs=max_epochs,
            factor=3,
            seed=0,
            directory=tmp,
            project_name="bench",
        )
        if variant.startswith("tracked"):
            from mlflow_hpo.keras_tuner import Hyperband

            tuner = Hyperband(
                build,
                **common,
                experiment_name="bench",
                synchronous=variant == "tracked",
                tracking_uri=f"sqlite:///{os.path.join(tmp, 'mlflow.db')}",
            )
            tuner.mlflow_tracker.client.search_experiments()  # schema creation: not timed
            _time_own_steps(tuner)
        else:
            tuner = keras_tuner.Hyperband(build, **common)
        start = time.perf_counter()
        if variant == "plain-frozen":
            gc.collect()
            gc.freeze()
        try:
            tuner.search(x_train, y_train, validation_data=(x_val, y_val), batch_size=64, verbose=0)
        finally:
            gc.unfreeze()
        return time.perf_counter() - start


def _in_fresh_process(variant: str, max_epochs: int) -> tuple[float, float]:
    """One timed search in a new interpreter: Keras and TensorFlow leave objects behind
    after every search, and Keras Tuner runs a full garbage collection before each build,
    so in one process whichever variant runs later would pay for the earlier ones."""
    out = subprocess.run(
        [sys.executable, __file__, "--worker", variant, "--max-epochs", str(max_epochs)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    seconds, hooks = out.strip().splitlines()[-1].split()
    return float(seconds), float(hooks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run("plain", 1)  # warm-up: TensorFlow's first graph builds are not the search's cost
        seconds = run(args.worker, args.max_epochs)
        print(seconds, HOOKS[0])
        return
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} cores, load average {load:.2f} at start")
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    hooks: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):  # interleaved, each search in a fresh interpreter
        for variant in VARIANTS:
            seconds, inside = _in_fresh_process(variant, args.max_epochs)
            times[variant].append(seconds)
            hooks[variant].append(inside)
    median = {v: sorted(t)[len(t) // 2] for v, t in times.items()}
    print(f"Hyperband max_epochs={args.max_epochs}, median of {args.rounds} rounds")
    for variant, label in VARIANTS.items():
        rounds = ", ".join(f"{t:.2f}" for t in times[variant])
        print(f"  {label:58s} {median[variant]:7.2f} s  (rounds: {rounds})")
    logging_cost = median["tracked"] / median["plain-frozen"] - 1
    seen = median["tracked"] / median["plain"] - 1
    print(
        f"  tracking overhead (tracked vs plain-frozen) = {logging_cost * 100:.1f}%  (target < 3%)"
    )
    print(f"  what a user sees  (tracked vs plain)        = {seen * 100:.1f}%")
    nonblocking = median["tracked-nonblocking"] / median["plain-frozen"] - 1
    print(f"  synchronous=False (vs plain-frozen)         = {nonblocking * 100:.1f}%")
    # Each round runs its variants back to back: a ratio within a round cancels the drift of
    # the machine's speed between rounds, which the medians above do not.
    for variant in ("tracked", "tracked-nonblocking"):
        ratios = sorted(t / f for t, f in zip(times[variant], times["plain-frozen"], strict=True))
        paired = ratios[len(ratios) // 2] - 1
        spread = ", ".join(f"{(r - 1) * 100:.1f}%" for r in ratios)
        print(f"  {variant} vs plain-frozen, median of the rounds' ratios = {paired * 100:.1f}%"
              f"  (rounds: {spread})")  # fmt: skip
    # What the rounds' spread hides: the time the search spent inside mlflow-hpo's own
    # steps, timed in the same searches, against the same search untracked.
    for variant in ("tracked", "tracked-nonblocking"):
        inside = sorted(hooks[variant])[len(hooks[variant]) // 2]
        print(f"  {variant}: inside mlflow-hpo's steps {inside:.2f} s per search (median), "
              f"{inside / median['plain-frozen'] * 100:.1f}% of plain-frozen")  # fmt: skip


if __name__ == "__main__":
    main()

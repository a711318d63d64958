"""A 10,000-trial Optuna study: per-trial cost, writer throughput, close, memory, readers.

Run: ``python benchmarks/scale.py`` (about 6 minutes on 2 cores; ``--trials`` and
``--sleep-ms`` change the size).

On a fresh SQLite store, side by side:

1. the floor: a raw ``MlflowClient`` loop of the three calls mlflow-hpo makes per trial, in
   trials per second;
2. a burst of ``--burst`` trivial trials, non-blocking: the writer's own throughput (loop and
   drain), against that floor (target: within 1.2x);
3. the study, in a fresh process: ``--trials`` trials of a ``--sleep-ms`` objective,
   non-blocking, each offering a tiny model under ``log_models="best"``: the loop cost of the
   first and last 1,000 trials (target: within 10%), the close (target <= 10 s) and the
   process's peak RSS (target <= 300 MB). Beside it, in another fresh process, the floor: the
   same Optuna study untracked, with the same imports and the same store opened, for its
   peak RSS and its own first and last 1,000 trials;
4. then, each in a fresh process: ``mlflow-hpo show``, ``promote_best`` and the reports, timed
   (targets <= 3 s, <= 3 s, <= 10 s) with their peak RSS.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any

import mlflow  # noqa: F401 - it configures its loggers on import; quieted below
import optuna

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
optuna.logging.set_verbosity(optuna.logging.WARNING)
logging.getLogger("mlflow").setLevel(logging.WARNING)  # no schema/experiment notices
warnings.filterwarnings("ignore")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def raw_floor(uri: str, n: int) -> float:
    """Trials per second of a raw client loop of the same three calls."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(uri)
    experiment = client.create_experiment("raw")
    start = time.perf_counter()
    for i in range(n):
        run = client.create_run(experiment, tags={"mlflow_hpo.role": "trial", "k": "v" * 40})
        now = int(time.time() * 1000)
        client.log_batch(
            run.info.run_id,
            metrics=[Metric("loss", float(i), now, 0), Metric("trial_duration_s", 0.0, now, 0)],
            params=[Param("x", str(i)), Param("trial_number", str(i))],
            tags=[RunTag("mlflow_hpo.state", "COMPLETE")],
        )
        client.set_terminated(run.info.run_id, "FINISHED", now)
    return n / (time.perf_counter() - start)


def burst(uri: str, n: int) -> float:
    """Trials per second mlflow-hpo's writer sustains (loop and drain of a trivial study).

    Random sampling: TPE's own cost grows with the trials and is not the writer's."""
    from mlflow_hpo.optuna import MlflowStudyCallback

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
    start = time.perf_counter()
    tracker = MlflowStudyCallback(
        experiment_name="burst",
        metric_name="loss",
        tracking_uri=uri,
        synchronous=False,
        reports=False,
        log_models="none",
        verbose=0,
        close_timeout=600,
    )
    with tracker:
        study.optimize(
            tracker.track(lambda t: t.suggest_float("x", 0, 1)), n_trials=n, callbacks=[tracker]
        )
    return n / (time.perf_counter() - start)


def study(uri: str, n: int, sleep_s: float, tracked: bool) -> dict[str, float | str]:
    """One study in this (fresh) process: tracked by mlflow-hpo, or bare Optuna beside the
    same imports and the same opened store, the floor for memory and flatness."""
    from mlflow import MlflowClient
    from sklearn.dummy import DummyRegressor

    import mlflow_hpo
    from mlflow_hpo.optuna import MlflowStudyCallback

    MlflowClient(uri).search_experiments()  # the store opened in both: its migrations' memory
    model = DummyRegressor().fit([[0.0]], [0.0])  # a tiny model: the policy keeps the best
    from_imports = _rss_mb()
    durations: list[float] = []

    def objective(trial: optuna.Trial) -> float:
        start = time.perf_counter()
        x = trial.suggest_float("x", -10, 10)
        y = trial.suggest_int("y", 0, 5)
        time.sleep(sleep_s)
        if tracked:
            mlflow_hpo.log_model(model)
        durations.append(time.perf_counter() - start - sleep_s)
        return (x - 2) ** 2 + y

    tracker = MlflowStudyCallback(
        experiment_name="scale",
        metric_name="loss",
        tracking_uri=uri,
        synchronous=False,
        verbose=0,
        reports=False,
        close_timeout=600,
    )
    optimizer = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
    loop_start = time.perf_counter()
    if tracked:
        optimizer.optimize(tracker.track(objective), n_trials=n, callbacks=[tracker])
    else:
        optimizer.optimize(objective, n_trials=n)
    loop = time.perf_counter() - loop_start
    close_start = time.perf_counter()
    if tracked:
        tracker.close()
    close = time.perf_counter() - close_start
    return {
        "loop_s": loop,
        "first_ms": sum(durations[:1000]),  # ms per trial: the sum of 1,000 in seconds
        "last_ms": sum(durations[-1000:]),
        "close_s": close,
        "rss_mb": _rss_mb(),
        "imports_mb": from_imports,
        "study": tracker.study_run_id or "",
    }


def study_in_fresh_process(uri: str, n: int, sleep_ms: float, tracked: bool) -> dict[str, Any]:
    """``study`` in a fresh interpreter, so that its peak RSS is its own."""
    kind = "tracked" if tracked else "bare"
    args = ["--child", kind, "--uri", uri, "--trials", str(n), "--sleep-ms", str(sleep_ms)]
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True, timeout=3600
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


READERS = {
    "show": "from click.testing import CliRunner\nfrom mlflow_hpo.cli import cli\n"
    "out = CliRunner().invoke(cli, ['show', STUDY, '--tracking-uri', URI])\n"
    "assert out.exit_code == 0, out.output",
    "promote_best": "from mlflow_hpo.registry import promote_best\n"
    "promote_best(STUDY, 'scale-best', tracking_uri=URI)",
    "reports": "from mlflow_hpo.reports import write_reports\n"
    "write_reports(STUDY, tracking_uri=URI)",
}


def reader(name: str, uri: str, study_run: str) -> tuple[float, float]:
    """Seconds and peak MB of one reader, in a fresh process (imports not timed)."""
    code = (
        "import json, resource, time, warnings\nwarnings.filterwarnings('ignore')\n"
        f"URI, STUDY = {uri!r}, {study_run!r}\n"
        "import mlflow_hpo.cli, mlflow_hpo.registry, mlflow_hpo.reports, optuna, plotly\n"
        "import matplotlib.pyplot\nstart = time.perf_counter()\n"
        f"{READERS[name]}\n"
        "print(json.dumps([time.perf_counter() - start,"
        " resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=900
    )
    seconds, mb = json.loads(out.stdout.strip().splitlines()[-1])
    return float(seconds), float(mb)


def _target(label: str, value: float, target: float, unit: str = "") -> None:
    verdict = "met" if value <= target else "NOT MET"
    print(f"   {label:44s} {value:9.2f}{unit}   target <= {target:g}{unit}   {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--sleep-ms", type=float, default=20.0)
    parser.add_argument("--burst", type=int, default=2_000)
    parser.add_argument("--floor", type=int, default=1_000)
    parser.add_argument("--child", choices=["tracked", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = study(args.uri, args.trials, args.sleep_ms / 1000, args.child == "tracked")
        print(json.dumps(result))
        return
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} cores, load average {load:.2f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_HPO_HOME"] = os.path.join(tmp, "home")
        uri = f"sqlite:///{os.path.join(tmp, 'scale.db')}"
        from mlflow import MlflowClient

        MlflowClient(uri).search_experiments()  # the schema, outside every timing
        floor = raw_floor(uri, args.floor)
        ours = burst(uri, args.burst)
        print(f"1-2. writer throughput: raw client loop {floor:.1f} trials/s, "
              f"mlflow-hpo {ours:.1f} trials/s")  # fmt: skip
        _target("raw floor / mlflow-hpo writer", floor / ours, 1.2, "x")
        bare = study_in_fresh_process(uri, args.trials, args.sleep_ms, tracked=False)
        result = study_in_fresh_process(uri, args.trials, args.sleep_ms, tracked=True)
        print(f"3. {args.trials} trials of {args.sleep_ms:g} ms, non-blocking, each in a fresh "
              f"process; loop {result['loop_s']:.1f} s, bare {bare['loop_s']:.1f} s")  # fmt: skip
        for label, r in (("mlflow-hpo", result), ("bare Optuna", bare)):
            print(f"   {label:12s} per-trial cost: first 1000 {r['first_ms']:.3f} ms, "
                  f"last 1000 {r['last_ms']:.3f} ms ({r['last_ms'] / r['first_ms']:.2f}x); "
                  f"RSS after imports and store {r['imports_mb']:.0f} MB, "
                  f"peak {r['rss_mb']:.0f} MB")  # fmt: skip
        _target("last 1000 / first 1000", result["last_ms"] / result["first_ms"], 1.1, "x")
        _target("close (s)", result["close_s"], 10.0)
        writes_ms = 1000 / ours
        if writes_ms > args.sleep_ms:  # the target holds when a trial outlasts its writes
            print(f"   (the close target does not apply here: a trial's writes take "
                  f"{writes_ms:.0f} ms on this store, longer than the {args.sleep_ms:g} ms "
                  f"objective; --sleep-ms {writes_ms * 1.5:.0f} makes it apply)")  # fmt: skip
        _target("peak RSS (MB)", result["rss_mb"], 300.0)
        added = result["rss_mb"] - bare["rss_mb"]
        print(f"   the floor: bare Optuna's study beside the same imports peaks at "
              f"{bare['rss_mb']:.0f} MB; mlflow-hpo adds {added:.0f} MB")  # fmt: skip
        print("4. readers of the study, each in a fresh process")
        for name, target in (("show", 3.0), ("promote_best", 3.0), ("reports", 10.0)):
            seconds, mb = reader(name, uri, result["study"])
            _target(f"{name} (s), peak {mb:.0f} MB", seconds, target)


if __name__ == "__main__":
    main()

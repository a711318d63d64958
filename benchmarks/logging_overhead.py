"""What tracking an Optuna study costs, against the callback it replaces, side by side.

Run: ``python benchmarks/logging_overhead.py`` (about 6 minutes on 2 cores).

Every variant runs on a fresh store, interleaved with the others, ``--rounds`` times; the
medians are printed with the targets of issue 11:

1. SQLite, ``--trials`` trivial trials: bare Optuna, optuna-integration's ``MLflowCallback``,
   mlflow-hpo synchronous, and mlflow-hpo ``synchronous=False`` (the loop and the close), and
   two floors: a raw ``MlflowClient`` loop of the same three calls per trial with a minimal
   payload, and the same loop carrying mlflow-hpo's own record of a trial (its tags, params
   and metrics, read back from a run it wrote): what the store costs for that record.
   Targets: synchronous <= 0.5x MLflowCallback, non-blocking total <= 0.5x.
2. HTTP: a real ``mlflow server`` on PostgreSQL on a free loopback port, with one and with
   two workers; requests are counted per trial. Targets: synchronous <= 0.5x,
   non-blocking total <= 0.35x, at most 3.5 requests per trial.
3. 30 trials of a 50 ms objective with default settings (reports on), non-blocking: the
   wall-clock against bare Optuna, the close, and the reports' size. Targets: <= +3%,
   close <= 0.5 s, reports <= 5 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow  # it configures its loggers on import; quieted below
import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the real-service helpers the tests use
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
optuna.logging.set_verbosity(optuna.logging.WARNING)
logging.getLogger("mlflow").setLevel(logging.WARNING)  # no schema/experiment notices
warnings.filterwarnings("ignore")

REQUESTS = [0]
STUDIES: list[optuna.Study] = []  # the last one is the study a variant just ran


def _phases(study: optuna.Study) -> tuple[float, float]:
    """Seconds of the study's first trial, and mean seconds between two trials (from the
    end of one to the start of the next: the callbacks and Optuna's own step)."""
    trials = study.trials
    first = (trials[0].datetime_complete - trials[0].datetime_start).total_seconds()
    gaps = [
        (b.datetime_start - a.datetime_complete).total_seconds()
        for a, b in itertools.pairwise(trials)
    ]
    return first, statistics.mean(gaps)


def _count_requests() -> None:
    """Count every HTTP request this process sends (MLflow's client uses requests)."""
    import requests

    original = requests.Session.request

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        REQUESTS[0] += 1
        return original(self, *args, **kwargs)

    requests.Session.request = counted  # type: ignore[method-assign]


def _objective(sleep_s: float) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -10, 10)
        y = trial.suggest_int("y", 0, 5)
        if sleep_s:
            time.sleep(sleep_s)
        return (x - 2) ** 2 + y

    return objective


def run(variant: str, uri: str, n_trials: int, sleep_s: float = 0.0, **extra: Any) -> float:
    """Seconds for ``n_trials`` trials of ``variant`` (the close included)."""
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
    MlflowClient(uri).search_experiments()  # the store's schema: paid outside the timing
    study = optuna.create_study()
    STUDIES.append(study)
    objective = _objective(sleep_s)
    start = time.perf_counter()
    if variant == "bare":
        study.optimize(objective, n_trials=n_trials)
    elif variant == "MLflowCallback":
        from optuna_integration.mlflow import MLflowCallback

        callback: Any = MLflowCallback(tracking_uri=uri, metric_name="loss")
        with contextlib.redirect_stdout(io.StringIO()):  # its "View run" line per trial
            study.optimize(objective, n_trials=n_trials, callbacks=[callback])
    elif variant in ("raw floor", "record floor"):
        # The same three calls as mlflow-hpo: no "View run" fetch when a run ends.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        record = RECORD[0] if variant == "record floor" else None
        try:
            _raw_loop(MlflowClient(uri), study, objective, n_trials, record)
        finally:
            os.environ.pop("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", None)
    else:
        from mlflow_hpo.optuna import MlflowStudyCallback

        options: dict[str, Any] = {"log_models": "none", "reports": False, "verbose": 0}
        options.update(extra)
        with MlflowStudyCallback(
            experiment_name="bench",
            metric_name="loss",
            tracking_uri=uri,
            synchronous=variant == "mlflow-hpo",
            **options,
        ) as tracker:
            study.optimize(tracker.track(objective), n_trials=n_trials, callbacks=[tracker])
    return time.perf_counter() - start


def _raw_loop(
    client: Any, study: optuna.Study, objective: Any, n_trials: int, record: Record | None
) -> None:
    """The store's floor: the same three calls mlflow-hpo makes per trial, nothing else;
    with ``record``, each call carries what mlflow-hpo's own carries for a trial (its tags,
    params and metrics, of the same sizes), under a study run as mlflow-hpo's trials are."""
    from mlflow.entities import Metric, Param, RunTag

    experiment = client.create_experiment(f"raw-{time.time_ns()}")
    parent = None
    if record is not None:
        parent = client.create_run(experiment, tags={"mlflow_hpo.role": "study"}).info.run_id
    for _ in range(n_trials):
        trial = study.ask()
        value = objective(trial)
        study.tell(trial, value)
        now = int(time.time() * 1000)
        if record is None:
            tags = {"mlflow_hpo.role": "trial", "k": "v" * 40}
            metrics = [Metric("loss", value, now, 0), Metric("trial_duration_s", 0.0, now, 0)]
            params = [Param(k, str(v)) for k, v in trial.params.items()]
            closing = [RunTag("mlflow_hpo.state", "COMPLETE")]
        else:
            tags = {**record.tags, "mlflow.parentRunId": str(parent)}
            metrics = [Metric(k, value, now, 0) for k in record.metrics]
            params = [Param(k, str(trial.params.get(k, v))) for k, v in record.params.items()]
            closing = []
        run = client.create_run(experiment, tags=tags, run_name=f"trial-{trial.number}")
        client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=closing)
        client.set_terminated(run.info.run_id, "FINISHED", now)


class Record:
    """What mlflow-hpo writes for one trial of this benchmark's study, read back from a run
    it wrote: the tags its ``create_run`` carries, and its batch's params and metrics."""

    def __init__(self, tags: dict[str, str], params: dict[str, str], metrics: list[str]):
        self.tags, self.params, self.metrics = tags, params, metrics

    @classmethod
    def of_mlflow_hpo(cls) -> Record:
        from mlflow import MlflowClient

        with tempfile.TemporaryDirectory() as tmp:
            uri = _sqlite(tmp, "record")
            run("mlflow-hpo", uri, 3)
            client = MlflowClient(uri)
            experiment = client.get_experiment_by_name("bench")
            (trial, *_) = [
                r
                for r in client.search_runs([experiment.experiment_id])
                if r.data.tags.get("mlflow_hpo.role") == "trial"
            ]
        own = {"mlflow.runName", "mlflow.user", "mlflow.parentRunId"}  # set per run
        tags = {k: v for k, v in trial.data.tags.items() if k not in own}
        return cls(tags, dict(trial.data.params), sorted(trial.data.metrics))


RECORD: list[Record] = []


def _sqlite(tmp: str, name: str) -> str:
    return f"sqlite:///{os.path.join(tmp, name)}.db"


def part_sqlite(trials: int, rounds: int) -> None:
    variants = [
        "bare", "MLflowCallback", "raw floor", "record floor", "mlflow-hpo",
        "mlflow-hpo non-blocking",
    ]  # fmt: skip
    samples: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for variant in variants:
                uri = _sqlite(tmp, f"{r}-{variant.replace(' ', '_')}")
                samples[variant].append(run(variant, uri, trials) / trials * 1000)
    ms = {v: statistics.median(samples[v]) for v in variants}
    print(f"1. SQLite, {trials} trivial trials, median of {rounds} (ms/trial, close included)")
    for variant in variants:
        print(f"   {variant:26s} {ms[variant]:7.2f}")
    base = ms["MLflowCallback"]
    _target("synchronous / MLflowCallback", ms["mlflow-hpo"] / base, 0.5)
    _target("non-blocking / MLflowCallback", ms["mlflow-hpo non-blocking"] / base, 0.5)
    _floors(ms, "store")


def _floors(ms: dict[str, float], what: str) -> None:
    base = ms["MLflowCallback"]
    print(f"   the {what}'s floor (raw loop) / MLflowCallback = {ms['raw floor'] / base:.2f}")
    print(
        f"   the {what}'s floor for mlflow-hpo's record (the same calls carrying its tags, "
        f"params and metrics) / MLflowCallback = {ms['record floor'] / base:.2f}; "
        f"mlflow-hpo synchronous / that floor = {ms['mlflow-hpo'] / ms['record floor']:.2f}"
    )


def part_http(trials: int, rounds: int, workers: int) -> None:
    from _services import MlflowServer, postgres_database
    from conftest import free_port

    variants = [
        "MLflowCallback", "raw floor", "record floor", "mlflow-hpo", "mlflow-hpo non-blocking",
    ]  # fmt: skip
    samples: dict[str, list[float]] = {v: [] for v in variants}
    requests: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp, postgres_database() as db:
        server = MlflowServer(db, Path(tmp) / "artifacts", free_port(), workers=workers)
        server.start()
        try:
            for _ in range(rounds):
                for variant in variants:
                    before = REQUESTS[0]
                    samples[variant].append(run(variant, server.url, trials) / trials * 1000)
                    requests[variant].append((REQUESTS[0] - before) / trials)
        finally:
            server.stop()
    ms = {v: statistics.median(samples[v]) for v in variants}
    print(f"2. HTTP, mlflow server on PostgreSQL, --workers {workers}, {trials} trials")
    for variant in variants:
        per = statistics.median(requests[variant])
        print(f"   {variant:26s} {ms[variant]:7.2f} ms/trial  {per:5.2f} requests/trial")
    base = ms["MLflowCallback"]
    _target("synchronous / MLflowCallback", ms["mlflow-hpo"] / base, 0.5)
    _target("non-blocking / MLflowCallback", ms["mlflow-hpo non-blocking"] / base, 0.35)
    _target("requests per trial, synchronous", statistics.median(requests["mlflow-hpo"]), 3.5)
    _floors(ms, "server")


def part_slow_objective(rounds: int) -> None:
    from mlflow import MlflowClient

    bare, tracked, closes, sizes, floors = [], [], [], [], []
    bare_phases: list[tuple[float, float]] = []
    tracked_phases: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            bare.append(run("bare", _sqlite(tmp, f"bare{r}"), 30, 0.05))
            bare_phases.append(_phases(STUDIES[-1]))
            floors.append(_close_floor(_sqlite(tmp, f"floor{r}")))
            uri = _sqlite(tmp, f"tracked{r}")
            tracked.append(_timed_close(uri, closes, experiment=f"slow{r}"))
            tracked_phases.append(_phases(STUDIES[-1]))
            client = MlflowClient(uri)
            experiment = client.get_experiment_by_name(f"slow{r}")
            study = next(
                run
                for run in client.search_runs([experiment.experiment_id])
                if run.data.tags.get("mlflow_hpo.role") == "study"
            )
            sizes.append(
                sum(a.file_size or 0 for a in client.list_artifacts(study.info.run_id, "reports"))
            )
    added = statistics.median(tracked) / statistics.median(bare) - 1
    print("3. 30 trials of a 50 ms objective, default settings, synchronous=False")
    print(f"   bare {statistics.median(bare):.3f} s, tracked {statistics.median(tracked):.3f} s")
    _target("added wall-clock (%)", added * 100, 3.0)
    floor = statistics.median(floors)
    print(
        f"   the store's floor: the writes that can only start once the search has ended "
        f"(the last trial's three calls, the study's summary and its status) take "
        f"{floor * 1000:.0f} ms here, {floor / statistics.median(bare) * 100:.1f}% of the "
        "bare study; the rest is mlflow-hpo's"
    )
    first = [statistics.median(p[i] for p in tracked_phases) for i in (0, 1)]
    first_bare = [statistics.median(p[i] for p in bare_phases) for i in (0, 1)]
    print(
        f"   where the rest goes: the first trial +{(first[0] - first_bare[0]) * 1000:.1f} ms "
        f"(the study opens there), between two trials "
        f"+{(first[1] - first_bare[1]) * 1000:.2f} ms (the callback), the close "
        f"{statistics.median(closes) * 1000:.0f} ms (medians)"
    )
    _target("close (s)", statistics.median(closes), 0.5)
    _target("reports (MB)", statistics.median(sizes) / 1e6, 5.0)


def _close_floor(uri: str) -> float:
    """Seconds of the writes a complete record needs after the last trial, raw: the last
    trial's run (three calls), the study run's summary (a batch and its trials table) and
    its status. No tracker can end a study faster on this store."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(uri)
    experiment = client.create_experiment("floor")
    study = client.create_run(experiment, tags={"mlflow_hpo.role": "study"}).info.run_id
    start = time.perf_counter()
    now = int(time.time() * 1000)
    tags = {"mlflow_hpo.role": "trial", "mlflow.parentRunId": study}
    trial = client.create_run(experiment, tags=tags).info.run_id
    client.log_batch(
        trial,
        metrics=[Metric("loss", 1.0, now, 0), Metric("trial_duration_s", 0.05, now, 0)],
        params=[Param("x", "1.0"), Param("y", "2")],
        tags=[RunTag("mlflow_hpo.state", "COMPLETE")],
    )
    client.set_terminated(trial, "FINISHED", now)
    client.log_batch(study, metrics=[Metric("best_loss", 1.0, now, 0)], tags=[RunTag("k", "v")])
    client.log_text(study, "number,value,x,y\n" * 31, "trials.csv")
    client.set_terminated(study, "FINISHED", now)
    return time.perf_counter() - start


def _timed_close(uri: str, closes: list[float], experiment: str) -> float:
    """Loop and close of the tracked 30-trial study; the close alone goes to ``closes``."""
    from mlflow import MlflowClient

    from mlflow_hpo.optuna import MlflowStudyCallback

    MlflowClient(uri).search_experiments()  # the store's schema: paid outside the timing
    study = optuna.create_study()
    STUDIES.append(study)
    start = time.perf_counter()
    tracker = MlflowStudyCallback(
        experiment_name=experiment, tracking_uri=uri, synchronous=False, reports=True, verbose=0
    )
    study.optimize(tracker.track(_objective(0.05)), n_trials=30, callbacks=[tracker])
    closing = time.perf_counter()
    tracker.close()
    end = time.perf_counter()
    closes.append(end - closing)
    tracker.flush()  # the reports, drawn in the background: outside the timing
    return end - start


def _target(label: str, value: float, target: float) -> None:
    verdict = "met" if value <= target else "NOT MET"
    print(f"   {label:36s} {value:8.2f}   target <= {target:g}   {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=150)
    parser.add_argument("--http-trials", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--parts", default="1,2,3", help="which parts to run, e.g. 3")
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} cores, load average {load:.2f} at start")
    _count_requests()
    parts = set(args.parts.split(","))
    if parts & {"1", "2"}:
        RECORD.append(Record.of_mlflow_hpo())
    if "1" in parts:
        part_sqlite(args.trials, args.rounds)
    if "2" in parts and not args.skip_http:
        for workers in (1, 2):
            part_http(args.http_trials, args.rounds, workers)
    if "3" in parts:
        part_slow_objective(args.rounds)


if __name__ == "__main__":
    main()

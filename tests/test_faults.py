"""Nothing lost: real faults, real parts, every trial in MLflow exactly once, nothing RUNNING.

A real ``mlflow server`` on PostgreSQL that dies and restarts mid-study; a store that stays
down past ``close()`` and is written later by ``mlflow-hpo sync``; three workers opening one
fresh SQLite store at once; a worker killed with SIGKILL mid-trial, then resumed; trials lost
before the journal existed. Everything runs in the default mode users run.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from collections import Counter
from pathlib import Path

import mlflow
import optuna
import pytest
from _services import MlflowServer, postgres_database
from conftest import all_runs, assert_no_running, free_port, study_runs
from mlflow import MlflowClient

from mlflow_hpo import names
from mlflow_hpo.errors import MlflowHpoWarning
from mlflow_hpo.optuna import MlflowStudyCallback

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
optuna.logging.set_verbosity(optuna.logging.ERROR)


def _exactly_once(trials: list, n: int) -> None:
    numbers = Counter(int(t.data.params["trial_number"]) for t in trials)
    assert sorted(numbers) == list(range(n)), f"missing trials: {set(range(n)) - set(numbers)}"
    assert max(numbers.values()) == 1, f"trials logged twice: {numbers.most_common(3)}"


@pytest.mark.parametrize("mode", ["synchronous", "non-blocking, fail-fast retries"])
def test_a_tracking_server_that_dies_and_restarts_loses_no_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    synchronous = mode == "synchronous"  # with MLflow's own (minutes-long) HTTP retries
    if not synchronous:
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with postgres_database() as db:
        server = MlflowServer(db, tmp_path / "artifacts", free_port())
        server.start()
        ran_while_down: list[int] = []
        try:

            def objective(trial: optuna.Trial) -> float:
                x = trial.suggest_float("x", 0, 1)
                if trial.number == 4:
                    server.stop(kill=True)  # a crash, mid-trial
                if 4 <= trial.number < 14:
                    ran_while_down.append(trial.number)
                if trial.number == 14:
                    server.start()
                for step in range(2):
                    trial.report(x * step, step)
                return x

            study = optuna.create_study()
            tracker = MlflowStudyCallback(
                experiment_name="outage",
                tracking_uri=server.url,
                synchronous=synchronous,
                close_timeout=180,
            )
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with tracker:
                    study.optimize(tracker.track(objective), n_trials=20, callbacks=[tracker])
            client = MlflowClient(server.url)
            parent, trials = study_runs(client, "outage")
            _exactly_once(trials, 20)
            assert all(t.info.status == "FINISHED" for t in trials)
            assert parent.info.status == "FINISHED"
            assert parent.data.metrics["n_trials_complete"] == 20
            for trial in trials:  # per-step metrics survived the outage too, once each
                history = client.get_metric_history(trial.info.run_id, "intermediate_value")
                assert [m.step for m in history] == [0, 1]
            # The search went on while the store was down: it never froze.
            assert ran_while_down == list(range(4, 14))
            # Failed writes were counted and said once, not silently dropped.
            assert int(parent.data.tags[names.TAG_LOGGING_WARNINGS]) >= 1
            outage = [w for w in caught if "could not be written" in str(w.message)]
            assert len(outage) == 1 and issubclass(outage[0].category, MlflowHpoWarning)
            assert_no_running(client, "outage")
        finally:
            server.stop()


WORKER = textwrap.dedent("""
    import sys, time, optuna, mlflow
    from mlflow_hpo.optuna import MlflowStudyCallback
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    mode, storage, uri = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "hang":  # with Optuna's heartbeat, which marks a dead worker's trial FAIL
        storage = optuna.storages.RDBStorage(storage, heartbeat_interval=1, grace_period=2)
    study = optuna.load_study(study_name="shared", storage=storage)

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        trial.report(x, 0)
        if mode.startswith("hang") and trial.number == 2:
            mlflow.log_metric("started", 1.0)  # the trial's run exists, RUNNING
            print("busy", flush=True)
            time.sleep(600)
        if mode == "outage" and trial.number == 3:
            print("down?", flush=True)
            sys.stdin.readline()  # the test stops the server, then lets us go on
        return x

    n = int(sys.argv[4])
    kwargs = {"close_timeout": float(sys.argv[5])} if len(sys.argv) > 5 else {}
    with MlflowStudyCallback(experiment_name="w", tracking_uri=uri, **kwargs) as tracker:
        study.optimize(tracker.track(objective), n_trials=n, callbacks=[tracker])
    print("done", flush=True)
""")


def _worker(*args: str, stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, *args],
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_store_down_past_close_is_written_by_mlflow_hpo_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with postgres_database() as optuna_db, postgres_database() as db:
        optuna.create_study(study_name="shared", storage=optuna_db)
        server = MlflowServer(db, tmp_path / "artifacts", free_port())
        server.start()
        try:
            proc = _worker("outage", optuna_db, server.url, "8", "2", stdin=True)
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline().strip() == "down?"
            server.stop(kill=True)
            proc.stdin.write("\n")
            proc.stdin.flush()
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]  # the search itself was not broken
            (key,) = re.findall(r"mlflow-hpo sync (\S+)", err)
            assert "trial run(s)" in err  # how many still wait, and the command, once

            # While the store is down, sync says so and exits non-zero.
            command = [sys.executable, "-m", "mlflow_hpo", "sync", key, "--timeout", "3"]
            still_down = subprocess.run(command, capture_output=True, text=True, timeout=120)
            assert still_down.returncode == 1 and "NOT DONE" in still_down.stdout
            assert "closed database" not in still_down.stderr  # it stopped its writes first

            server.start()
            command[-1] = "120"  # the store is back: give it time to take everything
            synced = subprocess.run(command, capture_output=True, text=True, timeout=300)
            assert synced.returncode == 0, synced.stdout + synced.stderr
            client = MlflowClient(server.url)
            parent, trials = study_runs(client, "w")
            _exactly_once(trials, 8)
            assert parent.info.status == "FINISHED"
            assert_no_running(client, "w")
            again = subprocess.run(command, capture_output=True, text=True, timeout=120)
            assert again.returncode == 0  # nothing left: idempotent
            _exactly_once(study_runs(client, "w")[1], 8)
        finally:
            server.stop()


def test_a_large_append_keeps_every_entry_in_its_place(tmp_path: Path) -> None:
    """The journal writes a batch of entries as few statements as it can (each call into
    SQLite can cost the user's thread the interpreter lock): every entry of a batch larger
    than one statement still gets its own number, in order, and is confirmed by it."""
    from mlflow_hpo._core import journal

    jour = journal.Journal(tmp_path / "j.db")
    try:
        first = [journal.Op(f"trial:{i}", "log_batch", {"i": i}) for i in range(450)]
        jour.append(first, "me")
        later = [journal.Op("study", "summary", {"i": 450})]
        jour.append(later, "me")
        ops = [*first, *later]
        assert [op.seq for op in ops] == sorted({op.seq for op in ops})  # distinct, rising
        pending = jour.pending("me")
        assert [(op.seq, op.payload) for op in pending] == [(op.seq, op.payload) for op in ops]
        jour.finish(ops[:300], {f"trial:{i}": f"run-{i}" for i in range(250)})
        assert [op.payload["i"] for op in jour.pending("me")] == list(range(300, 451))
        assert jour.run_id("trial:249") == "run-249"
        assert jour.counts()["pending"] == 151
    finally:
        jour.close()


def test_sync_leaves_the_writes_of_a_writer_on_another_machine_and_says_whose(
    tracking_uri: str,
) -> None:
    """A journal home shared between machines (a network drive): whether a writer on another
    host is alive cannot be checked from here, so sync leaves its entries and names it."""
    from mlflow_hpo._core import journal

    key = "shared-home-study"
    jour = journal.Journal(journal.journal_path(key))
    jour.set_meta({"study_key": key, "tracking_uri": tracking_uri})
    create = {"tags": {}, "run_name": "t", "start_time": 0, "trial_key": "0", "needs": None}
    jour.append([journal.Op("trial:0", "create_run", create)], "elsewhere:4242:0123abcd")
    jour.close()
    command = [sys.executable, "-m", "mlflow_hpo", "sync", key, "--timeout", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{key}: NOT DONE: 1 writes still waiting" in result.stdout
    assert "(elsewhere pid 4242, on another machine: not checked)" in result.stdout
    client = MlflowClient(tracking_uri)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_an_in_memory_study_opened_while_the_store_is_down_is_written_when_it_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The study run of an in-memory study is made by the writer, after its experiment: both
    wait in the journal while the store is down from the start, and reach it in that order
    when it comes back, written by the process that is still running."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    port = free_port()
    study = optuna.create_study()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with MlflowStudyCallback(
            experiment_name="down-at-open",
            tracking_uri=f"http://127.0.0.1:{port}",  # nothing listens there yet
            close_timeout=1,
        ) as tracker:
            study.optimize(
                tracker.track(lambda t: t.suggest_float("x", 0, 1)), n_trials=3, callbacks=[tracker]
            )
    (key,) = {k for w in caught for k in re.findall(r"mlflow-hpo sync (\S+)", str(w.message))}
    # sync run meanwhile (another terminal) leaves the writes to this live process, and says so
    command = [sys.executable, "-m", "mlflow_hpo", "sync", key, "--timeout", "1"]
    meanwhile = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert meanwhile.returncode == 1 and "NOT DONE" in meanwhile.stdout, meanwhile.stderr
    assert f"still running ({socket.gethostname()} pid {os.getpid()})" in meanwhile.stdout
    with postgres_database() as db:
        server = MlflowServer(db, tmp_path / "artifacts", port)
        server.start()
        try:
            assert tracker.flush(timeout=120)  # its writer retries until the store is back
            client = MlflowClient(server.url)
            parent, trials = study_runs(client, "down-at-open")
            assert [t.data.params[names.PARAM_TRIAL_NUMBER] for t in trials] == ["0", "1", "2"]
            assert parent.info.status == "FINISHED"
            assert parent.data.metrics["n_trials_complete"] == 3
            assert_no_running(client, "down-at-open")
        finally:
            server.stop()
    mlflow.set_tracking_uri(None)


def test_three_workers_opening_one_fresh_sqlite_store_at_once_log_every_trial(
    tmp_path: Path,
) -> None:
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"  # no schema yet: the workers race to make it
    with postgres_database() as optuna_db:
        optuna.create_study(study_name="shared", storage=optuna_db)
        procs = [_worker("plain", optuna_db, uri, "8") for _ in range(3)]
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]
            assert "MlflowHpoWarning" not in err, err[-3000:]
    client = MlflowClient(uri)
    parent, trials = study_runs(client, "w")
    _exactly_once(trials, 24)
    assert parent.info.status == "FINISHED"
    worker_tags = {
        k: v for k, v in parent.data.tags.items() if k.startswith(names.TAG_WORKER_WARNINGS_PREFIX)
    }
    assert len(worker_tags) == 3  # every worker's count reached the study run, added up
    assert int(parent.data.tags[names.TAG_LOGGING_WARNINGS]) == sum(
        int(v) for v in worker_tags.values()
    )
    assert_no_running(client, "w")


def test_a_worker_killed_mid_trial_leaves_nothing_running_after_a_resume(
    tmp_path: Path, tracking_uri: str
) -> None:
    with postgres_database() as optuna_db:
        storage = optuna.storages.RDBStorage(optuna_db, heartbeat_interval=1, grace_period=2)
        optuna.create_study(study_name="shared", storage=storage)
        proc = _worker("hang", optuna_db, tracking_uri, "5")
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "busy"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        client = MlflowClient(tracking_uri)
        _, trials = study_runs(client, "w")
        assert [t.info.status for t in trials][-1] == "RUNNING"  # what SIGKILL leaves

        time.sleep(3)  # past Optuna's grace period: its heartbeat marks the trial FAIL
        study = optuna.load_study(study_name="shared", storage=storage)
        optuna.storages.fail_stale_trials(study)
        with MlflowStudyCallback(experiment_name="w") as tracker:
            study.optimize(tracker.track(lambda t: t.suggest_float("x", 0, 1)), n_trials=2,
                           callbacks=[tracker])  # fmt: skip
        parent, trials = study_runs(client, "w")
        _exactly_once(trials, 5)
        killed = trials[2]
        assert killed.info.status == "FAILED"  # as Optuna says, with the reason
        assert killed.data.tags[names.TAG_STATE] == names.STATE_FAIL
        assert "reopened" in killed.data.tags[names.TAG_END_REASON]
        assert killed.data.metrics["started"] == 1.0  # what it logged before it died stays
        assert parent.info.status == "FINISHED"
        assert_no_running(client, "w")


def test_a_run_left_running_by_a_dead_worker_is_ended_killed_when_the_study_reopens(
    tmp_path: Path, tracking_uri: str
) -> None:
    with postgres_database() as optuna_db:
        optuna.create_study(study_name="shared", storage=optuna_db)
        proc = _worker("hang-without-heartbeat", optuna_db, tracking_uri, "5")
        assert proc.stdout is not None and proc.stdout.readline().strip() == "busy"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        # No heartbeat: Optuna keeps trial 2 RUNNING forever; the run must not stay so.
        study = optuna.load_study(study_name="shared", storage=optuna_db)
        with MlflowStudyCallback(experiment_name="w") as tracker:
            study.optimize(tracker.track(lambda t: 0.5), n_trials=1, callbacks=[tracker])
    client = MlflowClient(tracking_uri)
    _, trials = study_runs(client, "w")
    (orphan,) = [t for t in trials if t.info.run_name == "trial-2"]
    assert orphan.info.status == "KILLED"
    assert "ended without ending the run" in orphan.data.tags[names.TAG_END_REASON]
    assert_no_running(client, "w")


def test_trials_lost_before_the_journal_are_written_when_the_study_resumes(
    tmp_path: Path, tracking_uri: str
) -> None:
    with postgres_database() as optuna_db:
        study = optuna.create_study(study_name="old", storage=optuna_db)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)  # not tracked
        resumed = optuna.load_study(study_name="old", storage=optuna_db)
        with MlflowStudyCallback(experiment_name="old") as tracker:
            resumed.optimize(
                tracker.track(lambda t: t.suggest_float("x", 0, 1)), n_trials=2,
                callbacks=[tracker],
            )  # fmt: skip
        client = MlflowClient(tracking_uri)
        parent, trials = study_runs(client, "old")
        _exactly_once(trials, 5)
        for old in trials[:3]:
            assert old.info.status == "FINISHED"
            assert old.data.metrics["value"] == pytest.approx(resumed.trials[
                int(old.data.params["trial_number"])].value)  # fmt: skip
            assert names.TAG_END_REASON in old.data.tags
        assert parent.data.metrics["n_trials_complete"] == 5
        # Reopened again: nothing is written twice.
        with MlflowStudyCallback(experiment_name="old") as tracker:
            resumed.optimize(tracker.track(lambda t: 0.1), n_trials=1, callbacks=[tracker])
        _exactly_once(study_runs(client, "old")[1], 6)
        assert len(all_runs(client, "old")) == 7


def _interrupted(script: str, tmp_path: Path, tracking_uri: str, signals: int) -> str:
    """Run ``script`` and press Ctrl-C ``signals`` times: first once trial 2 runs, then
    (a second time) as soon as the study run has its final status, during the close."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_HPO_REPORTS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    while proc.stdout.readline().strip() != "trial 2":
        pass
    proc.send_signal(signal.SIGINT)
    if signals == 2:
        client = MlflowClient(tracking_uri)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            studies = [
                r
                for r in all_runs(client, "ctrl-c")
                if r.data.tags.get(names.TAG_ROLE) == names.ROLE_STUDY
            ]
            if studies and studies[0].info.status != "RUNNING":
                proc.send_signal(signal.SIGINT)  # while the reports are being drawn
                break
            time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, err[-2000:]
    return err


SCRIPT = """
    import time, optuna
    from mlflow_hpo.optuna import MlflowStudyCallback
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    def objective(trial):
        print(f"trial {{trial.number}}", flush=True)
        time.sleep(0.5 if trial.number < 2 else 60)
        return trial.suggest_float("x", 0, 1)

    study = optuna.create_study(direction="maximize")
    tracker = MlflowStudyCallback(experiment_name="ctrl-c")
    {body}
"""
WITH = SCRIPT.format(
    body="""with tracker:
        study.optimize(tracker.track(objective), n_trials=5, callbacks=[tracker])"""
)
WITHOUT = SCRIPT.format(
    body="study.optimize(tracker.track(objective), n_trials=5, callbacks=[tracker])"
)


@pytest.mark.parametrize(("script", "signals"), [(WITH, 1), (WITHOUT, 1), (WITH, 2)])
def test_ctrl_c_ends_the_trial_and_the_study_killed(
    tmp_path: Path, tracking_uri: str, script: str, signals: int
) -> None:
    _interrupted(script, tmp_path, tracking_uri, signals)
    client = MlflowClient(tracking_uri)
    parent, trials = study_runs(client, "ctrl-c")
    assert [t.info.status for t in trials] == ["FINISHED", "FINISHED", "KILLED"]
    assert parent.info.status == "KILLED"
    assert_no_running(client, "ctrl-c")

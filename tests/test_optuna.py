"""The Optuna backend against a real SQLite MLflow store, asserted through MlflowClient."""

from __future__ import annotations

import csv
import io
import threading
import warnings

import mlflow
import optuna
import pytest
from conftest import all_runs, assert_no_running, hyperparameters, output_exceptions, study_runs
from mlflow import MlflowClient
from sklearn.base import BaseEstimator

import mlflow_hpo
from mlflow_hpo import names
from mlflow_hpo._core.batch import TRUNCATION_MARKER
from mlflow_hpo.errors import ConfigurationError, MlflowHpoWarning
from mlflow_hpo.optuna import MlflowStudyCallback

optuna.logging.set_verbosity(optuna.logging.ERROR)


def _artifact(client: MlflowClient, run_id: str, path: str) -> str:
    local = client.download_artifacts(run_id, path)
    with open(local) as f:
        return f.read()


def _three_state_objective(trial: optuna.Trial) -> float:
    """Trial 0 completes, 1 is pruned at step 2, 2 fails with ValueError."""
    x = trial.suggest_float("x", 0.0, 1.0)
    units = trial.suggest_int("units", 8, 64, log=True)
    act = trial.suggest_categorical("act", ["relu", "tanh"])
    trial.set_user_attr("note", f"t{trial.number}")
    for step in range(3):
        trial.report(x + step, step)
        if trial.number == 1 and step == 2:
            raise optuna.TrialPruned()
    if trial.number == 2:
        raise ValueError("shape mismatch in trial 2")
    mlflow.log_metric("from_objective", 42.0)  # fluent call lands on the trial's run
    return x + units / 100 + (act == "relu")


def test_parent_nests_every_trial_with_faithful_states(
    client: MlflowClient, tracking_uri: str
) -> None:
    study = optuna.create_study(direction="maximize", study_name="states")
    with MlflowStudyCallback(experiment_name="exp", metric_name="val_accuracy") as tracker:
        study.optimize(
            tracker.track(_three_state_objective),
            n_trials=3,
            callbacks=[tracker],
            catch=(ValueError,),
        )

    parent, trials = study_runs(client, "exp")
    assert [t.info.run_name for t in trials] == ["trial-0", "trial-1", "trial-2"]
    assert parent.info.run_id == tracker.parent_run_id
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[names.TAG_BACKEND] == "optuna"
    assert parent.data.tags[names.TAG_DIRECTIONS] == "maximize"
    assert parent.data.tags[names.TAG_OBJECTIVES] == "val_accuracy"

    done, pruned, failed = trials
    assert done.info.status == "FINISHED"
    assert done.data.tags[names.TAG_STATE] == "COMPLETE"
    assert done.data.metrics["val_accuracy"] == pytest.approx(study.trials[0].value)
    assert done.data.metrics["from_objective"] == 42.0
    assert done.data.params["act"] == study.trials[0].params["act"]
    assert done.data.tags["user_attr.note"] == "t0"
    assert done.data.metrics[names.METRIC_N_OUTPUT_EXCEPTIONS] == 0
    assert done.data.metrics[names.METRIC_DURATION] >= 0
    history = client.get_metric_history(done.info.run_id, names.METRIC_INTERMEDIATE)
    assert sorted(m.step for m in history) == [0, 1, 2]
    hp = hyperparameters(done)
    assert hp["values"] == study.trials[0].params  # typed: int stays int, float stays float
    assert isinstance(hp["values"]["units"], int)
    assert hp["distributions"]["units"]["attributes"]["log"] is True
    assert output_exceptions(done) == []

    assert pruned.info.status == "KILLED"
    assert pruned.data.tags[names.TAG_STATE] == "PRUNED"
    assert pruned.data.tags[names.TAG_PRUNED_STEP] == "2"
    assert "val_accuracy" not in pruned.data.metrics  # Optuna's misleading value is not logged

    assert failed.info.status == "FAILED"
    assert failed.data.tags[names.TAG_ERROR_CLASS] == "ValueError"
    assert "shape mismatch in trial 2" in _artifact(
        client, failed.info.run_id, names.ARTIFACT_ERROR
    )

    assert parent.data.tags[names.TAG_BEST_TRIAL_RUN_ID] == done.info.run_id
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(study.best_value)
    assert parent.data.metrics["n_trials_complete"] == 1
    assert parent.data.metrics["n_trials_pruned"] == 1
    assert parent.data.metrics["n_trials_fail"] == 1
    assert parent.data.metrics["n_trials_killed"] == 0
    assert parent.data.tags[names.TAG_BEST_PARAM_PREFIX + "act"] == study.best_params["act"]
    table = _artifact(client, parent.info.run_id, names.ARTIFACT_TRIALS).splitlines()
    assert table[0].startswith("number,trial_key,run_id,state,val_accuracy,")
    assert len(table) == 4


class _Boom(RuntimeError):
    pass


def test_uncaught_exception_propagates_unchanged_and_ends_runs_failed(
    client: MlflowClient, tracking_uri: str
) -> None:
    raised = _Boom("user bug")

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0, 1)
        if trial.number == 1:
            raise raised
        return 1.0

    study = optuna.create_study()
    with pytest.raises(_Boom) as info, MlflowStudyCallback(experiment_name="exp") as tracker:
        study.optimize(tracker.track(objective), n_trials=5, callbacks=[tracker])
    assert info.value is raised

    parent, trials = study_runs(client, "exp")
    assert parent.info.status == "FAILED"
    assert [t.info.status for t in trials] == ["FINISHED", "FAILED"]
    assert "user bug" in _artifact(client, trials[1].info.run_id, names.ARTIFACT_ERROR)
    assert trials[1].data.tags[names.TAG_ERROR_CLASS] == "_Boom"


def test_keyboard_interrupt_ends_trial_and_parent_killed(
    client: MlflowClient, tracking_uri: str
) -> None:
    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0, 1)
        if trial.number == 1:
            raise KeyboardInterrupt
        return 1.0

    study = optuna.create_study()
    with pytest.raises(KeyboardInterrupt), MlflowStudyCallback(experiment_name="exp") as tr:
        study.optimize(tr.track(objective), n_trials=5, callbacks=[tr])
    parent, trials = study_runs(client, "exp")
    assert parent.info.status == "KILLED"
    assert [t.info.status for t in trials] == ["FINISHED", "KILLED"]
    assert_no_running(client, "exp")


def test_multi_objective_gets_one_metric_per_objective(
    client: MlflowClient, tracking_uri: str
) -> None:
    def objective(trial: optuna.Trial) -> tuple[float, float]:
        x = trial.suggest_float("x", 0, 1)
        return x, 1 - x

    study = optuna.create_study(directions=["maximize", "minimize"])
    with MlflowStudyCallback(experiment_name="exp", metric_name=["acc", "latency"]) as tr:
        study.optimize(tr.track(objective), n_trials=4, callbacks=[tr])
    parent, trials = study_runs(client, "exp")
    assert len(trials) == 4
    for run, trial in zip(trials, study.trials, strict=True):
        assert run.data.metrics["acc"] == pytest.approx(trial.values[0])
        assert run.data.metrics["latency"] == pytest.approx(trial.values[1])
    assert parent.data.tags[names.TAG_DIRECTIONS] == "maximize,minimize"
    assert parent.data.tags["mlflow_hpo.pareto_trials"]


def test_wrong_number_of_metric_names_fails_before_any_run(
    client: MlflowClient, tracking_uri: str
) -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    tracker = MlflowStudyCallback(experiment_name="exp", metric_name=["only_one"])
    with pytest.raises(ConfigurationError, match="one per objective"):
        study.optimize(tracker.track(lambda t: (1.0, 2.0)), n_trials=1, callbacks=[tracker])
    assert client.get_experiment_by_name("exp") is None


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"log_models": "sometimes"}, "log_models"),
        ({"log_models": 0}, "log_models"),
        ({"tracking_uri": "./mlruns"}, "sqlite:///mlflow.db"),
        ({"experiment_name": ""}, "experiment_name"),
        ({"metric_name": ["a", "a"]}, "distinct"),
        ({"synchronous": "no"}, "synchronous"),
    ],
)
def test_bad_arguments_are_rejected_in_the_constructor(
    client: MlflowClient, kwargs: dict, fragment: str
) -> None:
    with pytest.raises(ConfigurationError, match="Received") as info:
        MlflowStudyCallback(**kwargs)
    assert fragment in str(info.value)
    assert client.search_experiments() == [client.get_experiment("0")] or all(
        e.name == "Default" for e in client.search_experiments()
    )


def test_n_jobs_threads_run_concurrently_and_stay_nested(
    client: MlflowClient, tracking_uri: str
) -> None:
    # Four trials must be inside the objective at once to pass the barrier: proof that
    # logging does not serialise trials (optuna-integration's callback holds a lock).
    barrier = threading.Barrier(4, timeout=60)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if trial.number < 4:
            barrier.wait()
        mlflow.log_param("seen_by_trial", trial.number)
        return x

    study = optuna.create_study()
    with MlflowStudyCallback(experiment_name="exp") as tracker:
        study.optimize(tracker.track(objective), n_trials=8, n_jobs=4, callbacks=[tracker])
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    _, trials = study_runs(client, "exp")
    assert len(trials) == 8
    for run in trials:
        assert run.data.params["seen_by_trial"] == run.data.params["trial_number"]
        assert run.info.status == "FINISHED"


def test_resumed_study_reuses_parent_and_logs_each_trial_once(
    client: MlflowClient, tracking_uri: str, tmp_path
) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"

    def objective(trial: optuna.Trial) -> float:
        return trial.suggest_float("x", 0, 1)

    for _ in range(2):  # a second session on the same storage, e.g. after a restart
        study = (
            optuna.load_study(study_name="resume", storage=storage)
            if _
            else optuna.create_study(study_name="resume", storage=storage)
        )
        with MlflowStudyCallback(experiment_name="exp") as tracker:
            study.optimize(tracker.track(objective), n_trials=3, callbacks=[tracker])
            # A retried callback for an already-logged trial must not add a run.
            tracker(study, study.trials[0])

    parent, trials = study_runs(client, "exp")
    assert [int(t.data.params["trial_number"]) for t in trials] == list(range(6))
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["n_trials_complete"] == 6


def test_long_values_are_truncated_and_many_params_are_batched(
    client: MlflowClient, tracking_uri: str
) -> None:
    long_choice = "c" * 7000

    def objective(trial: optuna.Trial) -> float:
        for i in range(150):
            trial.suggest_int(f"p{i:03d}", 0, 10)
        trial.suggest_categorical("long", [long_choice])
        trial.set_user_attr("blob", "u" * 9000)
        return 0.0

    study = optuna.create_study()
    with MlflowStudyCallback(experiment_name="exp") as tracker:
        study.optimize(tracker.track(objective), n_trials=1, callbacks=[tracker])
    _, (run,) = study_runs(client, "exp")
    assert len(run.data.params) == 150 + 2  # p000..p149, long, trial_number
    assert run.data.params["long"].endswith(TRUNCATION_MARKER)
    assert len(run.data.params["long"]) <= 6000
    assert run.data.tags["user_attr.blob"].endswith(TRUNCATION_MARKER)
    # Too big for a tag: the typed record is an artifact, with the full value.
    assert "mlflow_hpo.hyperparameters" not in run.data.tags
    hp = hyperparameters(run, client)
    assert hp["values"]["long"] == long_choice


class _Unsaveable(BaseEstimator):
    """An estimator that fits but cannot be saved (it holds a lock)."""

    def fit(self, x: object, y: object = None) -> _Unsaveable:
        self.lock_ = threading.Lock()
        return self


def test_logging_failure_warns_and_the_study_goes_on(
    client: MlflowClient, tracking_uri: str
) -> None:
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        mlflow_hpo.log_model(_Unsaveable().fit(None))  # its model cannot be written
        return x

    study = optuna.create_study()
    tracker = MlflowStudyCallback(experiment_name="exp", log_models="all")
    warning = pytest.warns(MlflowHpoWarning, match="saving the model of trial 0 failed")
    with warning as caught, tracker:
        study.optimize(tracker.track(objective), n_trials=3, callbacks=[tracker])
    # Each warning points at the user's own line (here: the optimize call in this file).
    assert {w.filename for w in caught} == {__file__}
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    parent, trials = study_runs(client, "exp")
    assert [t.info.status for t in trials] == ["FINISHED"] * 3
    assert all(names.TAG_MODEL_URI not in t.data.tags for t in trials)
    assert int(parent.data.tags[names.TAG_LOGGING_WARNINGS]) == tracker.warning_count == 3


def test_a_model_no_flavor_can_log_is_a_mistake_raised_at_once(tracking_uri: str) -> None:
    def objective(trial: optuna.Trial) -> float:
        mlflow_hpo.log_model(object())
        return 1.0

    study = optuna.create_study()
    tracker = MlflowStudyCallback(experiment_name="exp")
    error = pytest.raises(ConfigurationError, match=r"keras\.Model or a scikit-learn estimator")
    with error, tracker:
        study.optimize(tracker.track(objective), n_trials=1, callbacks=[tracker])


def test_unreachable_store_never_breaks_the_search(tmp_path, monkeypatch) -> None:
    from conftest import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    study = optuna.create_study()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with MlflowStudyCallback(tracking_uri=uri, close_timeout=1) as tracker:
            study.optimize(
                tracker.track(lambda t: t.suggest_float("x", 0, 1)),
                n_trials=3,
                callbacks=[tracker],
            )
    assert len(study.trials) == 3
    messages = [str(w.message) for w in caught if issubclass(w.category, MlflowHpoWarning)]
    assert any("could not be written" in m for m in messages)
    (waiting,) = [m for m in messages if "mlflow-hpo sync" in m]
    assert "3 trial run(s)" in waiting
    mlflow.set_tracking_uri(None)


def test_callback_only_and_track_only_both_log_everything(
    client: MlflowClient, tracking_uri: str
) -> None:
    study = optuna.create_study()
    with MlflowStudyCallback(experiment_name="cb") as tracker:
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2, callbacks=[tracker])
    study2 = optuna.create_study()
    with MlflowStudyCallback(experiment_name="tr") as tracker2:
        study2.optimize(tracker2.track(lambda t: t.suggest_float("x", 0, 1)), n_trials=2)
    for name in ("cb", "tr"):
        _, trials = study_runs(client, name)
        assert [t.info.status for t in trials] == ["FINISHED", "FINISHED"]


def test_without_with_the_summary_is_kept_current(client: MlflowClient, tracking_uri: str) -> None:
    study = optuna.create_study(direction="maximize")
    tracker = MlflowStudyCallback(experiment_name="exp")
    study.optimize(
        tracker.track(lambda t: t.suggest_float("x", 0, 1)), n_trials=3, callbacks=[tracker]
    )
    parent, trials = study_runs(client, "exp")
    assert parent.info.status == "RUNNING"  # ended at interpreter exit, or by close()
    best = max(trials, key=lambda r: r.data.metrics["value"])
    assert parent.data.tags[names.TAG_BEST_TRIAL_RUN_ID] == best.info.run_id
    tracker.close()
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


def test_trials_an_in_memory_study_ran_before_the_callback_joined_are_logged(
    client: MlflowClient, tracking_uri: str
) -> None:
    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    with MlflowStudyCallback(experiment_name="late") as tracker:
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1, callbacks=[tracker])
    parent, trials = study_runs(client, "late")
    assert [t.data.params[names.PARAM_TRIAL_NUMBER] for t in trials] == ["0", "1", "2"]
    assert parent.data.metrics["n_trials_complete"] == 3


def test_non_blocking_mode_writes_everything_by_close(
    client: MlflowClient, tracking_uri: str
) -> None:
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        trial.report(x, 0)
        return x

    study = optuna.create_study()
    with MlflowStudyCallback(experiment_name="exp", synchronous=False) as tracker:
        study.optimize(tracker.track(objective), n_trials=10, callbacks=[tracker])
    parent, trials = study_runs(client, "exp")
    assert len(trials) == 10
    assert all(t.info.status == "FINISHED" for t in trials)
    assert parent.data.metrics["n_trials_complete"] == 10


def test_objective_forms_partial_and_callable_class(
    client: MlflowClient, tracking_uri: str
) -> None:
    import functools

    def objective(trial: optuna.Trial, offset: float) -> float:
        return trial.suggest_float("x", 0, 1) + offset

    class Objective:
        def __call__(self, trial: optuna.Trial) -> float:
            return trial.suggest_float("x", 0, 1)

    study = optuna.create_study()
    with MlflowStudyCallback(experiment_name="exp") as tracker:
        study.optimize(
            tracker.track(functools.partial(objective, offset=10.0)),
            n_trials=2,
            callbacks=[tracker],
        )
        study.optimize(tracker.track(Objective()), n_trials=2, callbacks=[tracker])
    _, trials = study_runs(client, "exp")
    assert len(trials) == 4
    assert trials[0].data.metrics["value"] >= 10.0


def test_runs_go_to_the_given_tracking_uri(tmp_path, monkeypatch) -> None:
    uri = f"sqlite:///{tmp_path / 'explicit.db'}"
    study = optuna.create_study()
    with MlflowStudyCallback(experiment_name="exp", tracking_uri=uri) as tracker:
        study.optimize(
            tracker.track(lambda t: t.suggest_float("x", 0, 1)), n_trials=2, callbacks=[tracker]
        )
    _, trials = study_runs(MlflowClient(uri), "exp")
    assert len(trials) == 2
    assert all_runs(MlflowClient(uri), "exp")
    mlflow.set_tracking_uri(None)


def test_names_mlflow_rejects_are_cleaned_and_runs_still_end(
    client: MlflowClient, tracking_uri: str
) -> None:
    def objective(trial: optuna.Trial) -> float:
        return trial.suggest_float("lr(adam)", 1e-4, 1e-1, log=True)

    study = optuna.create_study()
    with MlflowStudyCallback(experiment_name="exp") as tracker:
        study.optimize(tracker.track(objective), n_trials=2, callbacks=[tracker])
    parent, trials = study_runs(client, "exp")
    assert all(t.info.status == "FINISHED" for t in trials)
    assert "lr_adam_" in trials[0].data.params
    hp = hyperparameters(trials[0])
    assert "lr(adam)" in hp["values"]  # the original name is kept where types are kept
    assert names.TAG_BEST_PARAM_PREFIX + "lr_adam_" in parent.data.tags


def test_study_nests_under_the_callers_run_even_with_worker_threads(
    client: MlflowClient, tracking_uri: str
) -> None:
    mlflow.set_experiment("pipeline")
    study = optuna.create_study()
    with mlflow.start_run(run_name="pipeline") as outer, MlflowStudyCallback() as tracker:
        study.optimize(
            tracker.track(lambda t: t.suggest_float("x", 0, 1)),
            n_trials=4,
            n_jobs=2,
            callbacks=[tracker],
        )
    parent, trials = study_runs(client, "pipeline")
    assert parent.data.tags["mlflow.parentRunId"] == outer.info.run_id
    assert len(trials) == 4


def test_resuming_under_another_experiment_name_keeps_children_with_their_parent(
    client: MlflowClient, tracking_uri: str, tmp_path
) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    for experiment in ("first", "second"):
        with MlflowStudyCallback(experiment_name=experiment) as tracker:
            study.optimize(
                tracker.track(lambda t: t.suggest_float("x", 0, 1)), n_trials=2, callbacks=[tracker]
            )
            tracker(study, study.trials[0])  # retried callback for a trial of session one
    _, trials = study_runs(client, "first")
    assert [int(t.data.params["trial_number"]) for t in trials] == [0, 1, 2, 3]


def test_sklearn_estimator_handed_over_is_logged_with_the_sklearn_flavor(
    client: MlflowClient, tracking_uri: str
) -> None:
    import mlflow.sklearn
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)

    def objective(trial: optuna.Trial) -> float:
        model = LogisticRegression(C=trial.suggest_float("C", 0.01, 1, log=True), max_iter=200)
        model.fit(x[:300], y[:300])
        mlflow_hpo.log_model(model)
        return float(model.score(x[300:400], y[300:400]))

    study = optuna.create_study(direction="maximize")
    with MlflowStudyCallback(experiment_name="exp", log_models="best") as tracker:
        study.optimize(tracker.track(objective), n_trials=2, callbacks=[tracker])
    parent, _ = study_runs(client, "exp")
    best = client.get_run(parent.data.tags[names.TAG_BEST_TRIAL_RUN_ID])
    model = mlflow.sklearn.load_model(best.data.tags[names.TAG_MODEL_URI])
    assert model.score(x[300:400], y[300:400]) == pytest.approx(study.best_value)


def test_non_blocking_trials_csv_has_every_run_id(client: MlflowClient, tracking_uri: str) -> None:
    study = optuna.create_study()
    with MlflowStudyCallback(experiment_name="exp", synchronous=False) as tracker:
        study.optimize(
            tracker.track(lambda t: t.suggest_float("x", 0, 1)), n_trials=6, callbacks=[tracker]
        )
    parent, trials = study_runs(client, "exp")
    rows = csv.DictReader(io.StringIO(_artifact(client, parent.info.run_id, names.ARTIFACT_TRIALS)))
    assert sorted(row["run_id"] for row in rows) == sorted(t.info.run_id for t in trials)


def test_the_studys_experiment_choice_lasts_until_it_closes(
    client: MlflowClient, tracking_uri: str
) -> None:
    def objective(trial: optuna.Trial) -> float:
        with mlflow.start_run(run_name=f"inner-{trial.number}", nested=True):
            mlflow.log_metric("inner", 1.0)
        return trial.suggest_float("x", 0, 1)

    with MlflowStudyCallback() as tracker:
        optuna.create_study(study_name="first").optimize(
            tracker.track(objective), n_trials=2, callbacks=[tracker]
        )
    runs = all_runs(client, "first")  # the objective's own runs land beside their trials
    assert sorted(r.info.run_name for r in runs if r.info.run_name.startswith("inner")) == [
        "inner-0",
        "inner-1",
    ]
    with mlflow.start_run() as after:  # the process's own choice again: the Default one
        pass
    assert after.info.experiment_id == "0"
    with MlflowStudyCallback() as tracker:  # not the first study's experiment
        optuna.create_study(study_name="second").optimize(
            tracker.track(objective), n_trials=1, callbacks=[tracker]
        )
    assert len(all_runs(client, "second")) == 3
    assert len(all_runs(client, "first")) == 5

"""The Hyperopt backend against a real SQLite MLflow store, asserted through MlflowClient."""

from __future__ import annotations

import csv
import io
import math
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import all_runs, assert_no_running, hyperparameters, study_runs
from hyperopt import STATUS_FAIL, STATUS_OK, fmin, hp, pyll, rand, space_eval, tpe
from hyperopt.exceptions import AllTrialsFailed
from hyperopt.fmin import fmin_pass_expr_memo_ctrl
from mlflow import MlflowClient
from mlflow.entities import Run

from mlflow_hpo import names
from mlflow_hpo.cli import cli
from mlflow_hpo.errors import ConfigurationError
from mlflow_hpo.hyperopt import MlflowTrials

QUIET: dict[str, Any] = {"show_progressbar": False}


def _artifact(client: MlflowClient, run_id: str, path: str) -> str:
    with open(client.download_artifacts(run_id, path)) as f:
        return f.read()


def _run_of(trials: list[Run], tid: int) -> Run:
    (run,) = [r for r in trials if r.data.tags[names.TAG_TRIAL_KEY] == str(tid)]
    return run


def _exactly_once(trials: list[Run], n: int) -> None:
    keys = sorted(int(r.data.tags[names.TAG_TRIAL_KEY]) for r in trials)
    assert keys == list(range(n)), keys


SPACE = {
    "optimizer": hp.choice("optimizer", ["sgd", "adam"]),
    "lr": hp.loguniform("lr", math.log(1e-4), math.log(1e-1)),
    "units": hp.uniformint("units", 8, 64),
    "model": hp.choice(
        "model",
        [{"kind": "linear"}, {"kind": "tree", "depth": hp.randint("depth", 2, 6)}],
    ),
}


def _objective(params: dict[str, Any]) -> dict[str, Any]:
    mlflow.log_metric("from_objective", 42.0)  # a fluent call lands on the trial's run
    loss = params["lr"] * params["units"] + (params["optimizer"] == "sgd")
    return {"loss": loss, "status": STATUS_OK, "train_time": 0.5, "note": "not a metric"}


def test_one_parent_nests_every_evaluation_with_real_param_values(
    client: MlflowClient, tracking_uri: str
) -> None:
    trials = MlflowTrials(experiment_name="exp", log_models="none")
    argmin = fmin(
        _objective,
        SPACE,
        algo=tpe.suggest,
        max_evals=6,
        trials=trials,
        rstate=np.random.default_rng(0),
        **QUIET,
    )

    parent, runs = study_runs(client, "exp")
    assert parent.info.run_id == trials.study_run_id
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[names.TAG_BACKEND] == "hyperopt"
    assert parent.data.tags[names.TAG_DIRECTIONS] == "minimize"
    assert parent.data.tags[names.TAG_OBJECTIVES] == "loss"
    assert [r.info.run_name for r in runs] == [f"trial-{i}" for i in range(6)]
    for doc in trials.trials:
        run = _run_of(runs, doc["tid"])
        real = space_eval(SPACE, {k: v[0] for k, v in doc["misc"]["vals"].items() if v})
        assert run.info.status == "FINISHED"
        assert run.data.tags[names.TAG_STATE] == "COMPLETE"
        assert run.data.tags[names.TAG_HYPEROPT_STATUS] == "ok"
        assert run.data.params["optimizer"] == real["optimizer"]  # the option, not its index
        assert run.data.params["units"] == str(real["units"])
        assert run.data.params["model.kind"] == real["model"]["kind"]  # a conditional leaf
        typed = hyperparameters(run)
        assert typed["backend"] == "hyperopt"
        assert typed["values"]["model"] == real["model"]
        assert isinstance(typed["values"]["units"], int)
        assert typed["distributions"]["optimizer"] == {
            "type": "choice",
            "options": ["sgd", "adam"],
        }
        assert run.data.metrics["loss"] == pytest.approx(doc["result"]["loss"])
        assert run.data.metrics["train_time"] == 0.5  # an extra numeric key of the result
        assert "note" not in run.data.metrics
        assert run.data.metrics["from_objective"] == 42.0

    # Still a Trials: its accessors and fmin's return value are Hyperopt's own.
    assert argmin == trials.argmin
    best = trials.best_trial
    assert parent.data.tags[names.TAG_BEST_TRIAL_RUN_ID] == _run_of(runs, best["tid"]).info.run_id
    assert parent.data.metrics["best_loss"] == pytest.approx(min(trials.losses()))
    assert parent.data.metrics["n_trials_complete"] == 6
    table = list(csv.DictReader(io.StringIO(_artifact(client, parent.info.run_id, "trials.csv"))))
    assert [row["number"] for row in table] == [str(i) for i in range(6)]

    shown = CliRunner().invoke(cli, ["show", parent.info.run_id, "--tracking-uri", tracking_uri])
    assert shown.exit_code == 0, shown.output
    assert "(hyperopt, FINISHED)" in shown.output
    assert shown.output.splitlines()[3].split()[0] == str(best["tid"])  # best first


def test_status_fail_keeps_the_reason_and_a_renamed_metric(
    client: MlflowClient, tracking_uri: str
) -> None:
    def objective(params: dict[str, float]) -> dict[str, Any]:
        if params["x"] > 0.5:
            return {"status": STATUS_FAIL, "reason": f"diverged at x={params['x']:.2f}"}
        return {"loss": params["x"], "status": STATUS_OK}

    trials = MlflowTrials(experiment_name="fail", metric_name="val_error")
    fmin(
        objective,
        {"x": hp.uniform("x", 0, 1)},
        algo=rand.suggest,
        max_evals=8,
        trials=trials,
        rstate=np.random.default_rng(3),
        **QUIET,
    )
    parent, runs = study_runs(client, "fail")
    failed = [d for d in trials.trials if d["result"]["status"] == STATUS_FAIL]
    assert failed and len(failed) < 8
    for doc in trials.trials:
        run = _run_of(runs, doc["tid"])
        if doc["result"]["status"] == STATUS_FAIL:
            assert run.info.status == "FAILED"
            assert run.data.tags[names.TAG_STATE] == "FAIL"
            assert run.data.tags[names.TAG_HYPEROPT_STATUS] == "fail"
            assert run.data.tags[names.TAG_FAIL_REASON] == doc["result"]["reason"]
            assert "val_error" not in run.data.metrics
        else:
            assert run.data.metrics["val_error"] == pytest.approx(doc["result"]["loss"])
    assert parent.data.metrics["n_trials_fail"] == len(failed)
    assert parent.data.metrics["best_val_error"] == pytest.approx(
        trials.best_trial["result"]["loss"]
    )


def test_a_search_where_every_evaluation_failed_still_finishes(
    client: MlflowClient, tracking_uri: str
) -> None:
    trials = MlflowTrials(experiment_name="all-failed")
    with pytest.raises(AllTrialsFailed):  # fmin has no best point to return
        fmin(lambda p: {"status": STATUS_FAIL}, {"x": hp.uniform("x", 0, 1)},
             algo=rand.suggest, max_evals=2, trials=trials, **QUIET)  # fmt: skip
    parent, runs = study_runs(client, "all-failed")
    assert parent.info.status == "FINISHED"  # the search itself ran to its end
    assert [r.info.status for r in runs] == ["FAILED", "FAILED"]
    assert names.TAG_FAIL_REASON not in runs[0].data.tags  # no reason was given


class _Boom(RuntimeError):
    pass


def test_an_exception_in_fn_propagates_unchanged_and_ends_runs_failed(
    client: MlflowClient, tracking_uri: str
) -> None:
    raised = _Boom("user bug")

    def objective(params: dict[str, float]) -> float:
        if len(trials.trials) == 3:  # the third evaluation
            raise raised
        return params["x"]

    trials = MlflowTrials(experiment_name="boom")
    with pytest.raises(_Boom) as info:
        fmin(objective, {"x": hp.uniform("x", 0, 1)}, algo=rand.suggest, max_evals=5,
             trials=trials, rstate=np.random.default_rng(0), **QUIET)  # fmt: skip
    assert info.value is raised
    parent, runs = study_runs(client, "boom")
    assert parent.info.status == "FAILED"
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED", "FAILED"]
    assert runs[2].data.tags[names.TAG_ERROR_CLASS] == "_Boom"
    assert "user bug" in _artifact(client, runs[2].info.run_id, names.ARTIFACT_ERROR)
    assert runs[2].data.params["x"]  # the params of a failed evaluation are kept
    assert_no_running(client, "boom")


def test_catch_eval_exceptions_goes_on_and_bad_results_are_errors(
    client: MlflowClient, tracking_uri: str
) -> None:
    calls = iter(range(100))  # serial: the evaluations' tids in order

    def objective(params: dict[str, float]) -> Any:
        tid = next(calls)
        if tid == 1:
            raise ValueError("shape mismatch")
        if tid == 3:
            return {"status": STATUS_OK}  # no loss: Hyperopt's InvalidLoss
        return params["x"]

    trials = MlflowTrials(experiment_name="caught")
    fmin(objective, {"x": hp.uniform("x", 0, 1)}, algo=rand.suggest, max_evals=4,
         trials=trials, catch_eval_exceptions=True, rstate=np.random.default_rng(0),
         **QUIET)  # fmt: skip
    # Four attempts; Hyperopt drops the two that raised from its trials (not from MLflow).
    assert len(trials) == 2
    parent, runs = study_runs(client, "caught")
    assert parent.info.status == "FINISHED"
    assert [r.info.status for r in runs] == ["FINISHED", "FAILED", "FINISHED", "FAILED"]
    assert runs[1].data.tags[names.TAG_ERROR_CLASS] == "ValueError"
    assert "shape mismatch" in _artifact(client, runs[1].info.run_id, names.ARTIFACT_ERROR)
    assert runs[3].data.tags[names.TAG_ERROR_CLASS] == "InvalidLoss"
    assert parent.data.metrics["n_trials_fail"] == 2
    assert parent.data.metrics["n_trials_complete"] == 2


def _quadratic(params: dict[str, float]) -> float:
    return (params["x"] - 0.3) ** 2


def _search(trials: MlflowTrials, max_evals: int, seed: int, **kwargs: Any) -> Any:
    return fmin(_quadratic, {"x": hp.uniform("x", 0, 1)}, algo=tpe.suggest,
                max_evals=max_evals, trials=trials, rstate=np.random.default_rng(seed),
                **QUIET, **kwargs)  # fmt: skip


def test_resume_after_pickling_continues_the_same_parent_without_duplicates(
    client: MlflowClient, tracking_uri: str, tmp_path: Path
) -> None:
    trials = MlflowTrials(experiment_name="resume")
    _search(trials, 3, seed=0)
    first = trials.study_run_id
    again = pickle.loads(pickle.dumps(trials))
    _search(again, 6, seed=1)
    _search(again, 6, seed=2)  # nothing left to run: no new trial, same parent
    parent, runs = study_runs(client, "resume")
    assert parent.info.run_id == first == again.study_run_id
    assert parent.info.status == "FINISHED"
    _exactly_once(runs, 6)
    assert parent.data.metrics["n_trials_complete"] == 6
    assert parent.data.metrics["best_loss"] == pytest.approx(min(again.losses()))

    # trials_save_file pickles the trials after every evaluation, mid-search.
    saved = tmp_path / "trials.pkl"
    trials = MlflowTrials(experiment_name="saved")
    _search(trials, 3, seed=0, trials_save_file=str(saved))
    loaded = pickle.loads(saved.read_bytes())
    assert len(loaded) == 3
    _search(loaded, 5, seed=1, trials_save_file=str(saved))
    parent, runs = study_runs(client, "saved")
    assert parent.info.run_id == trials.study_run_id
    _exactly_once(runs, 5)

    # fmin(trials=None, trials_save_file=...) loads the file but bypasses MlflowTrials.fmin
    # (Hyperopt 0.3.0): those evaluations are written from the trials the next time.
    fmin(_quadratic, {"x": hp.uniform("x", 0, 1)}, algo=tpe.suggest, max_evals=7,
         trials=None, trials_save_file=str(saved), rstate=np.random.default_rng(2),
         **QUIET)  # fmt: skip
    _search(pickle.loads(saved.read_bytes()), 8, seed=3)
    parent, runs = study_runs(client, "saved")
    _exactly_once(runs, 8)
    assert _run_of(runs, 5).data.tags[names.TAG_END_REASON].startswith("written from")
    assert parent.data.metrics["n_trials_complete"] == 8
    assert_no_running(client, "saved")


def test_ctrl_c_ends_killed_and_resuming_retires_the_interrupted_evaluation(
    client: MlflowClient, tracking_uri: str
) -> None:
    def interrupted(params: dict[str, float]) -> float:
        if len(trials.trials) == 2:
            raise KeyboardInterrupt
        return params["x"]

    trials = MlflowTrials(experiment_name="ctrl-c")
    with pytest.raises(KeyboardInterrupt):
        fmin(interrupted, {"x": hp.uniform("x", 0, 1)}, algo=rand.suggest, max_evals=4,
             trials=trials, rstate=np.random.default_rng(0), **QUIET)  # fmt: skip
    parent, runs = study_runs(client, "ctrl-c")
    assert parent.info.status == "KILLED"
    assert [r.data.tags[names.TAG_STATE] for r in runs] == ["COMPLETE", "KILLED"]

    fmin(_quadratic, {"x": hp.uniform("x", 0, 1)}, algo=rand.suggest, max_evals=4,
         trials=trials, rstate=np.random.default_rng(1), **QUIET)  # fmt: skip
    assert len(trials) == 4 and trials.tids == [0, 2, 3, 4]  # the zombie no longer counts
    parent, runs = study_runs(client, "ctrl-c")
    assert parent.info.status == "FINISHED"
    _exactly_once(runs, 5)
    assert _run_of(runs, 1).info.status == "KILLED"
    assert parent.data.metrics["n_trials_killed"] == 1
    assert parent.data.metrics["n_trials_complete"] == 4
    assert_no_running(client, "ctrl-c")


def test_non_dict_spaces_and_an_expr_memo_ctrl_objective(
    client: MlflowClient, tracking_uri: str
) -> None:
    @fmin_pass_expr_memo_ctrl
    def objective(expr: Any, memo: Any, ctrl: Any) -> float:
        a, b = pyll.rec_eval(expr, memo=memo)
        mlflow.log_metric("tid", ctrl.current_trial["tid"])
        return float(a) + b

    trials = MlflowTrials(experiment_name="tuple")
    fmin(objective, (hp.choice("a", [1, 10]), hp.uniform("b", 0, 1)), algo=rand.suggest,
         max_evals=3, trials=trials, rstate=np.random.default_rng(0), **QUIET)  # fmt: skip
    _, runs = study_runs(client, "tuple")
    for doc, run in zip(trials.trials, runs, strict=True):
        a, b = space_eval((hp.choice("a", [1, 10]), hp.uniform("b", 0, 1)),
                          {k: v[0] for k, v in doc["misc"]["vals"].items()})  # fmt: skip
        assert hyperparameters(run)["values"] == {"a": a, "b": pytest.approx(b)}
        assert run.data.metrics["tid"] == doc["tid"]


WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    from hyperopt import fmin, hp, rand
    from mlflow_hpo.hyperopt import MlflowTrials

    trials = MlflowTrials(experiment_name="shared", tracking_uri=sys.argv[1], verbose=0)
    fmin(lambda p: (p["x"] - 0.5) ** 2, {"x": hp.uniform("x", 0, 1)}, algo=rand.suggest,
         max_evals=6, trials=trials, rstate=np.random.default_rng(int(sys.argv[2])),
         show_progressbar=False)
    print(trials.study_run_id, flush=True)
""")


def test_two_processes_share_one_experiment_safely(client: MlflowClient, tracking_uri: str) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, tracking_uri, str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (0, 1)
    ]
    parent_ids = set()
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        assert "MlflowHpoWarning" not in err, err[-3000:]
        parent_ids.add(out.split()[-1])
    runs = all_runs(client, "shared")
    parents = [r for r in runs if r.data.tags[names.TAG_ROLE] == names.ROLE_STUDY]
    assert {p.info.run_id for p in parents} == parent_ids and len(parent_ids) == 2
    for study in parents:
        assert study.info.status == "FINISHED"
        assert study.data.metrics["n_trials_complete"] == 6
        children = [
            r for r in runs if r.data.tags.get(names.TAG_PARENT_RUN_ID) == study.info.run_id
        ]
        _exactly_once(children, 6)
    assert len(runs) == 14
    assert_no_running(client, "shared")


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"metric_name": ""}, "metric_name"),
        ({"log_models": "sometimes"}, "log_models"),
        ({"experiment_name": ""}, "experiment_name"),
        ({"tracking_uri": "mlruns"}, "tracking_uri"),
        ({"study_name": 3}, "study_name"),
        ({"synchronous": "yes"}, "synchronous"),
        ({"colour": "red"}, "option"),
    ],
)
def test_bad_arguments_raise_before_any_run(
    client: MlflowClient, tracking_uri: str, kwargs: dict[str, Any], argument: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        MlflowTrials(**kwargs)
    assert info.value.argument == argument
    assert [e.name for e in client.search_experiments()] == ["Default"]


def test_credentials_in_the_tracking_uri_stay_out_of_pickles(tracking_uri: str) -> None:
    trials = MlflowTrials(tracking_uri="http://alice:s3cr3t-pw@127.0.0.1:5000")
    blob = pickle.dumps(trials)
    assert b"s3cr3t-pw" not in blob
    same_process = pickle.loads(blob)
    assert same_process.study_key == trials.study_key
    assert same_process._study_tracker.options.tracking_uri == (
        "http://alice:s3cr3t-pw@127.0.0.1:5000"
    )


# ----------------------------------------------------------------------------- Keras
@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import keras  # noqa: F401  (imported before the search, as a module-level import would be)
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images[:480] / 16.0).astype("float32")[..., None]
    y = data.target[:480]
    return x[:360], y[:360], x[360:], y[360:]


def _build(params: dict[str, Any]) -> Any:
    import keras

    from mlflow_hpo.layers import LayerGuard

    model = keras.Sequential([keras.Input((8, 8, 1))])
    guard = LayerGuard(model)
    for i in range(1, params["n_blocks"] + 1):
        guard.add(keras.layers.Conv2D(params["filters"], 3, activation="relu"), name=f"Conv_L{i}")
        guard.add(keras.layers.MaxPooling2D(2), name=f"Pool_L{i}")
    model.add(keras.layers.Flatten())
    model.add(keras.layers.Dense(10, activation="softmax"))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _keras_objective(build: Any, data: tuple[np.ndarray, ...]) -> Any:
    x, y, x_val, y_val = data

    def objective(params: dict[str, Any]) -> dict[str, Any]:
        model = build(params)
        model.fit(x, y, validation_data=(x_val, y_val), epochs=1, batch_size=64, verbose=0)
        accuracy = float(model.evaluate(x_val, y_val, verbose=0)[1])
        return {"loss": 1.0 - accuracy, "status": STATUS_OK, "holdout_accuracy": accuracy}

    return objective


def _accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))


@pytest.mark.slow
def test_keras_fit_is_captured_and_the_best_model_promoted_and_rebuilt(
    client: MlflowClient, tracking_uri: str, digits
) -> None:
    import mlflow_hpo
    from mlflow_hpo.registry import load_best, promote_best

    space = {"n_blocks": hp.choice("n_blocks", [1, 2]), "filters": hp.choice("filters", [4, 8])}
    trials = MlflowTrials(experiment_name="keras", log_models="all")
    fmin(_keras_objective(_build, digits), space, algo=rand.suggest, max_evals=3,
         trials=trials, rstate=np.random.default_rng(1), **QUIET)  # fmt: skip
    _, runs = study_runs(client, "keras")
    for doc, run in zip(trials.trials, runs, strict=True):
        skipped = ["Pool_L2"] if run.data.params["n_blocks"] == "2" else []  # 8 -> 6 -> 3 -> 1
        assert hyperparameters(run)["values"]["n_blocks"] in (1, 2)
        assert run.data.tags[names.TAG_OUTPUT_EXCEPTIONS] == str(skipped).replace("'", '"')
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0]
        assert "epoch_loss" in run.data.metrics  # Keras's loss, apart from the objective
        assert run.data.metrics["loss"] == pytest.approx(doc["result"]["loss"])
        assert names.TAG_MODEL_URI in run.data.tags

    done = promote_best(trials.study_run_id, "hyperopt-digits")
    best_run = client.get_run(done.trial_run_id)
    assert best_run.data.tags[names.TAG_TRIAL_KEY] == str(trials.best_trial["tid"])
    x_val, y_val = digits[2], digits[3]
    expected = best_run.data.metrics["holdout_accuracy"]
    assert _accuracy(load_best("hyperopt-digits"), x_val, y_val) == pytest.approx(expected)
    rebuilt = mlflow_hpo.rebuild(_build, best_run.info.run_id)  # build(params) gets the dict
    assert _accuracy(rebuilt, x_val, y_val) == pytest.approx(expected)


@pytest.mark.slow
def test_a_space_builder_searches_with_hyperopt_and_rebuilds(
    client: MlflowClient, tracking_uri: str, digits
) -> None:
    import mlflow_hpo
    from mlflow_hpo import space

    @space.builder
    def build(hp_: space.HP) -> Any:
        params = {"n_blocks": hp_.int("n_blocks", 1, 2), "filters": hp_.choice("filters", [4, 8])}
        hp_.boolean("unused_flag")
        return _build(params)

    trials = MlflowTrials(experiment_name="space")
    fmin(_keras_objective(build, digits), build.hyperopt_space(), algo=tpe.suggest,
         max_evals=2, trials=trials, rstate=np.random.default_rng(0), **QUIET)  # fmt: skip
    _, runs = study_runs(client, "space")
    values = hyperparameters(runs[0])["values"]
    assert set(values) == {"n_blocks", "filters", "unused_flag"}
    assert isinstance(values["n_blocks"], int) and isinstance(values["unused_flag"], bool)
    model = mlflow_hpo.rebuild(build, runs[0].info.run_id)
    x_val, y_val = digits[2], digits[3]
    expected = runs[0].data.metrics["holdout_accuracy"]
    assert _accuracy(model, x_val, y_val) == pytest.approx(expected)

"""``track_search``: every candidate of every scikit-learn search CV, on a real store."""

from __future__ import annotations

import io
from pathlib import Path

import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from conftest import all_runs, assert_no_running, study_runs
from mlflow import MlflowClient
from sklearn.datasets import load_digits
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import (
    GridSearchCV,
    HalvingGridSearchCV,
    HalvingRandomSearchCV,
    RandomizedSearchCV,
)
from sklearn.tree import DecisionTreeClassifier

from mlflow_hpo import names
from mlflow_hpo.errors import ConfigurationError
from mlflow_hpo.sklearn import track_search


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return x[:300] / 16.0, y[:300]


def _cv_results(client: MlflowClient, parent_id: str) -> pd.DataFrame:
    path = client.download_artifacts(parent_id, names.ARTIFACT_CV_RESULTS)
    with open(path) as f:
        return pd.read_csv(io.StringIO(f.read()))


@pytest.mark.parametrize(
    "make",
    [
        lambda: GridSearchCV(
            DecisionTreeClassifier(random_state=0),
            {"max_depth": [2, 4, 8], "min_samples_leaf": [1, 5]},
            cv=3,
        ),
        lambda: RandomizedSearchCV(
            DecisionTreeClassifier(random_state=0),
            {"max_depth": list(range(2, 12))},
            n_iter=4,
            cv=3,
            random_state=0,
            n_jobs=2,
        ),
        lambda: HalvingGridSearchCV(
            DecisionTreeClassifier(random_state=0),
            {"max_depth": [2, 4, 6, 8, 10, 12]},
            cv=3,
            factor=2,
            random_state=0,
        ),
        lambda: HalvingRandomSearchCV(
            DecisionTreeClassifier(random_state=0),
            {"max_depth": list(range(2, 14))},
            cv=3,
            factor=3,
            random_state=0,
        ),
    ],
    ids=["grid", "randomized-n_jobs2", "halving-grid", "halving-random"],
)
def test_one_child_per_candidate_with_fold_histories(
    client: MlflowClient, tracking_uri: str, data, make
) -> None:
    x, y = data
    search = track_search(make(), experiment_name="search")
    assert search.fit(x, y) is search
    parent, trials = study_runs(client, "search")
    results = search.cv_results_
    assert len(trials) == len(results["params"])  # exactly one child per row of cv_results_
    assert parent.data.tags[names.TAG_BACKEND] == "sklearn"
    assert parent.info.status == "FINISHED"
    for run in trials:
        i = int(run.data.params["trial_number"])
        assert run.info.status == "FINISHED"
        folds = client.get_metric_history(run.info.run_id, "test_score")
        assert [m.step for m in sorted(folds, key=lambda m: m.step)] == list(
            range(search.n_splits_)
        )
        assert run.data.metrics["score"] == pytest.approx(results["mean_test_score"][i])
        assert run.data.tags["cv.rank_test_score"] == str(results["rank_test_score"][i])
        fit_times = client.get_metric_history(run.info.run_id, "fit_time")
        assert len(fit_times) == search.n_splits_ and all(m.value > 0 for m in fit_times)
        if "iter" in results:
            assert run.data.params["iter"] == str(results["iter"][i])
            assert run.data.params["n_resources"] == str(results["n_resources"][i])
    best = client.get_run(parent.data.tags[names.TAG_BEST_TRIAL_RUN_ID])
    assert int(best.data.params["trial_number"]) == search.best_index_
    model = mlflow.sklearn.load_model(best.data.tags[names.TAG_MODEL_URI])
    assert (model.predict(x) == search.best_estimator_.predict(x)).all()
    table = _cv_results(client, parent.info.run_id)
    assert sorted(table["run_id"]) == sorted(t.info.run_id for t in trials)
    assert parent.data.metrics["best_score"] == pytest.approx(search.best_score_)


def test_multi_metric_scoring_and_failed_candidates(
    client: MlflowClient, tracking_uri: str, data
) -> None:
    x, y = data
    search = track_search(
        GridSearchCV(
            LogisticRegression(max_iter=200),
            {"C": [0.1, 1.0, -1.0]},
            cv=3,
            scoring=["accuracy", "f1_macro"],
            refit="f1_macro",
            error_score=np.nan,
        ),
        experiment_name="multi",
    )
    with pytest.warns(UserWarning):  # scikit-learn warns about the failed fits
        search.fit(x, y)
    parent, trials = study_runs(client, "multi")
    assert parent.data.tags[names.TAG_OBJECTIVES] == "f1_macro"
    by_c = {float(run.data.params["C"]): run for run in trials}
    failed = by_c[-1.0]
    assert failed.info.status == "FAILED"
    error = client.download_artifacts(failed.info.run_id, names.ARTIFACT_ERROR)
    assert "C" in Path(error).read_text()
    assert failed.data.tags[names.TAG_ERROR_CLASS]
    ok = by_c[1.0]
    assert ok.info.status == "FINISHED"
    for metric in ("accuracy", "f1_macro"):
        assert len(client.get_metric_history(ok.info.run_id, f"test_{metric}")) == 3
    assert parent.data.metrics["n_trials_fail"] == 1
    assert_no_running(client, "multi")


def test_max_child_runs_keeps_the_best_and_says_how_many_were_left_out(
    client: MlflowClient, tracking_uri: str, data
) -> None:
    x, y = data
    search = track_search(
        GridSearchCV(
            DecisionTreeClassifier(random_state=0), {"max_depth": [1, 2, 3, 4, 5, 6]}, cv=3
        ),
        experiment_name="cap",
        max_child_runs=2,
    )
    search.fit(x, y)
    parent, trials = study_runs(client, "cap")
    assert len(trials) == 2
    assert parent.data.tags[names.TAG_LEFT_OUT] == "4"
    assert search.best_index_ in {int(t.data.params["trial_number"]) for t in trials}


def test_bad_arguments_fail_before_any_run(client: MlflowClient, tracking_uri: str) -> None:
    with pytest.raises(ConfigurationError, match="search CV"):
        track_search(DecisionTreeClassifier(), experiment_name="search")
    with pytest.raises(ConfigurationError, match="max_child_runs"):
        track_search(
            GridSearchCV(DecisionTreeClassifier(), {"max_depth": [1]}),
            max_child_runs=0,
            experiment_name="search",
        )
    with pytest.raises(ConfigurationError, match="log_models"):
        track_search(
            GridSearchCV(DecisionTreeClassifier(), {"max_depth": [1]}),
            log_models="most",
            experiment_name="search",
        )
    # Had any of them gone through, it would have made this experiment.
    assert client.get_experiment_by_name("search") is None


def test_a_failing_fit_propagates_and_ends_the_parent_failed(
    client: MlflowClient, tracking_uri: str, data
) -> None:
    x, y = data
    search = track_search(
        GridSearchCV(DecisionTreeClassifier(), {"max_depth": [1, 2]}, cv=3),
        experiment_name="broken",
    )
    with pytest.raises(ValueError):
        search.fit(x, y[:10])  # inconsistent lengths: scikit-learn's own error, unchanged
    runs = client.search_runs([client.get_experiment_by_name("broken").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_a_fitted_tracked_search_pickles_as_the_plain_search(
    client: MlflowClient, tracking_uri: str, data
) -> None:
    import pickle

    x, y = data
    search = track_search(
        GridSearchCV(DecisionTreeClassifier(random_state=0), {"max_depth": [2, 4]}, cv=2),
        experiment_name="pickled",
    )
    search.fit(x, y)
    loaded = pickle.loads(pickle.dumps(search))
    assert type(loaded) is GridSearchCV and "fit" not in vars(loaded)
    assert (loaded.predict(x) == search.predict(x)).all()
    loaded.fit(x, y)  # the plain search: fits, logs nothing
    assert len(all_runs(client, "pickled")) == 3  # one parent, two candidates: the first fit

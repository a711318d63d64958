"""``MlflowScorer``: every fold recorded live, in the search's process or in loky workers."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_no_running, study_runs
from mlflow import MlflowClient
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import load_digits
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, HalvingGridSearchCV, RandomizedSearchCV
from sklearn.tree import DecisionTreeClassifier

from mlflow_hpo import names
from mlflow_hpo.errors import ConfigurationError, MlflowHpoWarning
from mlflow_hpo.sklearn import MlflowScorer, track_search


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return x[:300] / 16.0, y[:300]


def _history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    points = client.get_metric_history(run_id, key)
    steps = [m.step for m in points]
    assert len(steps) == len(set(steps)), f"{key} has a fold logged twice: {steps}"
    return {m.step: m.value for m in points}


def test_multi_metric_folds_from_loky_workers_match_cv_results(
    client: MlflowClient, tracking_uri: str, data
) -> None:
    x, y = data
    search = track_search(
        RandomizedSearchCV(
            LogisticRegression(max_iter=300),
            {"C": [0.01, 0.1, 1.0, 10.0]},
            n_iter=4,
            cv=3,
            n_jobs=2,
            random_state=0,
            scoring=MlflowScorer(["accuracy", "f1_macro"]),
            refit="accuracy",
            return_train_score=True,
        ),
        experiment_name="scorer",
    )
    search.fit(x, y)
    parent, trials = study_runs(client, "scorer")
    results = search.cv_results_
    assert len(trials) == 4
    assert parent.data.tags[names.TAG_OBJECTIVES] == "accuracy"
    for run in trials:
        i = int(run.data.params["trial_number"])
        assert run.data.params["C"] == str(results["params"][i]["C"])
        assert run.info.status == "FINISHED"
        for metric in ("accuracy", "f1_macro"):
            for part in ("test", "train"):
                folds = _history(client, run.info.run_id, f"{part}_{metric}")
                assert folds == pytest.approx(
                    {s: results[f"split{s}_{part}_{metric}"][i] for s in range(3)}
                )
        fit_times = _history(client, run.info.run_id, "fit_time")
        score_times = _history(client, run.info.run_id, "score_time")
        assert sorted(fit_times) == sorted(score_times) == [0, 1, 2]
        assert all(v > 0 for v in fit_times.values())
        # Real per-candidate start and end, not the search's start for every child.
        assert run.info.start_time <= run.info.end_time
        assert run.data.metrics["accuracy"] == pytest.approx(results["mean_test_accuracy"][i])
    starts = {run.info.start_time for run in trials}
    assert len(starts) > 1
    best = client.get_run(parent.data.tags[names.TAG_BEST_TRIAL_RUN_ID])
    assert int(best.data.params["trial_number"]) == search.best_index_
    assert names.TAG_MODEL_URI in best.data.tags
    # After fit the scorer is a plain scorer again.
    assert search.score(x, y) == pytest.approx(search.best_estimator_.score(x, y))
    assert_no_running(client, "scorer")


def test_halving_search_one_child_per_candidate_and_iteration(
    client: MlflowClient, tracking_uri: str, data
) -> None:
    x, y = data
    search = track_search(
        HalvingGridSearchCV(
            DecisionTreeClassifier(random_state=0),
            {"max_depth": [2, 4, 6, 8]},
            cv=3,
            factor=2,
            min_resources=60,
            n_jobs=2,
            scoring=MlflowScorer("accuracy"),
        ),
        experiment_name="halving",
    )
    search.fit(x, y)
    _, trials = study_runs(client, "halving")
    results = search.cv_results_
    assert len(trials) == len(results["params"]) > 4
    for run in trials:
        i = int(run.data.params["trial_number"])
        assert run.data.params["iter"] == str(results["iter"][i])
        assert run.data.params["max_depth"] == str(results["params"][i]["max_depth"])
        folds = _history(client, run.info.run_id, "test_score")
        assert folds == pytest.approx({s: results[f"split{s}_test_score"][i] for s in range(3)})


class _StopsAtFit(BaseEstimator, ClassifierMixin):
    """A real classifier whose n-th fit in this process is interrupted (Ctrl-C)."""

    fits = 0

    def __init__(self, depth: int = 1, stop_at: int = 0) -> None:
        self.depth = depth
        self.stop_at = stop_at

    def fit(self, x: np.ndarray, y: np.ndarray) -> _StopsAtFit:
        type(self).fits += 1
        if type(self).fits == self.stop_at:
            raise KeyboardInterrupt
        self.tree_ = DecisionTreeClassifier(max_depth=self.depth, random_state=0).fit(x, y)
        self.classes_ = self.tree_.classes_
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.tree_.predict(x)


def test_interrupted_search_keeps_every_scored_fold(
    client: MlflowClient, tracking_uri: str, data
) -> None:
    x, y = data
    _StopsAtFit.fits = 0
    search = track_search(
        GridSearchCV(
            _StopsAtFit(stop_at=8),  # candidates 0 and 1 complete, candidate 2 at fold 1
            {"depth": [1, 2, 3, 4]},
            cv=3,
            scoring=MlflowScorer("accuracy"),
        ),
        experiment_name="interrupted",
    )
    with pytest.raises(KeyboardInterrupt):
        search.fit(x, y)
    parent, trials = study_runs(client, "interrupted")
    assert parent.info.status == "KILLED"
    by_depth = {run.data.params["depth"]: run for run in trials}
    assert sorted(by_depth) == ["1", "2", "3"]
    for depth in ("1", "2"):
        run = by_depth[depth]
        assert run.info.status == "FINISHED"
        folds = _history(client, run.info.run_id, "test_score")
        assert sorted(folds) == [0, 1, 2]
        assert run.data.metrics["score"] == pytest.approx(np.mean(list(folds.values())))
    partial = by_depth["3"]
    assert partial.info.status == "KILLED"
    assert sorted(_history(client, partial.info.run_id, "test_score")) == [0]
    assert_no_running(client, "interrupted")


def test_untracked_search_scores_and_says_how_to_record(
    client: MlflowClient, tracking_uri: str, data
) -> None:
    x, y = data
    search = GridSearchCV(
        DecisionTreeClassifier(random_state=0),
        {"max_depth": [2, 3]},
        cv=2,
        scoring=MlflowScorer("accuracy"),
    )
    with pytest.warns(MlflowHpoWarning, match="track_search"):
        search.fit(x, y)
    plain = GridSearchCV(
        DecisionTreeClassifier(random_state=0), {"max_depth": [2, 3]}, cv=2, scoring="accuracy"
    ).fit(x, y)
    assert search.best_score_ == pytest.approx(plain.best_score_)
    assert client.search_experiments()[0].name == "Default"
    assert client.search_runs([client.search_experiments()[0].experiment_id]) == []


def test_bad_scoring_is_refused_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="scoring"):
        MlflowScorer(42)
    with pytest.raises(ConfigurationError, match="non-empty"):
        MlflowScorer([])

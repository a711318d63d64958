"""Which trial of a study is the best: the Models tab's ranking of its logged models, else
the store's ranking of its trial runs. Ties go to the earliest trial everywhere."""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.entities import Run

from mlflow_hpo._core import names, parent
from mlflow_hpo._core.study import study_objective
from mlflow_hpo._rebuild import RebuildError


def best_trial(client: MlflowClient, study: Run) -> tuple[Run, str, str, float]:
    """``(trial run, objective, direction, value)`` of the study's best FINISHED trial
    (one search, ranked by the store)."""
    objective, direction = study_objective(study)
    found = parent.top_trials(client, study, objective, direction, 1)
    if not found:
        raise RebuildError(
            f"Study run {study.info.run_id} has no FINISHED trial with a value of "
            f"{objective!r}, so there is no best trial to promote. Let the search complete "
            "at least one trial (failed, pruned and killed trials do not count)."
        )
    best = found[0]
    return best, objective, direction, float(best.data.metrics[objective])


SELECTED_BY_MODELS = "logged models, ranked by their objective metric"
SELECTED_BY_RUNS = "trial runs, ranked by their objective metric"


def best_model(client: MlflowClient, study: Run) -> tuple[Run, str, str, float, str] | None:
    """``(trial run, objective, direction, value, models:/ URI)`` of the study's best logged
    model, as the Models tab ranks them (``search_logged_models``), or ``None``."""
    objective, direction = study_objective(study)
    key = study.data.tags.get(names.TAG_STUDY_KEY)
    if not key:
        return None
    clause, exact = parent.equals(parent.tag(names.TAG_STUDY_KEY), key)
    found = client.search_logged_models(
        [study.info.experiment_id],
        filter_string=clause,
        order_by=[{"field_name": f"metrics.{objective}", "ascending": direction != "maximize"}],
        max_results=50,
    )
    best: tuple[Run, str, str, float, str] | None = None
    for model in found:
        value = next((m.value for m in model.metrics or [] if m.key == objective), None)
        ready = str(getattr(model.status, "value", model.status)) == "READY"
        if value is None or model.source_run_id is None or not ready:
            continue
        if not exact and model.tags.get(names.TAG_STUDY_KEY) != key:
            continue
        if best is not None and value != best[3]:
            break  # past the best value: the tie (if any) is settled
        trial = client.get_run(model.source_run_id)
        if trial.info.status != "FINISHED" or trial.info.lifecycle_stage != "active":
            continue
        # Ties go to the earliest trial, as everywhere else (the store orders ties anyhow).
        if best is None or (trial.info.start_time or 0) < (best[0].info.start_time or 0):
            best = (trial, objective, direction, float(value), f"models:/{model.model_id}")
    return best

"""Find or create the one parent run of a study, even with several worker processes.

A study is identified by a *study key* derived from where the backend keeps its state
(an Optuna storage URL and study id, a Keras Tuner project directory, ...). Workers that
start together may each create a candidate parent; they then all pick the oldest candidate
(start time, then run id) and the others delete their own. Every worker makes the same
choice, so exactly one parent survives however many workers race. A backend that can store
the chosen id next to its own state (an Optuna study attribute) passes it back as
``known_parent_id`` on later joins, which skips the search.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import fluent

from mlflow_hpo import _batch, names

_PAGE = 1000
_SETTLE_S = 0.5


def study_key(backend: str, description: str) -> str:
    """A short, quote-free key for a study described by ``description``."""
    digest = hashlib.sha256(description.encode()).hexdigest()[:24]
    return f"{backend}-{digest}"


def resolve_experiment(client: MlflowClient, experiment_name: str | None, fallback: str) -> str:
    """Experiment id: the given name, else MLflow's active/env experiment, else ``fallback``."""
    name = experiment_name
    if name is None:
        env_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
        if env_id:
            return env_id
        if fluent._active_experiment_id is not None:
            return str(fluent._active_experiment_id)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or fallback
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name)
        except MlflowException:
            # Another worker created it between our lookup and our create.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise MlflowException(
            f"Experiment {name!r} is deleted. Restore it (mlflow experiments restore) or "
            "pass another experiment_name."
        )
    return str(experiment.experiment_id)


def _search(
    client: MlflowClient, experiment_id: str, filter_string: str, order_by: list[str] | None = None
) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string, ViewType.ACTIVE_ONLY, _PAGE, order_by, token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _candidates(client: MlflowClient, experiment_id: str, key: str) -> list[Run]:
    found = _search(
        client,
        experiment_id,
        f"tags.`{names.TAG_STUDY_KEY}` = '{key}' "
        f"and tags.`{names.TAG_ROLE}` = '{names.ROLE_STUDY}'",
    )
    return sorted(found, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def enclosing_run_id() -> str | None:
    """The user's own run to nest the study under: the active run in this thread, else the
    run ``mlflow run`` created for this process (``MLFLOW_RUN_ID``)."""
    active = fluent.active_run()
    if active is not None:
        return str(active.info.run_id)
    return os.environ.get("MLFLOW_RUN_ID") or None


def open_parent(
    client: MlflowClient,
    experiment_id: str,
    *,
    study_name: str,
    key: str | None,
    known_parent_id: str | None,
    tags: dict[str, Any],
    enclosing_run_id: str | None = None,
) -> tuple[Run, bool]:
    """Return ``(parent_run, reused)``; a reused parent is set back to RUNNING."""
    if known_parent_id:
        try:
            run = client.get_run(known_parent_id)
        except MlflowException:
            run = None
        if run is not None and run.info.lifecycle_stage == "active":
            _reopen(client, run)
            return run, True
    if key is not None:
        existing = _candidates(client, experiment_id, key)
        if existing:
            _reopen(client, existing[0])
            return existing[0], True
    all_tags = dict(tags)
    if enclosing_run_id:
        all_tags[names.TAG_PARENT_RUN_ID] = enclosing_run_id
    mine = client.create_run(experiment_id, tags=_batch.tag_dict(all_tags), run_name=study_name)
    if key is None:
        return mine, False
    winner = _candidates(client, experiment_id, key)[0]
    if winner.info.run_id == mine.info.run_id:
        # A rival that searched before we created may be creating right now, with the same
        # millisecond (and a smaller id) or a clock a little behind ours: look once more
        # after it has had time to appear. Every worker applies the same rule, so all of
        # them end up on the same, oldest candidate.
        time.sleep(_SETTLE_S)
        winner = _candidates(client, experiment_id, key)[0]
    if winner.info.run_id != mine.info.run_id:
        client.set_terminated(mine.info.run_id, "KILLED")
        client.delete_run(mine.info.run_id)
        _reopen(client, winner)
        return winner, True
    return mine, False


def _reopen(client: MlflowClient, run: Run) -> None:
    if run.info.status != "RUNNING":
        client.update_run(run.info.run_id, status="RUNNING")


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Run]:
    """All trial runs already nested under ``parent_run_id``."""
    return _search(
        client,
        experiment_id,
        f"tags.`{names.TAG_PARENT_RUN_ID}` = '{parent_run_id}' "
        f"and tags.`{names.TAG_ROLE}` = '{names.ROLE_TRIAL}'",
    )


def find_trial_run(
    client: MlflowClient, experiment_id: str, parent_run_id: str, trial_key: str
) -> str | None:
    """Run id of the trial ``trial_key`` under ``parent_run_id``, or ``None``."""
    found = client.search_runs(
        [experiment_id],
        f"tags.`{names.TAG_PARENT_RUN_ID}` = '{parent_run_id}' "
        f"and tags.`{names.TAG_TRIAL_KEY}` = '{trial_key}'",
        ViewType.ACTIVE_ONLY,
        1,
    )
    return found[0].info.run_id if found else None


def study_objective(study: Run) -> tuple[str, str]:
    """``(objective, direction)`` a study run records: its first objective and direction."""
    tags = study.data.tags
    objective = tags.get(names.TAG_OBJECTIVES, "value").split(",")[0]
    return objective, tags.get(names.TAG_DIRECTIONS, "minimize").split(",")[0]


def ranked_trials(trials: list[Run], objective: str, direction: str) -> list[Run]:
    """Best first by ``objective`` in ``direction``; trials without a value last; ties go
    to the earlier trial (as Optuna's ``best_trial`` does)."""
    sign = -1.0 if direction == "maximize" else 1.0

    def key(run: Run) -> tuple[bool, float, int]:
        value = run.data.metrics.get(objective)
        number = int(run.data.params.get(names.PARAM_TRIAL_NUMBER, 0))
        return (value is None, sign * value if value is not None else 0.0, number)

    return sorted(trials, key=key)

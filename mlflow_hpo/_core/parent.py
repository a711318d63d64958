"""Finding, creating and searching study runs, safely across processes.

A study is identified by a *study key* derived from where the backend keeps its state
(an Optuna storage URL and study id, a Keras Tuner project directory, ...), or made up for a
study that lives in one process only. Workers that start together may each create a
candidate parent; they then all pick the oldest candidate (start time, then run id) and the
others delete their own. Every worker makes the same choice, so exactly one parent survives
however many workers race. A backend that can store the chosen id next to its own state (an
Optuna study attribute) passes it back as ``known_parent_id`` on later joins.

Every user-provided value that goes into a search filter is quoted by :func:`equals`.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Iterator
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException

from mlflow_hpo._core import batch, compat, names
from mlflow_hpo.errors import ConfigurationError

PAGE = 1000
_SETTLE_S = 0.5


def study_key(backend: str, description: str) -> str:
    """A short, quote-free key for a study described by ``description``."""
    digest = hashlib.sha256(description.encode()).hexdigest()[:24]
    return f"{backend}-{digest}"


def equals(field: str, value: str) -> tuple[str, bool]:
    """``(filter clause, exact)`` for ``field = value``, whatever quotes ``value`` holds.

    MLflow's filter strings have no escape character: a value is quoted with whichever quote
    it does not contain. A value with both kinds is matched with ``LIKE`` (each quote a
    one-character wildcard) and ``exact`` is ``False``: the caller keeps only the runs whose
    value really is ``value``.
    """
    if "'" not in value:
        return f"{field} = '{value}'", True
    if '"' not in value:
        return f'{field} = "{value}"', True
    pattern = value.replace("'", "_").replace('"', "_")
    return f"{field} LIKE '{pattern}'", False


def tag(key: str) -> str:
    return f"tags.`{key}`"


def pages(
    client: MlflowClient,
    experiment_id: str,
    clauses: list[tuple[str, bool]],
    *,
    order_by: list[str] | None = None,
    max_results: int | None = None,
) -> Iterator[list[Run]]:
    """The runs matching all ``clauses``, a page at a time (a reader of a large study keeps
    what it needs of each page and lets the page go)."""
    token = None
    filter_string = " and ".join(clause for clause, _ in clauses)
    size = PAGE if max_results is None else min(PAGE, max_results)
    seen = 0
    while True:
        found = client.search_runs(
            [experiment_id], filter_string, ViewType.ACTIVE_ONLY, size, order_by, token
        )
        seen += len(found)
        yield list(found)
        token = found.token
        if not token or (max_results is not None and seen >= max_results):
            return


def search(
    client: MlflowClient,
    experiment_id: str,
    clauses: list[tuple[str, bool]],
    *,
    exact: dict[str, str] | None = None,
    order_by: list[str] | None = None,
    max_results: int | None = None,
) -> list[Run]:
    """Every run matching all ``clauses`` (paged); ``exact`` (tag -> value) filters the
    runs a ``LIKE`` clause let through."""
    runs = [
        run
        for page in pages(
            client, experiment_id, clauses, order_by=order_by, max_results=max_results
        )
        for run in page
    ]
    if exact:
        runs = [r for r in runs if all(r.data.tags.get(k) == v for k, v in exact.items())]
    return runs


def resolve_experiment(client: MlflowClient, experiment_name: str | None, fallback: str) -> str:
    """Experiment id: the given name, else MLflow's active/env experiment, else ``fallback``.

    Raises:
        ConfigurationError: The experiment is deleted.
    """
    name = experiment_name
    if name is None:
        env_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
        if env_id:
            return env_id
        active = compat.active_experiment_id()
        if active is not None:
            return active
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or fallback
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return str(client.create_experiment(name))
        except MlflowException:
            # Another worker created it between our lookup and our create.
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise ConfigurationError(
            "experiment_name",
            "an active experiment",
            f"{name!r} (deleted)",
            f"Restore it (mlflow experiments restore --experiment-id "
            f"{experiment.experiment_id}) or pass another experiment_name.",
        )
    return str(experiment.experiment_id)


def experiment_choice(
    experiment_id: str | None, enclosing: str | None, experiment_name: str | None, fallback: str
) -> dict[str, str]:
    """Where a study run goes, decided from this process's settings when the study opens
    (so that a replay by another process, ``mlflow-hpo sync``, writes to the same one):
    a given experiment, the enclosing run's, ``experiment_name``, MLflow's environment or
    active experiment, else one named after the study."""
    if experiment_id is not None:
        return {"experiment_id": experiment_id}
    if enclosing is not None:
        return {"enclosing_run_id": enclosing}
    if experiment_name is not None:
        return {"experiment_name": experiment_name}
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return {"experiment_id": os.environ["MLFLOW_EXPERIMENT_ID"]}
    active = compat.active_experiment_id()
    if active is not None:
        return {"experiment_id": active}
    return {"experiment_name": os.environ.get("MLFLOW_EXPERIMENT_NAME") or fallback}


def candidates(client: MlflowClient, experiment_id: str, key: str) -> list[Run]:
    found = search(
        client,
        experiment_id,
        [equals(tag(names.TAG_STUDY_KEY), key), equals(tag(names.TAG_ROLE), names.ROLE_STUDY)],
        exact={names.TAG_STUDY_KEY: key},
    )
    return sorted(found, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def open_parent(
    client: MlflowClient,
    experiment_id: str,
    *,
    study_name: str,
    key: str,
    known_parent_id: str | None,
    tags: dict[str, Any],
    shared: bool = True,
    settle: bool = True,
) -> tuple[Run, bool]:
    """Return ``(parent_run, reused)``; a reused parent is set back to RUNNING.

    ``shared=False``: a study only this process can know (an in-memory study, with a key
    made up for it): no rival can race for it, so the parent is simply created.
    ``settle=False``: a study that may be resumed but never by two processes at once: it is
    looked for, and created without waiting for rivals.
    """
    if not shared:
        made = client.create_run(experiment_id, tags=batch.tag_dict(tags), run_name=study_name)
        return made, False
    if known_parent_id:
        try:
            known: Run | None = client.get_run(known_parent_id)
        except MlflowException:
            known = None
        if known is not None and known.info.lifecycle_stage == "active":
            reopen(client, known)
            return known, True
    existing = candidates(client, experiment_id, key)
    if existing:
        reopen(client, existing[0])
        return existing[0], True
    mine = client.create_run(experiment_id, tags=batch.tag_dict(tags), run_name=study_name)
    winner = candidates(client, experiment_id, key)[0]
    if winner.info.run_id == mine.info.run_id and settle:
        # A rival that searched before we created may be creating right now, with the same
        # millisecond (and a smaller id) or a clock a little behind ours: look once more
        # after it has had time to appear. Every worker applies the same rule, so all of
        # them end up on the same, oldest candidate.
        time.sleep(_SETTLE_S)
        winner = candidates(client, experiment_id, key)[0]
    if winner.info.run_id != mine.info.run_id:
        client.set_terminated(mine.info.run_id, "KILLED")
        client.delete_run(mine.info.run_id)
        reopen(client, winner)
        return winner, True
    return mine, False


def reopen(client: MlflowClient, run: Run) -> None:
    if run.info.status != "RUNNING":
        client.update_run(run.info.run_id, status="RUNNING")


def _children(parent_run_id: str) -> list[tuple[str, bool]]:
    return [
        equals(tag(names.TAG_PARENT_RUN_ID), parent_run_id),
        equals(tag(names.TAG_ROLE), names.ROLE_TRIAL),
    ]


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Run]:
    """All trial runs nested under ``parent_run_id`` (paged)."""
    return search(client, experiment_id, _children(parent_run_id))


def child_pages(
    client: MlflowClient, experiment_id: str, parent_run_id: str
) -> Iterator[list[Run]]:
    """The trial runs nested under ``parent_run_id``, a page at a time."""
    return pages(client, experiment_id, _children(parent_run_id))


def find_trial_run(
    client: MlflowClient, experiment_id: str, study_key_: str, trial_key: str
) -> Run | None:
    """The oldest run of trial ``trial_key`` in study ``study_key_``, or ``None``."""
    found = search(
        client,
        experiment_id,
        [
            equals(tag(names.TAG_STUDY_KEY), study_key_),
            equals(tag(names.TAG_TRIAL_KEY), trial_key),
        ],
        exact={names.TAG_STUDY_KEY: study_key_, names.TAG_TRIAL_KEY: trial_key},
    )
    found.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))
    return found[0] if found else None


def enclosing_run_id() -> str | None:
    """The user's own run to nest the study under: the active run in this thread, else the
    run ``mlflow run`` created for this process (``MLFLOW_RUN_ID``)."""
    import mlflow

    active = mlflow.active_run()
    if active is not None:
        return str(active.info.run_id)
    return os.environ.get("MLFLOW_RUN_ID") or None


def top_trials(
    client: MlflowClient,
    study_run: Run,
    objective: str,
    direction: str,
    n: int,
    *,
    finished_only: bool = True,
) -> list[Run]:
    """The ``n`` best trial runs of a study, ranked by the store itself. Trials without a
    (finite) objective value are left out.

    Ordering by a metric costs the store time in proportion to the runs it orders (about 3 s
    for 10,000 runs on SQLite), so a large study is first narrowed to the trials at least as
    good as a bound that between ``n`` and ``8n`` of them reach (:func:`_bound`)."""
    from mlflow_hpo._core.study import ranked_runs

    maximize = direction == "maximize"
    metric = f"metrics.`{objective}`"
    clauses = [
        equals(tag(names.TAG_PARENT_RUN_ID), study_run.info.run_id),
        equals(tag(names.TAG_ROLE), names.ROLE_TRIAL),
        # A comparison also requires the metric (and leaves NaN out).
        (f"{metric} {'>' if maximize else '<'} {'-' if maximize else ''}1e308", True),
    ]
    if finished_only:
        clauses.append(("attributes.status = 'FINISHED'", True))
    experiment = study_run.info.experiment_id
    anchor = study_run.data.metrics.get(f"{names.METRIC_BEST_PREFIX}{objective}")
    bound = _bound(client, experiment, clauses, objective, maximize, max(n, 1), anchor)
    if bound is not None:
        clauses.append(bound)
    order = [f"{metric} {'DESC' if maximize else 'ASC'}", "attributes.start_time ASC"]
    found = search(client, experiment, clauses, order_by=order, max_results=n)
    return ranked_runs(found[:n], objective, direction)


_NARROW = 8  # a narrowed study keeps between n and _NARROW * n candidate trials


def _bound(
    client: MlflowClient,
    experiment_id: str,
    clauses: list[tuple[str, bool]],
    objective: str,
    maximize: bool,
    n: int,
    anchor: float | None,
) -> tuple[str, bool] | None:
    """A clause ``metrics.<objective> <= T`` (``>=`` when maximising) that at least ``n``
    of the runs matching ``clauses`` pass, and at most ``_NARROW * n`` where the values
    allow; ``None`` when the study is small enough to be ordered whole.

    Any value works as the anchor (the study's ``best_<objective>``, else the best of one
    page of trials), but the nearer the best, the fewer runs are read: the step from it
    grows until ``n`` runs pass, then is halved back towards ``_NARROW * n``. The ``n`` best
    runs always pass a bound that ``n`` runs pass, so the result is exact.
    """
    cap = _NARROW * n
    first = next(pages(client, experiment_id, clauses, max_results=cap + 1), [])
    if len(first) <= cap:
        return None
    values = [r.data.metrics[objective] for r in first if objective in r.data.metrics]
    if values:  # an anchor worse than a trial at hand (stale, say) would narrow nothing
        page_best = max(values) if maximize else min(values)
        if anchor is None or not math.isfinite(anchor) or (anchor < page_best) == maximize:
            anchor = page_best
    if anchor is None or not math.isfinite(anchor):
        return None
    sign, op = (-1.0, ">=") if maximize else (1.0, "<=")

    def clause(step: float) -> tuple[str, bool]:
        return f"metrics.`{objective}` {op} {anchor + sign * step!r}", True

    def passing(step: float) -> int:  # how many pass, counted up to cap + 1
        return len(search(client, experiment_id, [*clauses, clause(step)], max_results=cap + 1))

    low, high = 0.0, max(abs(anchor) * 1e-6, 1e-12)
    count = passing(high)
    for _ in range(64):  # x16 per step: from 1e-12 past 1e60
        if count >= n:
            break
        low, high = high, high * 16
        count = passing(high)
    else:
        return None
    for _ in range(24):
        if count <= cap:
            break
        middle = (low + high) / 2
        found = passing(middle)
        if found >= n:
            high, count = middle, found
        else:
            low = middle
    return clause(high)

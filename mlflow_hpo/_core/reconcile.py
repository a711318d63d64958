"""Reconciling a resumed study: what the store holds against what really happened.

When a study is opened again (a resumed study, another worker, ``mlflow-hpo sync``):

* a trial run still RUNNING whose writer is gone (its process was killed: it recorded its
  owner on the run) is ended KILLED, with ``mlflow_hpo.end_reason`` saying why;
* the tuning library's own record then decides the rest (``StudyTracker.reconcile``): a
  finished trial with no run yet, or whose run was ended that way, is written from it; a
  trial the library marked failed (Optuna's heartbeat) ends FAILED.

A trial whose writer is alive is left to it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from mlflow import MlflowClient
from mlflow.entities import Run

from mlflow_hpo._core import journal, names, parent
from mlflow_hpo._core.store import Store
from mlflow_hpo._core.study import TrialRecord
from mlflow_hpo._core.trial import TrialResult

REASON_OWNER_GONE = "its writer ({owner}) ended without ending the run"
REASON_FROM_LIBRARY = "written from the tuning library's record when the study was reopened"


@dataclass
class StoredRun:
    """What the store holds of a trial of a reopened study."""

    run_id: str
    status: str
    owner_gone: bool = False
    has_model: bool = False
    number: int = 0
    state: str | None = None  # mlflow_hpo.state
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


def on_resume(client: MlflowClient, store: Store, study_run: Run) -> dict[str, StoredRun]:
    """Every trial run of the study (one paged search); RUNNING runs of dead writers are
    ended KILLED. Returns trial key -> what the store holds."""
    stored: dict[str, StoredRun] = {}
    children = parent.child_runs(client, study_run.info.experiment_id, study_run.info.run_id)
    for child in sorted(children, key=lambda r: (r.info.start_time or 0, r.info.run_id)):
        key = child.data.tags.get(names.TAG_TRIAL_KEY)
        if key is None or key in stored:
            continue
        run_id = str(child.info.run_id)
        store.remember(f"trial:{key}", run_id)
        number = child.data.params.get(names.PARAM_TRIAL_NUMBER)
        entry = StoredRun(
            run_id,
            child.info.status,
            has_model=names.TAG_MODEL_URI in child.data.tags,
            number=int(float(number)) if number is not None else 0,
            state=child.data.tags.get(names.TAG_STATE),
            metrics=dict(child.data.metrics),
            params={k: v for k, v in child.data.params.items() if k != names.PARAM_TRIAL_NUMBER},
        )
        owner = child.data.tags.get(names.TAG_OWNER)
        if entry.status == "RUNNING" and owner and not journal.owner_alive(owner):
            end_orphan(client, run_id, owner)
            entry.status, entry.owner_gone, entry.state = "KILLED", True, names.STATE_KILLED
        elif entry.status == "KILLED" and _ended_as_orphan(child):
            entry.owner_gone = True  # ended by an earlier reading, not written from the library
        stored[key] = entry
    return stored


def _ended_as_orphan(run: Run) -> bool:
    reason = run.data.tags.get(names.TAG_END_REASON, "")
    prefix, _, suffix = REASON_OWNER_GONE.partition("{owner}")
    return reason.startswith(prefix) and reason.endswith(suffix)


def record_of(key: str, stored: StoredRun, objectives: list[str]) -> TrialRecord:
    """The study model's record of a trial an earlier session wrote."""
    values = [stored.metrics[o] for o in objectives if o in stored.metrics]
    complete = stored.state == names.STATE_COMPLETE and len(values) == len(objectives)
    return TrialRecord(
        key,
        stored.number,
        stored.state or names.STATE_KILLED,
        values if complete and not any(math.isnan(v) for v in values) else [],
        dict(stored.params),
    )


def end_orphan(client: MlflowClient, run_id: str, owner: str) -> None:
    """End a run its dead writer left RUNNING: KILLED, with the reason."""
    client.set_tag(run_id, names.TAG_END_REASON, REASON_OWNER_GONE.format(owner=owner))
    client.set_tag(run_id, names.TAG_STATE, names.STATE_KILLED)
    client.set_terminated(run_id, "KILLED")


def unwritten(
    finished: list[tuple[str, int, TrialResult]],
    stored: dict[str, StoredRun],
    *,
    running_here: set[str],
    jour: journal.Journal | None,
    me: str,
) -> Iterator[tuple[str, int, TrialResult]]:
    """The library's finished trials that the store does not hold faithfully yet."""
    for key, number, result in finished:
        if key in running_here:
            continue  # running in this process: it writes itself
        entry = stored.get(key)
        if entry is None:
            owner = jour.trial_owner(key) if jour is not None else None
            if owner and owner != me and journal.owner_alive(owner):
                continue  # a live worker is about to write it
            yield key, number, result
        elif entry.owner_gone or (entry.status == "RUNNING" and result.state == names.STATE_FAIL):
            yield key, number, result

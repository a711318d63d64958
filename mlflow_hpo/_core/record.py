"""Writing one finished trial to its run: metrics, params, tags, artifacts, model, status."""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any

from mlflow.entities import Run
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from mlflow_hpo import _batch, _models, names
from mlflow_hpo._trial import TrialResult, TrialRun

if TYPE_CHECKING:
    from mlflow_hpo._tracker import StudyTracker


def write_trial(
    tracker: StudyTracker, handle: TrialRun, result: TrialResult, keep_model: bool
) -> None:
    """Write a finished trial: one ``log_batch``, its artifacts, maybe its model, its end."""
    end_ms = result.end_ms or _batch.now_ms()
    start_ms = result.start_ms or handle.start_ms
    tags: dict[str, Any] = {
        names.TAG_STATE: result.state,
        names.TAG_DATETIME_START: _batch.iso(start_ms),
        names.TAG_DATETIME_COMPLETE: _batch.iso(end_ms),
        **result.tags,
    }
    if result.error_class:
        tags[names.TAG_ERROR_CLASS] = result.error_class
    if result.pruned_step is not None:
        tags[names.TAG_PRUNED_STEP] = result.pruned_step
    if not handle.created:
        handle.start_ms = start_ms
    # If nobody needed the run while the trial ran, it is created now with every tag at
    # once (a store transaction saved per trial); otherwise the tags go in the batch below.
    run = handle.run(tags)
    if handle.tags_written:
        tags = {}
    if handle.already_logged:
        return
    run_id = run.info.run_id
    status = names.RUN_STATUS_FOR_STATE.get(result.state, "FAILED")
    try:
        metrics = [_batch.metric(k, v, 0, end_ms) for k, v in result.values.items()]
        for name, points in result.histories.items():
            metrics.extend(_batch.history(name, points))
        n_skipped = len(handle.output_exceptions)
        metrics.append(_batch.metric(names.METRIC_N_OUTPUT_EXCEPTIONS, n_skipped, 0, end_ms))
        duration = (end_ms - start_ms) / 1000.0
        metrics.append(_batch.metric(names.METRIC_DURATION, duration, 0, end_ms))
        params = {
            names.PARAM_TRIAL_NUMBER: handle.number,
            **result.params,
            **result.extra_params,
        }
        tracker.client.log_batch(
            run_id, metrics=metrics, params=_batch.params(params), tags=_batch.tags(tags)
        )
        with tracker.safety.guard(f"writing the artifacts of trial {handle.number}"):
            _write_artifacts(tracker, run, result, handle)
        if keep_model:
            with tracker.safety.guard(f"logging the model of trial {handle.number}"):
                _write_model(tracker, handle, run, params)
    finally:
        # Whatever failed above, the run ends with the trial's status, never RUNNING.
        tracker.client.set_terminated(run_id, status, end_ms)


def _write_artifacts(
    tracker: StudyTracker, run: Run, result: TrialResult, handle: TrialRun
) -> None:
    with tempfile.TemporaryDirectory(prefix="mlflow-hpo-") as tmp:
        _batch.dump(
            tmp,
            names.ARTIFACT_HYPERPARAMETERS,
            {
                "values": result.params,
                "distributions": result.distributions,
                "trial_number": handle.number,
                "backend": tracker.backend,
            },
        )
        _batch.dump(tmp, names.ARTIFACT_OUTPUT_EXCEPTIONS, list(handle.output_exceptions))
        if result.error:
            with open(os.path.join(tmp, names.ARTIFACT_ERROR), "w") as f:
                f.write(result.error)
        # One copy for all files, straight to the run's artifact root (no get_run).
        get_artifact_repository(run.info.artifact_uri).log_artifacts(tmp)


def _write_model(tracker: StudyTracker, handle: TrialRun, run: Run, params: dict[str, Any]) -> None:
    key = tracker.parent.data.tags.get(names.TAG_STUDY_KEY, "") if tracker.parent else ""
    tags = {
        names.TAG_TRIAL_KEY: handle.key,
        names.TAG_STUDY_KEY: key,
        names.PARAM_TRIAL_NUMBER: str(handle.number),
    }
    as_params = {p.key: p.value for p in _batch.params(params)}
    uri, model_id = _models.log_model(tracker.client, handle.model, run, tags, as_params)
    tracker.client.set_tag(run.info.run_id, names.TAG_MODEL_URI, uri)
    for evicted in tracker.policy.kept(handle.key, model_id):
        # Out of the top k: the model goes, and so does the tag that would point at it.
        source_run = tracker.client.get_logged_model(evicted).source_run_id
        tracker.client.delete_logged_model(evicted)
        if source_run:
            tracker.client.delete_tag(source_run, names.TAG_MODEL_URI)

"""A finished trial as journal entries: at most three store calls on the default path.

``create_run`` carries every tag known when the run is made (for a trial that logged nothing
while it ran, that is all of them, the typed hyperparameters and the output exception list
included, as small JSON tags); one ``log_batch`` carries params and metrics; ``set_terminated``
ends the run. Only what does not fit in a tag (a failed trial's ``error.txt``, a record over
MLflow's tag limit) becomes an artifact. Models are logged apart, under the policy.
"""

from __future__ import annotations

from typing import Any

from mlflow_hpo._core import batch, names
from mlflow_hpo._core.journal import Op
from mlflow_hpo._core.trial import TrialResult, TrialRun


def create_op(handle: TrialRun, tags: dict[str, Any], *, nested: bool, run_name: str) -> Op:
    """The entry that creates ``handle``'s run with ``tags``."""
    return Op(
        handle.ref,
        "create_run",
        {
            "needs": "study" if nested else None,
            "tags": batch.tag_dict(tags),
            "run_name": run_name,
            "start_time": handle.start_ms,
            "trial_key": handle.key,
        },
    )


def hyperparameters(result: TrialResult, handle: TrialRun, backend: str) -> dict[str, Any]:
    return {
        "values": result.params,
        "distributions": result.distributions,
        "trial_number": handle.number,
        "backend": backend,
    }


def final_tags(
    result: TrialResult, handle: TrialRun, backend: str, *, plain: bool = False
) -> tuple[dict[str, Any], dict[str, str]]:
    """``(tags, files)``: the trial's closing tags, and the records too big for a tag.

    ``plain`` (the ``MLflowCallback`` drop-in) writes the backend's own tags only.
    """
    if plain:
        return dict(result.tags), ({names.ARTIFACT_ERROR: result.error} if result.error else {})
    end_ms = result.end_ms or batch.now_ms()
    start_ms = result.start_ms or handle.start_ms
    tags: dict[str, Any] = {
        names.TAG_STATE: result.state,
        names.TAG_DATETIME_START: batch.iso(start_ms),
        names.TAG_DATETIME_COMPLETE: batch.iso(end_ms),
        **result.tags,
    }
    if result.error_class:
        tags[names.TAG_ERROR_CLASS] = result.error_class
    if result.pruned_step is not None:
        tags[names.TAG_PRUNED_STEP] = result.pruned_step
    files: dict[str, str] = {}
    records = (
        (names.TAG_HYPERPARAMETERS, names.ARTIFACT_HYPERPARAMETERS,
         hyperparameters(result, handle, backend)),
        (names.TAG_OUTPUT_EXCEPTIONS, names.ARTIFACT_OUTPUT_EXCEPTIONS,
         list(handle.output_exceptions)),
    )  # fmt: skip
    for tag, artifact, payload in records:
        text = batch.as_json(payload)
        if batch.fits_in_tag(text):
            tags[tag] = text
        else:
            files[artifact] = text
    if result.error:
        files[names.ARTIFACT_ERROR] = result.error
    return tags, files


def final_ops(
    handle: TrialRun,
    result: TrialResult,
    *,
    base_tags: dict[str, Any],
    backend: str,
    nested: bool,
    run_name: str,
    plain: bool = False,
) -> list[Op]:
    """The entries that write a finished trial: create (unless done), batch, files, end.

    ``plain`` leaves out mlflow-hpo's own params, metrics and tags (the drop-in's layout).
    """
    end_ms = result.end_ms or batch.now_ms()
    start_ms = result.start_ms or handle.start_ms
    tags, files = final_tags(result, handle, backend, plain=plain)
    ops: list[Op] = []
    if not handle.created:
        handle.start_ms = start_ms
        handle.create_op = create_op(
            handle, {**base_tags, **tags}, nested=nested, run_name=run_name
        )
        ops.append(handle.create_op)
        handle.created = True
        tags = {}
    metrics = [batch.metric(k, v, 0, end_ms) for k, v in result.values.items()]
    for name, points in result.histories.items():
        last = handle.live_steps.get(batch.key(name))
        if last is not None and [s for s, _ in points] == [0]:
            points = [(last, points[0][1])]  # a final value: at the end of its live history
        metrics.extend(batch.history(name, points))
    params = {**result.params, **result.extra_params}
    if not plain:
        exceptions = len(handle.output_exceptions)
        metrics.append(batch.metric(names.METRIC_N_OUTPUT_EXCEPTIONS, exceptions, 0, end_ms))
        duration = (end_ms - start_ms) / 1000.0
        metrics.append(batch.metric(names.METRIC_DURATION, duration, 0, end_ms))
        params = {names.PARAM_TRIAL_NUMBER: handle.number, **params}
    ops.append(
        Op(
            handle.ref,
            "log_batch",
            {
                "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics],
                "params": [[p.key, p.value] for p in batch.params(params)],
                "tags": [[t.key, t.value] for t in batch.tags(tags)],
            },
        )
    )
    if files:
        ops.append(Op(handle.ref, "artifacts", {"files": files}))
    status = names.RUN_STATUS_FOR_STATE.get(result.state, "FAILED")
    ops.append(Op(handle.ref, "terminate", {"status": status, "end_time": end_ms}))
    return ops


def live_op(handle: TrialRun, values: dict[str, Any], step: int) -> Op:
    points = batch.metrics(values, step)
    return Op(
        handle.ref,
        "log_batch",
        {"metrics": [[m.key, m.value, m.timestamp, m.step] for m in points], "live": True},
    )

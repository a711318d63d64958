"""The data a trial fit on, as MLflow dataset inputs of its run (``mlflow.data``).

A captured Keras ``fit`` notes what it trained and validated on (references, no copies).
Each array becomes an ``mlflow.data`` dataset, named by its context (``training``,
``validation``) and identified by MLflow's own digest (a hash of its first rows and its
shape: no data is copied into the store). A trial run records its datasets with their
context; the study run records each distinct dataset once. The objective metric logged with
a kept model names its validation dataset, which is what the Models tab filters by.
"""

from __future__ import annotations

import threading
from typing import Any

CONTEXT_TAG = "mlflow.data.context"  # MLflow's own input tag for training/validation
_LOCK = threading.Lock()


class DatasetCache:
    """Dataset entities by the identity of the arrays they describe (computed once per
    study: every trial usually fits on the same arrays)."""

    def __init__(self) -> None:
        # id -> (the array, kept alive so its id is not reused; the entity as a dict)
        self._known: dict[int, tuple[Any, dict[str, Any]]] = {}
        self.logged_to_study: set[str] = set()

    def entity(self, features: Any, targets: Any, context: str) -> dict[str, Any] | None:
        """The dataset entity (``mlflow.entities.Dataset`` keywords) of ``features``."""
        key = id(features) ^ (id(targets) << 1) ^ hash(context)
        with _LOCK:
            found = self._known.get(key)
        if found is not None and found[0] is features:
            return found[1]
        entity = _entity(features, targets, context)
        if entity is not None:
            with _LOCK:
                self._known[key] = (features, entity)
        return entity


def _entity(features: Any, targets: Any, context: str) -> dict[str, Any] | None:
    from mlflow.data.numpy_dataset import from_numpy
    from mlflow.data.pandas_dataset import from_pandas

    try:
        if type(features).__module__.startswith("pandas"):
            frame = features.assign(target=targets) if targets is not None else features
            dataset: Any = from_pandas(
                frame, targets="target" if targets is not None else None, name=context
            )
        else:
            import numpy as np

            labels: Any = None if targets is None else np.asarray(targets)
            dataset = from_numpy(np.asarray(features), targets=labels, name=context)
    except Exception:  # a format MLflow cannot describe: the run has no dataset input
        return None
    return dict(dataset.to_dict())


def inputs(cache: DatasetCache, noted: list[tuple[Any, Any, str]]) -> list[dict[str, Any]]:
    """``[{"dataset": entity, "context": ...}]`` for what a trial fit on."""
    out = []
    for features, targets, context in noted:
        entity = cache.entity(features, targets, context)
        if entity is not None:
            out.append({"dataset": entity, "context": context})
    return out


def log_inputs(client: Any, run_id: str, entries: list[dict[str, Any]]) -> None:
    """Write ``entries`` (see :func:`inputs`) as the run's dataset inputs."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    client.log_inputs(
        run_id,
        datasets=[
            DatasetInput(Dataset(**e["dataset"]), tags=[InputTag(CONTEXT_TAG, e["context"])])
            for e in entries
        ],
    )

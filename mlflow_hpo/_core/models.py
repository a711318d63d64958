"""Which trials keep their model, and how a model becomes an MLflow 3 logged model.

The ``log_models`` policy:

* ``"best"`` (default): a trial's model when the trial improves on every completed trial
  before it (several objectives: when no earlier trial dominates it);
* ``"all"``: every completed trial;
* ``"none"``: never;
* an ``int`` k: the top k; models pushed out of the top k are deleted again.

A kept model is first saved to a local folder (MLflow's own flavor, ``keras`` or ``sklearn``,
with a signature and a small input example, and explicit pip requirements, which spares
MLflow's seconds-long requirement inference), then uploaded by a journalled entry: a logged
model of the trial run, its objective metric linked to it (the Models tab ranks by it), and
the ``mlflow_hpo.model_uri`` tag. The local copy makes the upload safe across an outage.
"""

from __future__ import annotations

import heapq
import importlib.metadata
import inspect
import os
import shutil
import sys
import threading
import uuid
from typing import TYPE_CHECKING, Any

from mlflow_hpo._core import batch, journal, names
from mlflow_hpo._core.options import validate_policy
from mlflow_hpo._core.study import better, dominates
from mlflow_hpo.errors import ConfigurationError

if TYPE_CHECKING:
    from mlflow_hpo._core.store import Store
    from mlflow_hpo._core.trial import TrialRun

__all__ = ["ModelPolicy", "flavor_for", "model_ops", "validate_policy"]


class ModelPolicy:
    """Decides, thread-safely and in O(log k) per trial, whether a trial's model is logged.

    Args:
        policy: A value accepted by :func:`validate_policy`.
    """

    def __init__(self, policy: str | int) -> None:
        self.policy = validate_policy(policy)
        self.directions: list[str] = ["minimize"]
        self._best: float | None = None  # single objective: the best value so far
        self._front: list[list[float]] = []  # several objectives: the Pareto front so far
        # top k: a heap of (sign * value, -order, key) whose root is the worst kept trial
        self._top: list[tuple[float, int, str]] = []
        self._refs: dict[str, str] = {}  # trial key -> run ref of a kept model (top k)
        self._keys: set[str] = set()  # every trial accounted for (a key counts once)
        self._seen = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.policy != "none"

    def seed(self, key: str, values: list[float]) -> None:
        """Remember a completed trial this process did not run (a resumed study)."""
        with self._lock:
            self._record(key, values)

    def _sign(self) -> float:
        return 1.0 if self.directions[0] == "maximize" else -1.0

    def _record(self, key: str, values: list[float]) -> bool:
        """Account for a completed trial; return whether the policy would keep its model."""
        if key in self._keys:
            return False  # seen already (a resumed study's trial, written again)
        self._keys.add(key)
        self._seen += 1
        if len(self.directions) > 1:
            if any(dominates(f, values, self.directions) for f in self._front):
                return False
            self._front = [f for f in self._front if not dominates(values, f, self.directions)]
            self._front.append(values)
            return True
        improved = self._best is None or better(values[0], self._best, self.directions[0])
        if improved:
            self._best = values[0]
        if isinstance(self.policy, int):
            entry = (self._sign() * values[0], -self._seen, key)
            if len(self._top) < self.policy:
                heapq.heappush(self._top, entry)
                return True
            if entry > self._top[0]:
                heapq.heapreplace(self._top, entry)
                return True
            return False
        return improved

    def decide(self, key: str, values: list[float]) -> bool:
        """Record a completed trial and say whether its model should be logged."""
        with self._lock:
            keep = self._record(key, values)
            if self.policy in ("none", "all"):
                return self.policy == "all"
            return keep

    def kept(self, key: str, ref: str) -> list[str]:
        """Note a kept model; return the run refs whose models are now outside the top k."""
        with self._lock:
            if not isinstance(self.policy, int):
                return []
            self._refs[key] = ref
            inside = {k for _, _, k in self._top}
            evicted = [k for k in self._refs if k not in inside]
            return [self._refs.pop(k) for k in evicted]


def flavor_for(model: Any) -> tuple[Any, Any]:
    """Return ``(flavor_module, model_to_save)`` for a Keras model or sklearn estimator.

    SciKeras wrappers are unwrapped to their fitted Keras model, which is what a user wants
    to reload for inference.

    Raises:
        ConfigurationError: The object is neither.
    """
    if "keras" in sys.modules:
        import keras

        if isinstance(model, keras.Model):
            import mlflow.keras

            return mlflow.keras, model
        inner = getattr(model, "model_", None)
        if isinstance(inner, keras.Model) and "scikeras" in type(model).__module__:
            import mlflow.keras

            return mlflow.keras, inner
    if "sklearn" in sys.modules:
        from sklearn.base import BaseEstimator

        if isinstance(model, BaseEstimator):
            import mlflow.sklearn

            return mlflow.sklearn, model
    raise ConfigurationError(
        "model",
        "a keras.Model or a scikit-learn estimator",
        type(model).__name__,
        "Log other model types yourself with the matching mlflow.<flavor>.log_model().",
    )


def _pinned(*dists: str) -> list[str]:
    out = []
    for dist in dists:
        try:
            out.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def requirements(flavor: Any) -> list[str]:
    """What the model needs to load, pinned to what is installed (MLflow's own inference
    starts a subprocess that takes seconds per model)."""
    if flavor.__name__ == "mlflow.keras":
        return _pinned("mlflow", "keras", "tensorflow-cpu", "tensorflow", "numpy")
    return _pinned("mlflow", "scikit-learn", "cloudpickle", "numpy", "scikeras")


def signature_of(flavor: Any, model: Any, example: Any) -> Any:
    """The model's signature from a few input rows (one cheap prediction), or ``None``."""
    if example is None:
        return None
    from mlflow.models import infer_signature

    if flavor.__name__ == "mlflow.keras":
        import keras

        # An eager call: predict() would trace a new tf.function for every model saved,
        # and TensorFlow warns about "retracing" from the fifth one on.
        output = keras.tree.map_structure(
            keras.ops.convert_to_numpy, model(example, training=False)
        )
        return infer_signature(example, output)
    return infer_signature(example, model.predict(example))


def save_locally(model: Any, folder: str, example: Any) -> None:
    """Save ``model`` with its flavor into ``folder`` (created), signature and example."""
    flavor, obj = flavor_for(model)
    os.makedirs(folder, exist_ok=True)  # mlflow.keras writes the example before the folder
    kwargs: dict[str, Any] = {"pip_requirements": requirements(flavor)}
    try:
        signature = signature_of(flavor, obj, example)
    except Exception:  # a model that cannot predict on its own input: save it without
        signature, example = None, None
    if signature is not None:
        kwargs["signature"] = signature
        kwargs["input_example"] = example
    if flavor.__name__ == "mlflow.sklearn":
        # MLflow's skops default refuses common estimators (trees, forests) unless every type
        # is listed as trusted; cloudpickle reloads any estimator, as MLflow 2 did.
        kwargs["serialization_format"] = flavor.SERIALIZATION_FORMAT_CLOUDPICKLE
    # Flavors name their model argument differently (keras: model, sklearn: sk_model).
    model_argument = next(iter(inspect.signature(flavor.save_model).parameters))
    flavor.save_model(**{model_argument: obj}, path=folder, **kwargs)


def model_ops(
    tracker: Any,
    handle: TrialRun,
    values: dict[str, float],
    params: dict[str, Any],
    evaluated_on: dict[str, str] | None = None,
) -> list[journal.Op]:
    """Save ``handle.model`` locally now (tens of ms with explicit requirements), and the
    journalled entry that uploads it."""
    folder = str(journal.home() / "models" / uuid.uuid4().hex)
    example = handle.input_example
    if example is not None and hasattr(example, "__getitem__"):
        example = example[:5]
    save_locally(handle.model, folder, example)
    return [
        journal.Op(
            handle.ref,
            "upload_model",
            {
                "folder": folder,
                "trial_key": handle.key,
                "study_key": tracker.study_key,
                "number": handle.number,
                "params": {p.key: p.value for p in batch.params(params)},
                "metrics": [[batch.key(k), float(v)] for k, v in values.items()],
                "dataset": evaluated_on,
            },
        )
    ]


def upload(store: Store, op: journal.Op) -> None:
    """Upload a saved model as a logged model of its trial run (idempotent)."""
    p = op.payload
    run_id = store.run_id(op.ref)
    model_id = None
    if op.attempts > 1:  # an earlier attempt may have created it
        found = store.client.search_logged_models(
            [str(store.experiment_id)], filter_string=f"source_run_id = '{run_id}'"
        )
        model_id = next((m.model_id for m in found if m.name == names.MODEL_ARTIFACT), None)
    tags = {
        names.TAG_TRIAL_KEY: p["trial_key"],
        names.TAG_STUDY_KEY: p.get("study_key") or "",
        names.PARAM_TRIAL_NUMBER: str(p["number"]),
    }
    publish(
        store.client,
        run_id,
        str(store.experiment_id),
        p["folder"],
        tags=tags,
        params=p.get("params") or {},
        metrics=dict(p.get("metrics", [])),
        model_id=model_id,
        dataset=p.get("dataset"),
    )


def publish(
    client: Any,
    run_id: str,
    experiment_id: str,
    folder: str,
    *,
    tags: dict[str, str],
    params: dict[str, str],
    metrics: dict[str, float],
    model_id: str | None = None,
    dataset: dict[str, str] | None = None,
) -> str:
    """Make the model saved in ``folder`` a logged model of ``run_id``; return its URI.

    The objective metrics are logged with the model's id (and the dataset it was evaluated
    on), which is what the Models tab and ``search_logged_models(order_by=...)`` rank and
    filter by. ``folder`` is removed afterwards.
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
    from mlflow.models import Model

    if model_id is None:
        logged = client.create_logged_model(
            experiment_id=experiment_id,
            name=names.MODEL_ARTIFACT,
            source_run_id=run_id,
            tags=tags,
            params=params or None,
        )
        model_id = str(logged.model_id)
    if os.path.isdir(folder):  # gone: an earlier attempt uploaded it
        logged = client.get_logged_model(model_id)
        stamp = Model.load(folder)  # what Model.log records: get_model_info reports them
        stamp.run_id, stamp.model_id = run_id, model_id
        stamp.model_uuid, stamp.artifact_path = model_id, logged.artifact_location
        stamp.save(os.path.join(folder, "MLmodel"))
        client.log_model_artifacts(model_id, folder)
    client.finalize_logged_model(model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])
    now = batch.now_ms()
    linked = {}
    if dataset:
        linked = {"dataset_name": dataset["name"], "dataset_digest": dataset["digest"]}
    if metrics:
        points = [
            Metric(k, float(v), now, 0, model_id=model_id, **linked) for k, v in metrics.items()
        ]
        client.log_batch(run_id, metrics=points)
    uri = f"models:/{model_id}"
    client.set_tag(run_id, names.TAG_MODEL_URI, uri)
    shutil.rmtree(folder, ignore_errors=True)
    return uri


def log_now(client: Any, run: Any, model: Any, params: dict[str, Any], tags: dict[str, str]) -> str:
    """Save and log ``model`` on ``run`` at once (outside a study: the registry's rebuild)."""
    import tempfile

    folder = tempfile.mkdtemp(prefix="mlflow-hpo-model-")
    save_locally(model, folder, None)
    return publish(
        client,
        run.info.run_id,
        run.info.experiment_id,
        folder,
        tags=tags,
        params={p.key: p.value for p in batch.params(params)},
        metrics={},
    )


def delete(store: Store, op: journal.Op) -> None:
    """Delete the logged model of run ``op.ref`` (out of the top k) and its tag."""
    from mlflow.exceptions import MlflowException

    client = store.client
    run_id = store.run_id(op.ref)
    run = client.get_run(run_id)
    uri = run.data.tags.get(names.TAG_MODEL_URI)
    if not uri:
        return
    try:
        client.delete_logged_model(uri.split("/", 1)[-1].lstrip("/"))
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    client.delete_tag(run_id, names.TAG_MODEL_URI)

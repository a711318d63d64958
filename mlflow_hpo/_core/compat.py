"""Every access to another library's internals, in one place.

mlflow-hpo prefers public hooks. What could not be done through one is here, each behind a
documented function that names what it reads and the versions it was checked on, so that a
new release breaks one function (and ``tests/test_compat.py``), not a backend silently.

Checked on: Python 3.11.7, mlflow 3.17.2, optuna 5.0.0, keras-tuner 1.4.8,
scikit-learn 1.9.1, hyperopt 0.3.0.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHECKED_ON = {
    "mlflow": "3.17.2",
    "optuna": "5.0.0",
    "keras-tuner": "1.4.8",
    "scikit-learn": "1.9.1",
    "hyperopt": "0.3.0",
}

# --------------------------------------------------------------------------- MLflow


def push_active_run(run: Any) -> None:
    """Make ``run`` MLflow's active run in this thread, without ``mlflow.start_run``.

    ``start_run``/``end_run`` would cost three store calls per trial and end the run with a
    status only the tracker knows. MLflow keeps the stack per thread in
    ``mlflow.tracking.fluent._active_run_stack`` (a ``ThreadLocalVariable`` of a list).
    """
    from mlflow.tracking import fluent

    fluent._active_run_stack.get().append(run)


def pop_active_run(run: Any) -> None:
    """Undo :func:`push_active_run` (a no-op if ``run`` is no longer on the stack)."""
    from mlflow.tracking import fluent

    stack = fluent._active_run_stack.get()
    if run in stack:
        stack.remove(run)


def active_experiment_id() -> str | None:
    """The experiment ``mlflow.set_experiment`` chose in this process, if any.

    ``mlflow.get_experiment_by_name`` cannot tell "set by the user" from "the default", which
    decides whether a study may pick its own experiment.
    """
    from mlflow.tracking import fluent

    value = fluent._active_experiment_id
    return str(value) if value is not None else None


def clear_active_experiment(experiment_id: str) -> None:
    """Undo ``mlflow.set_experiment(experiment_id=...)`` if that experiment is still the
    active one: no experiment chosen in this process again (``_active_experiment_id``, and
    the ``MLFLOW_EXPERIMENT_ID`` variable it sets for child processes)."""
    from mlflow.environment_variables import MLFLOW_EXPERIMENT_ID
    from mlflow.tracking import fluent

    if str(fluent._active_experiment_id) != str(experiment_id):
        return
    fluent._active_experiment_id = None
    if MLFLOW_EXPERIMENT_ID.get() == str(experiment_id):
        MLFLOW_EXPERIMENT_ID.unset()


def default_experiment_id() -> str:
    """The experiment a plain ``mlflow.start_run()`` would use (MLflow's own resolution)."""
    from mlflow.tracking import fluent

    return str(fluent._get_experiment_id())


def artifact_repository(artifact_uri: str, tracking_uri: str) -> Any | None:
    """MLflow's artifact repository for a run whose artifact URI this process already has
    (a run it created), or ``None`` where MLflow adds more to the URI (Databricks).

    ``MlflowClient.log_artifacts`` first reads the whole run (``get_run``: a query, or a
    request to a server) to find that URI, for every run it has not cached yet, and its
    cache is private. This builds the same repository the way it does, with
    ``mlflow.store.artifact.artifact_repository_registry.get_artifact_repository``.
    """
    if tracking_uri.startswith("databricks") or artifact_uri.startswith("dbfs:"):
        return None
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)


def after_import(module_name: str, hook: Any) -> None:
    """Call ``hook(module)`` once ``module_name`` is imported (at once if it is already):
    MLflow's post-import hooks (``mlflow.utils.import_hooks``), which its autologging uses
    to patch a library imported after ``autolog()``."""
    from mlflow.utils.import_hooks import register_post_import_hook

    register_post_import_hook(hook, module_name, overwrite=True)


# --------------------------------------------------------------------------- Optuna


def optuna_study_id(study: Any) -> int:
    """The storage's id of ``study`` (``Study._study_id``): it tells two studies of one name
    apart in one storage, and keys the study's system attributes."""
    return int(study._study_id)


def optuna_storage(study: Any) -> Any:
    """The storage ``study`` reads and writes (``Study._storage``)."""
    return study._storage


def optuna_storage_location(study: Any) -> str | None:
    """A credential-free description of where ``study`` lives, or ``None`` in memory.

    Unwraps Optuna's ``_CachedStorage`` (``_backend``) and the journal storage's backend
    (``_backend._file_path`` / ``_url``).
    """
    import optuna

    storage = study._storage
    backend = getattr(storage, "_backend", storage)
    if isinstance(backend, optuna.storages.InMemoryStorage):
        return None
    location = getattr(backend, "url", None)
    if location is not None:
        from sqlalchemy.engine import make_url

        location = make_url(location).render_as_string(hide_password=True)
    else:
        journal = getattr(backend, "_backend", None)
        location = getattr(journal, "_file_path", None) or getattr(journal, "_url", None)
    if location is None:
        return None
    return f"{type(backend).__name__}|{location}"


def optuna_study_system_attr(study: Any, key: str) -> Any:
    """A study system attribute (public ``Study.system_attrs`` is deprecated)."""
    return study._storage.get_study_system_attrs(study._study_id).get(key)


def optuna_set_study_system_attr(study: Any, key: str, value: Any) -> None:
    study._storage.set_study_system_attr(study._study_id, key, value)


def optuna_frozen_trial(trial: Any) -> Any:
    """The running ``trial`` as the storage holds it now (``Trial._trial_id``): one read,
    where the public ``study.get_trials()`` would read every trial of the study."""
    return trial.study._storage.get_trial(trial._trial_id)


# ---------------------------------------------------------------------- Keras Tuner


def keras_tuner_trial_status() -> Any:
    """Keras Tuner's ``TrialStatus`` constants (``keras_tuner.engine.trial``, the legacy path
    the package still exports; not in its documented API)."""
    import keras_tuner

    return keras_tuner.engine.trial.TrialStatus


def keras_tuner_checkpoint(tuner: Any, trial_id: str) -> str:
    """Where Keras Tuner keeps the best epoch's weights of ``trial_id``
    (``Tuner._get_checkpoint_fname``): read, never written, by mlflow-hpo."""
    return str(tuner._get_checkpoint_fname(trial_id))


def keras_tuner_rebuild(tuner: Any, trial: Any) -> Any:
    """``trial``'s model with its best checkpoint, as ``Tuner.load_model`` returns it, built
    by ``Tuner._build_hypermodel`` (the tuner's compile overrides, Hyperband's continued
    weights) without ``Tuner._try_build``'s ``clear_session()`` and two full garbage
    collections, which cost a search's end ~0.3 s for nothing: the search is over. The build
    config comes from ``Tuner._get_build_config_fname`` when the model is not built.
    ``None`` when the tuner distributes its builds (``load_model`` is used then)."""
    import json

    if getattr(tuner, "distribution_strategy", None) is not None:
        return None
    model = tuner._build_hypermodel(trial.hyperparameters)
    if not model.built:
        with open(tuner._get_build_config_fname(trial.trial_id)) as f:
            model.build_from_config(json.load(f))
    model.load_weights(keras_tuner_checkpoint(tuner, trial.trial_id))
    return model


def keras_tuner_is_worker() -> bool:
    """A worker (not the chief) of Keras Tuner's distributed mode, by its documented
    environment variables (``keras_tuner.src.distribute.utils`` reads the same)."""
    return "KERASTUNER_ORACLE_IP" in os.environ and "chief" not in os.environ.get(
        "KERASTUNER_TUNER_ID", "chief"
    )


def keras_tuner_is_distributed() -> bool:
    return "KERASTUNER_ORACLE_IP" in os.environ


# ------------------------------------------------------------------------- Python


_SKIPPED: tuple[str, ...] | None = None


def _skipped_prefixes() -> tuple[str, ...]:
    global _SKIPPED
    if _SKIPPED is None:
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        paths = sysconfig.get_paths()
        _SKIPPED = tuple(
            {package, paths["stdlib"], paths["purelib"], paths["platlib"]}
            | {os.path.dirname(os.__file__)}
        )
    return _SKIPPED


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the user's own line.

    The first frame outside mlflow-hpo, the standard library and installed packages (the
    tuning library that called us). Python 3.12's ``warnings.warn(skip_file_prefixes=)``
    does this; 3.11 needs the frames. Counted from the caller of this function.
    """
    skipped = _skipped_prefixes()
    frame = sys._getframe(1)
    level = 1
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not filename.startswith(skipped) and not filename.startswith("<frozen"):
            return level
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return 2


# ----------------------------------------------------------------------- Hyperopt


def hyperopt_documents(trials: Any) -> list[Any]:
    """Every trial document of a ``hyperopt.Trials``, those of evaluations that raised
    included: ``Trials.trials`` leaves those out, ``Trials._dynamic_trials`` keeps them."""
    return list(getattr(trials, "_dynamic_trials", trials.trials))


# --------------------------------------------------------------------- scikit-learn


class LocalOnly:
    """A callable set on a user's object for one call, that pickles to ``None``.

    With ``n_jobs>1`` scikit-learn ships the search object to worker processes; our hooks
    hold the tracker (locks, a store client) and are only ever called in this process.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self.__wrapped__ = call  # inspect.signature sees the wrapped call's parameters

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _nothing, ()


def _nothing() -> None:
    return None


def sklearn_base_search_cv() -> Any:
    """``BaseSearchCV``, the base of every search CV (not exported by a public module)."""
    from sklearn.model_selection._search import BaseSearchCV

    return BaseSearchCV


def sklearn_callbacks(estimator: Any) -> list[Any]:
    """The callbacks set on ``estimator`` (``_skl_callbacks``, scikit-learn 1.9.1): kept
    when ours is added for a fit, and put back afterwards (``set_callbacks`` replaces)."""
    return list(getattr(estimator, "_skl_callbacks", None) or [])


@contextmanager
def sklearn_fold_outputs(search: Any) -> Iterator[list[dict[str, Any]]]:
    """The per-fold outputs of ``search.fit`` (fit and score time, a failed fit's
    traceback), which ``cv_results_`` aggregates away.

    Reads the argument of ``BaseSearchCV._format_results`` (scikit-learn 1.9.1) through an
    instance attribute set for the duration of one ``fit`` and removed after it.
    """
    captured: list[dict[str, Any]] = []
    original = search._format_results

    def keep(candidate_params: Any, n_splits: int, out: Any, *rest: Any) -> Any:
        captured[:] = list(out)  # every call gets all the folds so far
        return original(candidate_params, n_splits, out, *rest)

    search._format_results = LocalOnly(keep)
    try:
        yield captured
    finally:
        search.__dict__.pop("_format_results", None)

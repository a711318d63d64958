"""Promote the best trial of any study to the Model Registry, and load it back.

The study run records its objective names and directions (``mlflow_hpo.objectives``,
``mlflow_hpo.directions``), so the best trial is chosen by what the search optimised, not
guessed from metric names. Versions are addressed by alias (``models:/name@champion``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mlflow_hpo._core import models, names, parent
from mlflow_hpo._core.parent import equals, tag
from mlflow_hpo._core.validate import tracking_uri as validate_tracking_uri
from mlflow_hpo._ranking import SELECTED_BY_MODELS, SELECTED_BY_RUNS, best_model, best_trial
from mlflow_hpo._rebuild import RebuildError, has_weights, rebuild, recorded_values
from mlflow_hpo.errors import ConfigurationError

__all__ = ["Promotion", "RebuildError", "best_trial", "find_study", "load_best", "promote_best"]


@dataclass(frozen=True)
class Promotion:
    """What :func:`promote_best` did.

    Attributes:
        model_name: The registered model.
        version: The version the alias points at now.
        alias: The alias.
        trial_run_id: This study's best trial run.
        objective: The objective it was ranked by.
        value: This study's best value.
        champion_value: The value of the version the alias points at now (``value`` when the
            alias moved; the kept champion's when ``only_if_better`` kept it).
        created: A new version was registered (``False``: none, or it existed already).
        moved: The alias points at this study's best now.
    """

    model_name: str
    version: str
    alias: str
    trial_run_id: str
    objective: str
    value: float
    champion_value: float
    created: bool
    moved: bool

    @property
    def uri(self) -> str:
        return f"models:/{self.model_name}@{self.alias}"


def find_study(client: MlflowClient, study: Any, experiment_name: str | None = None) -> Run:
    """The study run: ``study`` is its run id, its ``Run``, or with ``experiment_name`` the
    study name (the newest study run of that name in that experiment)."""
    if isinstance(study, Run):
        run = study
    elif isinstance(study, str) and study and experiment_name is None:
        try:
            run = client.get_run(study)
        except MlflowException as error:
            raise ConfigurationError(
                "study",
                "a study run id, a study Run, or a study name with experiment_name=",
                study,
                "To look a study up by name, also pass experiment_name=.",
            ) from error
    elif isinstance(study, str) and study and experiment_name is not None:
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            raise ConfigurationError("experiment_name", "an existing experiment", experiment_name)
        found = parent.search(
            client,
            experiment.experiment_id,
            [
                equals(tag(names.TAG_ROLE), names.ROLE_STUDY),
                equals(tag(names.TAG_STUDY_NAME), study),
            ],
            exact={names.TAG_STUDY_NAME: study},
            order_by=["attributes.start_time DESC"],
        )[:1]
        if not found:
            raise ConfigurationError(
                "study", f"the name of a study in experiment {experiment_name!r}", study
            )
        run = found[0]
    else:
        raise ConfigurationError("study", "a study run id, Run or study name", study)
    if run.data.tags.get(names.TAG_ROLE) != names.ROLE_STUDY:
        raise ConfigurationError(
            "study",
            "a study (parent) run written by mlflow-hpo",
            run.info.run_id,
            "Pass the parent run, not a trial run.",
        )
    return run


def promote_best(
    study: Any,
    model_name: str,
    alias: str = "champion",
    *,
    experiment_name: str | None = None,
    only_if_better: bool = False,
    builder: Any = None,
    tracking_uri: str | None = None,
) -> Promotion:
    """Register the best trial's model of ``study`` and point ``alias`` at it.

    Args:
        study: The study run id, its ``Run``, or (with ``experiment_name``) its name.
        model_name: Registered model name (created if needed).
        alias: The alias to set (``models:/<model_name>@<alias>``).
        only_if_better: Move the alias only if the best trial beats the version the alias
            holds now (by the objective and direction recorded on that version).
        builder: Needed only if the best trial logged weights but no model: the model is
            rebuilt (:func:`mlflow_hpo.rebuild`) and logged on the trial run first.
        tracking_uri: Store (and registry) to use; ``None`` uses MLflow's configured URI.

    Returns:
        A :class:`Promotion`. Promoting again while the best trial is unchanged registers
        no new version.

    Raises:
        ConfigurationError: ``study`` or an argument is invalid.
        RebuildError: No finished trial, or the best trial has neither model nor weights.
    """
    for argument, given in (("model_name", model_name), ("alias", alias)):
        if not isinstance(given, str) or not given.strip():
            raise ConfigurationError(argument, "a non-empty string", given)
    tracking_uri = validate_tracking_uri(tracking_uri)
    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)  # Model.log and the registry read it
    client = MlflowClient(tracking_uri)
    study_run = find_study(client, study, experiment_name)
    chosen = best_model(client, study_run)
    if chosen is not None:  # the Models tab's own ranking: one search
        trial, objective, direction, value, model_uri = chosen
        selected_by = SELECTED_BY_MODELS
    else:  # no logged model (weights only): rank the trial runs, rebuild the best
        trial, objective, direction, value = best_trial(client, study_run)
        model_uri, selected_by = None, SELECTED_BY_RUNS
    existing = _version_of(client, model_name, trial.info.run_id)
    holder = _alias_holder(client, model_name, alias)
    if (
        only_if_better
        and holder is not None
        and (existing is None or holder.version != existing.version)
        and not _beats(value, objective, direction, holder)
    ):
        # Not better than what the alias holds: register nothing, move nothing.
        held = float(holder.tags.get(names.TAG_VERSION_OBJECTIVE_VALUE, "nan"))
        return Promotion(
            model_name,
            str(holder.version),
            alias,
            trial.info.run_id,
            objective,
            value,
            held,
            False,
            False,
        )
    version = existing
    if version is None:
        model_uri = model_uri or _model_uri(client, trial, builder)
        values, backend = recorded_values(client, trial)
        _ensure_model(client, model_name)
        version = client.create_model_version(
            model_name,
            source=model_uri,
            run_id=trial.info.run_id,
            tags={
                names.TAG_VERSION_STUDY_RUN_ID: study_run.info.run_id,
                names.TAG_VERSION_TRIAL_RUN_ID: trial.info.run_id,
                names.TAG_VERSION_OBJECTIVE: objective,
                names.TAG_VERSION_OBJECTIVE_VALUE: repr(value),
                names.TAG_VERSION_DIRECTION: direction,
                names.TAG_VERSION_SELECTED_BY: selected_by,
                names.TAG_BACKEND: backend or study_run.data.tags.get(names.TAG_BACKEND, ""),
            },
            description=_description(study_run, trial, objective, value, values),
            model_id=model_uri[len("models:/") :] if model_uri.startswith("models:/m-") else None,
        )
    if holder is None or holder.version != version.version:
        client.set_registered_model_alias(model_name, alias, str(version.version))
    return Promotion(
        model_name,
        str(version.version),
        alias,
        trial.info.run_id,
        objective,
        value,
        value,
        existing is None,
        True,
    )


def _ensure_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)


def _version_of(client: MlflowClient, model_name: str, run_id: str) -> ModelVersion | None:
    try:
        clause, _ = equals("name", model_name)
        versions = client.search_model_versions(clause)
    except MlflowException:
        return None
    for version in versions:
        if version.name != model_name:
            continue
        if version.tags.get(names.TAG_VERSION_TRIAL_RUN_ID) == run_id:
            return version
    return None


def _model_uri(client: MlflowClient, trial: Run, builder: Any) -> str:
    uri = trial.data.tags.get(names.TAG_MODEL_URI)
    if uri:
        return uri
    number = trial.data.params.get(names.PARAM_TRIAL_NUMBER, "?")
    if not has_weights(client, trial):
        raise RebuildError(
            f"The best trial (number {number}, run {trial.info.run_id}) has no logged model "
            "and no weights, so there is nothing to register. Run the search with "
            "log_models='best' (the default) or 'all', or call mlflow_hpo.log_weights(model) "
            "in the objective and pass builder= here."
        )
    if builder is None:
        raise RebuildError(
            f"The best trial (number {number}, run {trial.info.run_id}) logged weights but no "
            "model. Pass builder=<your model builder> so the model can be rebuilt from its "
            "recorded hyperparameters and those weights."
        )
    model = rebuild(builder, trial, tracking_uri=client.tracking_uri)
    values, _ = recorded_values(client, trial)
    tags = {names.TAG_TRIAL_KEY: trial.data.tags.get(names.TAG_TRIAL_KEY, "")}
    return models.log_now(client, trial, model, values, tags)


def _description(
    study_run: Run, trial: Run, objective: str, value: float, values: dict[str, Any]
) -> str:
    lines = [
        f"Best trial of study {study_run.data.tags.get(names.TAG_STUDY_NAME, '')!r} "
        f"(run {study_run.info.run_id}): {trial.info.run_name}, {objective} = {value:.6g}.",
        "",
        "Hyperparameters:",
    ]
    lines += [f"- {k}: {v!r}" for k, v in sorted(values.items())]
    return "\n".join(lines)


def _alias_holder(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _beats(value: float, objective: str, direction: str, holder: ModelVersion) -> bool:
    """Whether ``value`` is strictly better than the value recorded on ``holder``.

    Raises:
        ConfigurationError: ``holder`` was chosen by another objective or direction: the
            two cannot be compared.
    """
    held = holder.tags.get(names.TAG_VERSION_OBJECTIVE_VALUE)
    if held is None:  # a version not promoted by mlflow-hpo: nothing to compare against
        return True
    theirs = (
        holder.tags.get(names.TAG_VERSION_OBJECTIVE),
        holder.tags.get(names.TAG_VERSION_DIRECTION),
    )
    if theirs != (objective, direction):
        raise ConfigurationError(
            "only_if_better",
            f"a study ranked like the version the alias holds ({theirs[0]}, {theirs[1]})",
            f"a study ranked by {objective} ({direction})",
            "Promote without only_if_better, or to another model name or alias.",
        )
    return value > float(held) if direction == "maximize" else value < float(held)


def load_best(
    model_name: str,
    alias: str = "champion",
    *,
    flavor: str = "native",
    tracking_uri: str | None = None,
) -> Any:
    """Load the version ``alias`` points at.

    Args:
        flavor: ``"native"`` gives a ``keras.Model`` or a scikit-learn estimator;
            ``"pyfunc"`` gives MLflow's generic ``PyFuncModel``.

    Raises:
        ConfigurationError: Unknown model name or alias, or an unknown ``flavor``.
    """
    if flavor not in ("native", "pyfunc"):
        raise ConfigurationError("flavor", "'native' or 'pyfunc'", flavor)
    tracking_uri = validate_tracking_uri(tracking_uri)
    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    try:
        client.get_registered_model(model_name)
    except MlflowException as error:
        known = sorted(m.name for m in client.search_registered_models())
        raise ConfigurationError(
            "model_name",
            f"a registered model (known: {known or 'none yet'})",
            model_name,
            "Promote a study first: mlflow_hpo.registry.promote_best(study, model_name).",
        ) from error
    try:
        client.get_model_version_by_alias(model_name, alias)
    except MlflowException as error:
        raise ConfigurationError(
            "alias",
            f"an alias set on {model_name!r}",
            alias,
            f"promote_best(study, {model_name!r}, alias={alias!r}) sets it.",
        ) from error
    uri = f"models:/{model_name}@{alias}"
    if flavor == "pyfunc":
        return mlflow.pyfunc.load_model(uri)
    flavors = mlflow.models.get_model_info(uri).flavors
    if "keras" in flavors:
        import mlflow.keras as mlflow_keras

        from mlflow_hpo._core.keras import weights_only

        with weights_only():
            return mlflow_keras.load_model(uri)
    import mlflow.sklearn as mlflow_sklearn

    return mlflow_sklearn.load_model(uri)

"""``mlflow-hpo``: the command line, built with click like MLflow's own CLI.

    mlflow-hpo show STUDY [--experiment-name E] [--top 10]
    mlflow-hpo promote STUDY --model-name NAME [--alias champion] [--only-if-better]
    mlflow-hpo report STUDY
    mlflow-hpo sync [STUDY_KEY] [--timeout 60]
    mlflow-hpo export-tensorboard STUDY DIR

``STUDY`` is a study run id, or a study name together with ``--experiment-name``. The store
is ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's default.
"""

from __future__ import annotations

from typing import Any

import click
from mlflow import MlflowClient
from mlflow.entities import Run

from mlflow_hpo._core import names, parent
from mlflow_hpo._core.study import study_objective
from mlflow_hpo.errors import MlflowHpoError

_STUDY = click.argument("study")
_EXPERIMENT = click.option(
    "--experiment-name", default=None, help="Look STUDY up by name in this experiment."
)
_URI = click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    default=None,
    help="Tracking store, e.g. sqlite:///mlflow.db (default: MLFLOW_TRACKING_URI).",
)


@click.group()
@click.version_option(package_name="mlflow-hpo")
def cli() -> None:
    """Record, compare and promote hyperparameter searches in MLflow."""


@cli.command()
@_STUDY
@click.option("--model-name", required=True, help="Registered model name.")
@click.option("--alias", default="champion", show_default=True)
@click.option("--only-if-better", is_flag=True, help="Move the alias only on improvement.")
@_EXPERIMENT
@_URI
def promote(
    study: str,
    model_name: str,
    alias: str,
    only_if_better: bool,
    experiment_name: str | None,
    tracking_uri: str | None,
) -> None:
    """Register the best trial of STUDY and point an alias at it."""
    from mlflow_hpo.registry import promote_best

    try:
        done = promote_best(
            study,
            model_name,
            alias,
            experiment_name=experiment_name or None,  # MLproject passes "" for none
            only_if_better=only_if_better,
            tracking_uri=tracking_uri,
        )
    except MlflowHpoError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"best trial run {done.trial_run_id}: {done.objective} = {done.value:.6g}")
    if done.moved:
        what = "registered as new version" if done.created else "already version"
        click.echo(f"{what} {done.version} of {done.model_name!r}")
        click.echo(f"alias {done.alias!r} -> version {done.version}  (load: {done.uri})")
    else:
        click.echo(
            f"alias {done.alias!r} kept on version {done.version} "
            f"({done.objective} = {done.champion_value:.6g}, at least as good); nothing registered"
        )


@cli.command()
@_STUDY
@click.option("--top", default=10, show_default=True, help="How many trials to list.")
@_EXPERIMENT
@_URI
def show(study: str, top: int, experiment_name: str | None, tracking_uri: str | None) -> None:
    """Summarise STUDY: its best trials, their params and states."""
    from mlflow_hpo.registry import find_study

    client = MlflowClient(tracking_uri)
    try:
        study_run = find_study(client, study, experiment_name or None)
    except MlflowHpoError as error:
        raise click.ClickException(str(error)) from error
    tags = study_run.data.tags
    objective, direction = study_objective(study_run)
    best = parent.top_trials(client, study_run, objective, direction, top, finished_only=False)
    click.echo(
        f"study {tags.get(names.TAG_STUDY_NAME, '')!r}  run {study_run.info.run_id}  "
        f"({tags.get(names.TAG_BACKEND, '?')}, {study_run.info.status})"
    )
    # Counts come from the study run's summary: no scan of its trials, however many.
    prefix = names.METRIC_N_TRIALS_PREFIX
    counts = {
        k[len(prefix) :].upper(): int(v)
        for k, v in study_run.data.metrics.items()
        if k.startswith(prefix) and v
    }
    click.echo(
        f"objective {objective} ({direction}); {sum(counts.values())} trials: "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    )
    click.echo(_table(best, objective))


@cli.command()
@_STUDY
@_EXPERIMENT
@_URI
def report(study: str, experiment_name: str | None, tracking_uri: str | None) -> None:
    """(Re)write the charts of STUDY to its run's reports/ folder."""
    from mlflow_hpo.reports import write_reports

    try:
        written = write_reports(
            study, experiment_name=experiment_name or None, tracking_uri=tracking_uri
        )
    except MlflowHpoError as error:
        raise click.ClickException(str(error)) from error
    for path in written:
        click.echo(path)


@cli.command("export-tensorboard")
@_STUDY
@click.argument("directory")
@_EXPERIMENT
@_URI
def export_tensorboard(
    study: str, directory: str, experiment_name: str | None, tracking_uri: str | None
) -> None:
    """Write STUDY to DIRECTORY in TensorBoard's HParams format (tensorboard --logdir)."""
    from mlflow_hpo.tensorboard import export

    try:
        written = export(
            study, directory, experiment_name=experiment_name or None, tracking_uri=tracking_uri
        )
    except MlflowHpoError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"{len(written)} trials written to {directory}: tensorboard --logdir {directory}")


@cli.command()
@click.argument("study_key", required=False)
@click.option(
    "--tracking-uri",
    default=None,
    help="Store to write to (default: the one each journal was written for). Credentials "
    "come from MLFLOW_TRACKING_USERNAME/PASSWORD or TOKEN: journals never store them.",
)
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait per study.")
def sync(study_key: str | None, tracking_uri: str | None, timeout: float) -> None:
    """Write what the journals still hold (all studies, or STUDY_KEY's) to MLflow.

    Exits with status 1 while anything is still waiting, or was refused by the store.
    """
    from mlflow_hpo._core.sync import sync as run_sync

    results = run_sync(study_key, tracking_uri, timeout)
    if not results:
        click.echo("nothing to sync: no journal" + (f" for {study_key}" if study_key else ""))
        return
    failed = False
    for r in results:
        state = "done" if not r.pending and not r.dead else "NOT DONE"
        click.echo(
            f"{r.study_key}: {state}: {r.pending} writes still waiting, {r.dead} refused, "
            f"{r.ended} orphaned runs ended  ({r.path})"
        )
        for process, count in r.held.items():
            click.echo(
                f"  {count} of them belong to a process that is still running ({process}): it "
                "keeps retrying and writes them itself when the store takes them; run sync "
                "again after it has ended if they are still waiting then"
            )
        for error in r.errors[:5]:
            click.echo(f"  refused: {error}")
        failed = failed or bool(r.pending or r.dead)
    if failed:
        raise SystemExit(1)


def _table(trials: list[Run], objective: str) -> str:
    keys = sorted({k for run in trials for k in run.data.params if k != names.PARAM_TRIAL_NUMBER})
    header = ["trial", "state", objective, *keys]
    rows: list[list[Any]] = []
    for run in trials:
        value = run.data.metrics.get(objective)
        rows.append(
            [
                run.data.params.get(names.PARAM_TRIAL_NUMBER, "?"),
                run.data.tags.get(names.TAG_STATE, run.info.status),
                "" if value is None else f"{value:.6g}",
                *[_short(run.data.params.get(k, "")) for k in keys],
            ]
        )
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True))
        for line in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _short(value: str, limit: int = 24) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"

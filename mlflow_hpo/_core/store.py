"""Writing journal entries to MLflow, each one safe to write again.

One :class:`Store` per tracker, with one explicit ``MlflowClient``. Every entry names the run
it writes to by reference (``study``, ``trial:<key>``); the run ids are resolved here, when
the entry is written, from the journal. Replaying an entry is harmless: a run is looked for
by its study and trial keys before it is created again, params and tags are written with the
same values, and a run's end is set, not toggled.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag

from mlflow_hpo._core import compat, names, parent
from mlflow_hpo._core.journal import Journal, Op, wait_for_file_lock
from mlflow_hpo.errors import MlflowHpoError

STUDY = "study"
ARTIFACT_URIS = 16  # runs whose artifact URI is kept (the study run's, then the latest)


class Store:
    """Executes the entries of one study's journal against one MLflow store.

    Args:
        client: The client of the study's store.
        journal: The study's journal (run ids, the study's experiment).
    """

    def __init__(self, client: MlflowClient, journal: Journal) -> None:
        self.client = client
        self.journal = journal
        self._runs = journal.run_ids()
        meta = journal.meta()
        self.experiment_id: str | None = meta.get("experiment_id")
        self.study_key: str | None = meta.get("study_key")
        self._lock = threading.Lock()
        # Artifact URIs of the runs this store made lately (the study run's is kept): an
        # upload to one of them needs no read of the run first (see compat).
        self._artifact_uris: OrderedDict[str, str] = OrderedDict()
        self._study_artifacts = ("", "")

    # ------------------------------------------------------------------ run ids
    def ready(self, ref: str) -> bool:
        with self._lock:
            return ref in self._runs

    def run_id(self, ref: str) -> str:
        with self._lock:
            run_id = self._runs.get(ref)
        if run_id is None:
            raise MlflowHpoError(f"the run {ref!r} was never created")
        return run_id

    def known(self) -> dict[str, str]:
        with self._lock:
            return dict(self._runs)

    def remember(self, ref: str, run_id: str) -> None:
        with self._lock:
            self._runs[ref] = run_id

    # ------------------------------------------------------------------ artifacts
    def _made(self, run: Run, study: bool = False) -> None:
        """Note the artifact URI of a run this store made or found."""
        run_id, uri = str(run.info.run_id), run.info.artifact_uri
        if not uri:
            return
        with self._lock:
            if study:
                self._study_artifacts = (run_id, uri)
                return
            self._artifact_uris[run_id] = uri
            if len(self._artifact_uris) > ARTIFACT_URIS:
                self._artifact_uris.popitem(last=False)

    def log_artifacts(self, ref: str, local_dir: str, path: str | None = None) -> None:
        """Upload ``local_dir`` to the run ``ref``."""
        run_id = self.run_id(ref)
        with self._lock:
            uri = self._artifact_uris.get(run_id)
            if self._study_artifacts[0] == run_id:
                uri = self._study_artifacts[1]
        repository = None
        if uri is not None:
            repository = compat.artifact_repository(uri, self.client.tracking_uri)
        if repository is None:
            self.client.log_artifacts(run_id, local_dir, path)
        else:
            repository.log_artifacts(local_dir, path)

    # ------------------------------------------------------------------ entries
    def execute(self, op: Op) -> dict[str, str]:
        """Write ``op``; return ``{ref: run_id}`` of a run it created or found."""
        handler = getattr(self, f"_do_{op.kind}", None)
        if handler is None:
            raise MlflowHpoError(f"unknown journal entry {op.kind!r}")
        made: dict[str, str] = handler(op) or {}
        for ref, run_id in made.items():
            self.remember(ref, run_id)
        return made

    def _do_open_study(self, op: Op) -> dict[str, str]:
        p = op.payload
        experiment_id = p.get("experiment_id")
        if p.get("enclosing_run_id"):
            # A nested run must live in its parent's experiment, or the UI cannot nest it.
            experiment_id = self.client.get_run(p["enclosing_run_id"]).info.experiment_id
        if experiment_id is None:
            experiment_id = parent.resolve_experiment(
                self.client, p.get("experiment_name"), p["fallback_name"]
            )
        self.experiment_id = str(experiment_id)
        self.study_key = p["key"]
        self.journal.set_meta({"experiment_id": self.experiment_id, "study_key": p["key"]})
        if not p.get("nested", True) or p.get("experiment_only"):
            op.result = {"experiment_id": self.experiment_id, "run": None, "reused": False}
            return {}
        tags = dict(p["tags"])
        if p.get("enclosing_run_id"):
            tags[names.TAG_PARENT_RUN_ID] = p["enclosing_run_id"]
        run, reused = parent.open_parent(
            self.client,
            self.experiment_id,
            study_name=p["study_name"],
            key=p["key"],
            known_parent_id=p.get("known_parent_id"),
            tags=tags,
            shared=p.get("shared", True) or op.attempts > 1,  # a replay looks first
            settle=p.get("settle", True),
        )
        # A reused parent may live in another experiment: its children go where it is.
        self.experiment_id = str(run.info.experiment_id)
        self.journal.set_meta({"experiment_id": self.experiment_id})
        op.result = {"experiment_id": self.experiment_id, "run": run, "reused": reused}
        self._made(run, study=True)
        return {STUDY: str(run.info.run_id)}

    def _experiment(self, op: Op) -> str:
        experiment_id = op.payload.get("experiment_id") or self.experiment_id
        if experiment_id is None:
            raise MlflowHpoError("the study's experiment is not known yet")
        return str(experiment_id)

    def _do_create_run(self, op: Op) -> dict[str, str]:
        p = op.payload
        experiment_id = self._experiment(op)
        tags = dict(p["tags"])
        if p.get("needs") == STUDY:
            tags[names.TAG_PARENT_RUN_ID] = self.run_id(STUDY)
        if op.attempts > 1 and self.study_key:
            # An earlier attempt may have reached the store before its process died.
            found = parent.find_trial_run(
                self.client, experiment_id, self.study_key, p["trial_key"]
            )
            if found is not None:
                op.result = found
                return {op.ref: str(found.info.run_id)}
        run = self.client.create_run(
            experiment_id, start_time=p.get("start_time"), tags=tags, run_name=p.get("run_name")
        )
        op.result = run
        self._made(run)
        return {op.ref: str(run.info.run_id)}

    def _do_log_batch(self, op: Op) -> None:
        p = op.payload
        self.client.log_batch(
            self.run_id(op.ref),
            metrics=[Metric(k, float(v), int(t), int(s)) for k, v, t, s in p.get("metrics", [])],
            params=[Param(k, v) for k, v in p.get("params", [])],
            tags=[RunTag(k, v) for k, v in p.get("tags", [])],
        )

    def _do_reopen(self, op: Op) -> None:
        """A trial runs again under its run (its search resumed it): RUNNING again."""
        self.client.update_run(self.run_id(op.ref), status="RUNNING")

    def _do_terminate(self, op: Op) -> None:
        p = op.payload
        self.client.set_terminated(self.run_id(op.ref), p["status"], p.get("end_time"))

    def _do_delete_tag(self, op: Op) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_tag(self.run_id(op.ref), op.payload["key"])
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":  # already gone: done
                raise

    def _do_artifacts(self, op: Op) -> None:
        with tempfile.TemporaryDirectory(prefix="mlflow-hpo-") as tmp:
            for name, text in op.payload["files"].items():
                with open(os.path.join(tmp, name), "w") as f:
                    f.write(text)
            self.log_artifacts(op.ref, tmp, op.payload.get("path"))

    def _do_log_inputs(self, op: Op) -> None:
        from mlflow_hpo._core.datasets import log_inputs

        log_inputs(self.client, self.run_id(op.ref), op.payload["inputs"])

    def _do_upload_folder(self, op: Op) -> None:
        import shutil

        folder = op.payload["folder"]
        if os.path.isdir(folder):  # gone: an earlier attempt uploaded it and removed it
            self.log_artifacts(op.ref, folder, op.payload.get("path"))
            shutil.rmtree(folder, ignore_errors=True)

    def _do_summary(self, op: Op) -> None:
        p = op.payload
        study_run = self.run_id(STUDY)
        tags = list(p.get("tags", []))
        best_ref = p.get("best_ref")
        if best_ref:
            best = self._runs.get(best_ref) or self._stored_run_ids().get(best_ref)
            if best:
                tags.append([names.TAG_BEST_TRIAL_RUN_ID, best])
        self.client.log_batch(
            study_run,
            metrics=[Metric(k, float(v), int(t), int(s)) for k, v, t, s in p.get("metrics", [])],
            tags=[RunTag(k, v) for k, v in tags],
        )
        if p.get("tables"):
            self._log_tables(study_run, p["tables"])

    def _log_tables(self, study_run: str, tables: dict[str, str]) -> None:
        """CSV files whose ``run_id`` column is filled in now, by ``trial_key``, from every
        worker's runs (a trial another worker wrote is looked up in the store)."""
        import csv
        import io

        parsed = {name: list(csv.reader(io.StringIO(text))) for name, text in tables.items()}
        run_ids = self.known()
        keys = {row[rows[0].index("trial_key")] for rows in parsed.values() for row in rows[1:]}
        if any(f"trial:{key}" not in run_ids for key in keys):
            run_ids = {**self._stored_run_ids(), **run_ids}  # other workers' trials
        with tempfile.TemporaryDirectory(prefix="mlflow-hpo-") as tmp:
            for name, rows in parsed.items():
                column, key_column = rows[0].index("run_id"), rows[0].index("trial_key")
                for row in rows[1:]:
                    row[column] = run_ids.get(f"trial:{row[key_column]}", "")
                with open(os.path.join(tmp, name), "w", newline="") as f:
                    csv.writer(f).writerows(rows)
            self.log_artifacts(STUDY, tmp)

    def _stored_run_ids(self) -> dict[str, str]:
        """``trial:<key>`` -> run id of every trial run of the study in the store (one paged
        search), including the runs other workers wrote."""
        if STUDY not in self._runs or self.experiment_id is None:
            return {}
        children = parent.child_runs(self.client, self.experiment_id, self._runs[STUDY])
        return {
            f"trial:{c.data.tags[names.TAG_TRIAL_KEY]}": str(c.info.run_id)
            for c in children
            if names.TAG_TRIAL_KEY in c.data.tags
        }

    def _do_worker_warnings(self, op: Op) -> None:
        """This worker's count on the study run, and the total over every worker."""
        study_run = self.run_id(STUDY)
        worker_tag = f"{names.TAG_WORKER_WARNINGS_PREFIX}{op.payload['worker']}"
        self.client.set_tag(study_run, worker_tag, str(op.payload["count"]))
        tags = self.client.get_run(study_run).data.tags
        total = sum(
            int(v)
            for k, v in tags.items()
            if k.startswith(names.TAG_WORKER_WARNINGS_PREFIX) and v.isdigit()
        )
        self.client.set_tag(study_run, names.TAG_LOGGING_WARNINGS, str(total))

    def _do_upload_model(self, op: Op) -> None:
        from mlflow_hpo._core import models

        models.upload(self, op)

    def _do_delete_model(self, op: Op) -> None:
        from mlflow_hpo._core import models

        models.delete(self, op)


def connect(tracking_uri: str | None, uri: str, attempts: int = 5) -> MlflowClient:
    """A client of the store, whose schema MLflow creates on first use.

    Several processes opening one fresh SQLite file at once race through MLflow's schema
    migrations ("duplicate column name", "table already exists"); they take turns here, on a
    lock file beside the database. Any store is retried a few times before giving up.
    """
    import time
    from pathlib import Path

    lock = None
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :].split("?", 1)[0]
        lock = wait_for_file_lock(Path(f"{os.path.abspath(path)}.mlflow-hpo.lock"))
    try:
        for attempt in range(attempts):
            try:
                return MlflowClient(tracking_uri)
            except Exception:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")
    finally:
        if lock is not None:
            lock.close()


_QUIET_LOCK = threading.Lock()
_QUIET_USERS = 0
_QUIET_SAVED: str | None = None
QUIET_URLS = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


def quiet_urls(on: bool) -> None:
    """Ending a run over HTTP makes MLflow fetch the run to print a "View run" link: one
    request more per trial, and one line per trial on stdout. MLflow's documented
    ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT`` turns that off; it is set while a tracker on
    a tracking server is open, and put back as it was when the last one closes."""
    global _QUIET_USERS, _QUIET_SAVED
    with _QUIET_LOCK:
        if on:
            if _QUIET_USERS == 0:
                _QUIET_SAVED = os.environ.get(QUIET_URLS)
                os.environ[QUIET_URLS] = "true"
            _QUIET_USERS += 1
        elif _QUIET_USERS > 0:
            _QUIET_USERS -= 1
            if _QUIET_USERS == 0:
                if _QUIET_SAVED is None:
                    os.environ.pop(QUIET_URLS, None)
                else:
                    os.environ[QUIET_URLS] = _QUIET_SAVED

"""Live fold metrics during a tracked search: the search-process side of ``MlflowScorer``.

A polling thread reads the scorer's fold records from the spool and logs them on the
candidates' child runs (created on a candidate's first fold). Candidates are keyed by their
row in ``cv_results_``: the search's ``evaluate_candidates`` calls are counted (halving
searches and Bayesian searches call it once per iteration or batch), and every record is
drained before the next call starts, so a record always belongs to the current call.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import threading
from typing import Any

from mlflow_hpo import _batch, names
from mlflow_hpo._tracker import StudyTracker
from mlflow_hpo._trial import TrialResult
from mlflow_hpo.sklearn._candidates import plain as _plain
from mlflow_hpo.sklearn._scorer import FoldRecord, MlflowScorer, read_records

POLL_S = 0.5


class LiveFolds:
    """Owns the spool of one ``fit()`` and turns its records into live child-run metrics."""

    def __init__(self, tracker: StudyTracker, scorer: MlflowScorer) -> None:
        self.tracker = tracker
        self.scorer = scorer
        self.spool = tempfile.mkdtemp(prefix="mlflow-hpo-folds-")
        self.offset = 0  # cv_results_ row of the current call's first candidate
        self.candidates: list[dict[str, Any]] = []  # the current call's candidate params
        self.logged: dict[str, set[tuple[str, int]]] = {}  # row key -> (metric, fold) logged
        self.spans: dict[str, tuple[int, int]] = {}  # row key -> (start ms, end ms) seen
        self.tests: dict[str, dict[int, dict[str, float]]] = {}  # row key -> fold -> scores
        self.meta: dict[str, tuple[int, dict[str, Any]]] = {}  # row key -> (n_splits, params)
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="mlflow-hpo-folds", daemon=True)
        scorer.spool = self.spool
        self._thread.start()

    def wrap_run_search(self, run_search: Any) -> Any:
        """``search._run_search`` with each ``evaluate_candidates`` call counted."""

        # scikit-learn >= 1.9 passes callback_ctx only if the signature names it.
        @functools.wraps(run_search)
        def run(evaluate_candidates: Any, *run_args: Any, **run_kwargs: Any) -> Any:
            def evaluate(candidate_params: Any, *args: Any, **kwargs: Any) -> Any:
                params = list(candidate_params)
                with self._lock:
                    self.candidates = params
                try:
                    return evaluate_candidates(params, *args, **kwargs)
                finally:
                    self.drain()
                    with self._lock:
                        self.offset += len(params)
                        self.candidates = []

            return run_search(evaluate, *run_args, **run_kwargs)

        return run

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            self.drain()

    def drain(self) -> None:
        """Log every record in the spool not logged yet (thread-safe)."""
        with self._lock, self.tracker.safety.guard("logging live fold scores"):
            for record in read_records(self.spool, self._seen):
                self._log(record)

    def _log(self, record: FoldRecord) -> None:
        if record.candidate is None or record.fold is None or not self.tracker.active:
            return
        row = self.offset + int(record.candidate)
        key = str(row)
        busy_ms = int(1000 * ((record.fit_time or 0.0) + record.score_time))
        start, end = self.spans.get(key, (record.time_ms - busy_ms, record.time_ms))
        self.spans[key] = (min(start, record.time_ms - busy_ms), max(end, record.time_ms))
        handle = self.tracker.trial(key, row, start)
        values = {f"{record.part}_{k}": v for k, v in record.scores.items()}
        if record.part == "test":
            values["score_time"] = record.score_time
            if record.fit_time is not None:
                values["fit_time"] = record.fit_time
            self.tests.setdefault(key, {})[int(record.fold)] = record.scores
        self.tracker.log_live(handle, values, int(record.fold))
        self.logged.setdefault(key, set()).update((k, int(record.fold)) for k in values)
        if key not in self.meta:  # the candidate's first fold (its run may not exist yet)
            handle.add_output_exceptions(record.output_exceptions)
            index = int(record.candidate)
            params = self.candidates[index] if index < len(self.candidates) else record.params
            self.meta[key] = (int(record.n_splits or 0), dict(params))
            points = _batch.params({k: _plain(v) for k, v in params.items()})
            self.tracker.writer.submit(
                "logging a candidate's params",
                lambda: self.tracker.client.log_batch(handle.run_id, params=points),
            )

    def finish_scored(self) -> None:
        """After an interrupted search: candidates with every fold scored end FINISHED with
        their mean score; the others are left to end KILLED."""
        objective = self.tracker.objective_names[0]
        for key, folds in self.tests.items():
            n_splits, params = self.meta.get(key, (0, {}))
            if not n_splits or len(folds) < n_splits:
                continue
            scores = [f[objective] for f in folds.values() if objective in f]
            start, end = self.spans[key]
            result = TrialResult(
                state=names.STATE_COMPLETE,
                params={k: _plain(v) for k, v in params.items()},
                values={objective: sum(scores) / len(scores)} if scores else {},
                start_ms=start,
                end_ms=end,
            )
            self.tracker.finish(self.tracker.trial(key, int(key), start), result)

    def close(self) -> None:
        """Stop polling, log what is left, and remove the spool."""
        self._stop.set()
        self._thread.join()
        self.drain()
        self.scorer.spool = None
        shutil.rmtree(self.spool, ignore_errors=True)

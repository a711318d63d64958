"""Live fold metrics during a tracked search: the search-process side of ``MlflowScorer``.

A polling thread reads the fold records from the spool and logs them on the candidates'
child runs (created on a candidate's first fold). A record names its ``evaluate_candidates``
call (a halving search makes one per iteration) and the candidate's index in it; calls run
one after the other, so the row of ``cv_results_`` is the number of candidates of the calls
seen before, plus that index.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from typing import Any

from mlflow_hpo._core import names
from mlflow_hpo._core.tracker import StudyTracker
from mlflow_hpo._core.trial import TrialResult
from mlflow_hpo.sklearn._scorer import FoldCallback, FoldRecord, read_records, searched_names

POLL_S = 0.5


class LiveFolds:
    """Owns the spool of one ``fit()`` and turns its records into live child-run metrics."""

    def __init__(self, tracker: StudyTracker, search: Any) -> None:
        self.tracker = tracker
        self.spool = tempfile.mkdtemp(prefix="mlflow-hpo-folds-")
        self.callback = FoldCallback(self.spool, searched_names(search))
        self.logged: dict[str, set[tuple[str, int]]] = {}  # row key -> (metric, fold) logged
        self.spans: dict[str, tuple[int, int]] = {}  # row key -> (start ms, end ms) seen
        self.tests: dict[str, dict[int, dict[str, float]]] = {}  # row key -> fold -> scores
        self.meta: dict[str, tuple[int, dict[str, Any]]] = {}  # row key -> (n_splits, params)
        self._offsets: dict[tuple[int, ...], int] = {}
        self._rows = 0
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="mlflow-hpo-folds", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            self.drain()

    def drain(self) -> None:
        """Log every record in the spool not logged yet (thread-safe)."""
        with self._lock, self.tracker.safety.guard("logging live fold scores"):
            for record in read_records(self.spool, self._seen):
                self._log(record)

    def _row(self, record: FoldRecord) -> int:
        batch_key = tuple(record.batch)
        if batch_key not in self._offsets:
            self._offsets[batch_key] = self._rows
            self._rows += record.batch_size
        return self._offsets[batch_key] + record.candidate

    def _log(self, record: FoldRecord) -> None:
        if not self.tracker.active:
            return
        row = self._row(record)
        key = str(row)
        busy_ms = int(1000 * ((record.fit_time or 0.0) + (record.score_time or 0.0)))
        start, end = self.spans.get(key, (record.time_ms - busy_ms, record.time_ms))
        self.spans[key] = (min(start, record.time_ms - busy_ms), max(end, record.time_ms))
        handle = self.tracker.trial(key, row, start)
        values: dict[str, float] = {}
        for part, scores in record.scores.items():
            values.update({f"{part}_{k}": v for k, v in scores.items()})
        if record.fit_time is not None:
            values["fit_time"] = record.fit_time
        if record.score_time is not None:
            values["score_time"] = record.score_time
        self.tests.setdefault(key, {})[record.fold] = record.scores.get("test", {})
        self.tracker.log_live(handle, values, record.fold)
        self.logged.setdefault(key, set()).update((k, record.fold) for k in values)
        if key not in self.meta:  # the candidate's first fold
            handle.add_output_exceptions(record.output_exceptions)
            self.meta[key] = (record.n_splits, dict(record.params))
            self.tracker.log_params(handle, record.params)

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
                params=params,
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
        shutil.rmtree(self.spool, ignore_errors=True)

"""The study model: one ranking, one count, one trials table for every backend.

"Which trial is best" is decided here and nowhere else: by the tracker while a study runs
(:class:`StudyModel`), and by the registry, the CLI and the reports when they read a study
back from MLflow (:func:`ranked_runs`). Ties go to the earlier trial, as Optuna's
``best_trial`` does. With several objectives, the best trial is the earliest one on the
Pareto front.
"""

from __future__ import annotations

import csv
import io
import math
import threading
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Run

from mlflow_hpo._core import names


def better(a: float, b: float, direction: str) -> bool:
    """Whether ``a`` is strictly better than ``b`` in ``direction``."""
    return a > b if direction == "maximize" else a < b


def dominates(a: list[float], b: list[float], directions: list[str]) -> bool:
    """True when ``a`` is at least as good as ``b`` everywhere and better somewhere."""
    pairs = list(zip(a, b, directions, strict=False))
    no_worse = all(not better(y, x, d) for x, y, d in pairs)
    return no_worse and any(better(x, y, d) for x, y, d in pairs)


def sort_key(value: float | None, direction: str, number: int) -> tuple[bool, float, int]:
    """Best first; trials without a (finite) value last; ties to the earlier trial."""
    if value is None or math.isnan(value):
        return (True, 0.0, number)
    return (False, -value if direction == "maximize" else value, number)


@dataclass(slots=True)  # one per trial: no per-instance dict
class TrialRecord:
    """What the study model keeps of one finished trial."""

    key: str
    number: int
    state: str
    values: list[float] = field(default_factory=list)  # objective values, COMPLETE only
    params: dict[str, Any] = field(default_factory=dict)
    start_ms: int | None = None
    end_ms: int | None = None


class StudyModel:
    """Counts, best trial and Pareto front of a study, kept in O(1) per trial.

    Args:
        directions: ``"maximize"``/``"minimize"``, one per objective.
        objectives: The objective metric keys, one per objective.
    """

    def __init__(self, directions: list[str], objectives: list[str]) -> None:
        self.directions = list(directions)
        self.objectives = list(objectives)
        self._records: dict[str, TrialRecord] = {}
        self._counts: dict[str, int] = {}
        self._best: TrialRecord | None = None
        self._front: list[TrialRecord] = []
        self._lock = threading.Lock()

    def add(self, record: TrialRecord) -> bool:
        """Record a finished trial (again: replaced); return whether it is a new best."""
        with self._lock:
            old = self._records.get(record.key)
            if old is not None:
                self._counts[old.state] -= 1
            self._records[record.key] = record
            self._counts[record.state] = self._counts.get(record.state, 0) + 1
            if record.state != names.STATE_COMPLETE or len(record.values) < len(self.directions):
                return False
            if len(self.directions) == 1:
                best = self._best
                improved = best is None or sort_key(
                    record.values[0], self.directions[0], record.number
                ) < sort_key(best.values[0], self.directions[0], best.number)
                if improved:
                    self._best = record
                return improved
            if any(dominates(f.values, record.values, self.directions) for f in self._front):
                return False
            self._front = [
                f for f in self._front if not dominates(record.values, f.values, self.directions)
            ]
            self._front.append(record)
            self._front.sort(key=lambda r: r.number)
            return self._front[0] is record

    def best(self) -> TrialRecord | None:
        """The best trial (several objectives: the earliest on the Pareto front)."""
        with self._lock:
            if len(self.directions) == 1:
                return self._best
            return self._front[0] if self._front else None

    def front(self) -> list[TrialRecord]:
        with self._lock:
            return list(self._front) if len(self.directions) > 1 else []

    def counts(self) -> dict[str, int]:
        """Trials per state; every neutral state is listed, zeros included, so a count
        from an earlier summary never lingers."""
        with self._lock:
            out = {s: 0 for s in names.RUN_STATUS_FOR_STATE}
            out.update({s: n for s, n in self._counts.items() if n})
            return out

    def summary(self) -> tuple[dict[str, float], dict[str, Any], str | None]:
        """``(metrics, tags, best trial key)`` the study run shows: counts per state, the
        best trial's values, number and params, and the Pareto front."""
        metrics: dict[str, float] = {
            f"{names.METRIC_N_TRIALS_PREFIX}{state.lower()}": n
            for state, n in self.counts().items()
        }
        tags: dict[str, Any] = {}
        best = self.best()
        if best is not None:
            for name, value in zip(self.objectives, best.values, strict=False):
                metrics[f"{names.METRIC_BEST_PREFIX}{name}"] = value
            tags[names.TAG_BEST_TRIAL_NUMBER] = best.number
            tags.update({f"{names.TAG_BEST_PARAM_PREFIX}{k}": v for k, v in best.params.items()})
        front = self.front()
        if front:
            tags[names.TAG_PARETO_TRIALS] = ",".join(str(r.number) for r in front)
        return metrics, tags, best.key if best is not None else None

    def __len__(self) -> int:
        return len(self._records)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._records)

    def table(self, run_ids: dict[str, str]) -> str:
        """``trials.csv``: one row per trial, in trial order, with its run id."""
        with self._lock:
            records = sorted(self._records.values(), key=lambda r: (r.number, r.key))
        params = sorted({p for r in records for p in r.params})
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(
            ["number", "trial_key", "run_id", "state", *self.objectives, "duration_s"]
            + [f"params_{p}" for p in params]
        )
        for r in records:
            values = list(r.values) + [None] * (len(self.objectives) - len(r.values))
            duration = (
                (r.end_ms - r.start_ms) / 1000.0
                if r.start_ms is not None and r.end_ms is not None
                else None
            )
            writer.writerow(
                [r.number, r.key, run_ids.get(r.key, ""), r.state, *values, duration]
                + [r.params.get(p, "") for p in params]
            )
        return buffer.getvalue()


def study_objective(study: Run) -> tuple[str, str]:
    """``(objective, direction)`` a study run records: its first objective and direction."""
    tags = study.data.tags
    objective = tags.get(names.TAG_OBJECTIVES, "value").split(",")[0]
    return objective, tags.get(names.TAG_DIRECTIONS, "minimize").split(",")[0]


def ranked_runs(trials: list[Run], objective: str, direction: str) -> list[Run]:
    """Trial runs best first by ``objective`` (the same order :class:`StudyModel` uses)."""

    def key(run: Run) -> tuple[bool, float, int]:
        number = int(float(run.data.params.get(names.PARAM_TRIAL_NUMBER, 0)))
        return sort_key(run.data.metrics.get(objective), direction, number)

    return sorted(trials, key=key)

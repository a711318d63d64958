"""A one-line progress display for long studies: trials done, best so far, ETA.

Rewritten in place (``\\r``) on the terminal, so it never floods a log. It stays quiet with
``verbose=0`` and whenever stderr is not a terminal (CI logs, ``nohup``, redirected output).
"""

from __future__ import annotations

import sys
import threading
import time


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Counts finished trials and shows the line (thread-safe).

    Args:
        verbose: ``0`` never shows anything.
        total: Trials expected in this session, if the backend knows (for the ETA).
    """

    def __init__(self, verbose: int = 1, total: int | None = None) -> None:
        self.verbose = verbose
        self.total = total
        self.done = 0
        self.best: float | None = None
        self.label = ""
        self.objective = "value"
        self.maximize = True
        self._start = time.monotonic()
        self._width = 0
        self._lock = threading.Lock()

    def start(self, label: str, objective: str, maximize: bool) -> None:
        """A new session (e.g. the next ``fit()`` of a tracked search) counts from zero."""
        with self._lock:
            self.label, self.objective, self.maximize = label, objective, maximize
            self.done, self.best = 0, None
            self._start = time.monotonic()

    @property
    def shown(self) -> bool:
        stream = sys.stderr
        return self.verbose > 0 and hasattr(stream, "isatty") and stream.isatty()

    def trial_done(self, value: float | None, objective: str | None = None) -> None:
        with self._lock:
            self.done += 1
            self.objective = objective or self.objective
            if value is not None and (
                self.best is None or (value > self.best if self.maximize else value < self.best)
            ):
                self.best = value
            if self.shown:
                self._write("\r" + self.line())

    def line(self) -> str:
        elapsed = time.monotonic() - self._start
        count = f"{self.done}/{self.total}" if self.total else str(self.done)
        parts = [f"[mlflow-hpo] {self.label}: {count} trials"]
        if self.best is not None:
            parts.append(f"best {self.objective} {self.best:.4g}")
        if self.total and self.done and self.done < self.total:
            eta = elapsed / self.done * (self.total - self.done)
            parts.append(f"ETA {_duration(eta)}")
        else:
            parts.append(f"{_duration(elapsed)} elapsed")
        return ", ".join(parts)

    def _write(self, text: str) -> None:
        visible = len(text) - 1
        padding = " " * max(0, self._width - visible)
        self._width = max(self._width, visible)
        sys.stderr.write(text + padding)
        sys.stderr.flush()

    def close(self) -> None:
        """End the line (the next output starts on its own line)."""
        with self._lock:
            if self._width and self.shown:
                sys.stderr.write("\n")
                sys.stderr.flush()
            self._width = 0

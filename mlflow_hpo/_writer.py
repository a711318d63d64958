"""Ordered execution of store writes, inline or on one background thread.

``synchronous=True`` runs each write at once in the caller's thread. ``synchronous=False``
(MLflow's own word for it) queues writes to one daemon thread, in submission order, so the
next trial trains while the previous one is written. :meth:`RunWriter.flush` waits for the
queue; closing a study flushes, and so does interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from mlflow_hpo._safety import Safety

_Task = tuple[str, Callable[[], Any]]
LINGER_S = 0.01
_LIVE_WRITERS: weakref.WeakSet[RunWriter] = weakref.WeakSet()


class RunWriter:
    """Runs store writes under the safety contract, inline or in the background.

    Args:
        safety: Where failures are reported.
        synchronous: Write inline (``True``) or on a background thread (``False``).
    """

    def __init__(self, safety: Safety, synchronous: bool = True) -> None:
        self.safety = safety
        self.synchronous = synchronous
        self._queue: queue.Queue[_Task | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._deferred: BaseException | None = None
        _LIVE_WRITERS.add(self)

    def submit(self, what: str, task: Callable[[], Any]) -> None:
        """Run ``task`` now, or queue it; an exception in it becomes a warning."""
        if self.synchronous:
            with self.safety.guard(what):
                task()
            return
        self._ensure_thread()
        self._queue.put((what, task))

    def flush(self) -> None:
        """Block until every queued write has been attempted.

        Raises:
            Exception: In strict mode, the first error a background write hit.
        """
        if self._thread is not None and self._thread.is_alive():
            self._queue.join()
        error, self._deferred = self._deferred, None
        if error is not None:
            raise error

    def close(self) -> None:
        """Flush and stop the background thread (it is restarted on the next submit)."""
        self.flush()
        with self._start_lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join()

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._work, name="mlflow-hpo-writer", daemon=True
                )
                self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is not None and self._queue.qsize() == 0:
                # Linger briefly after a burst starts: the caller is usually finishing its own
                # bookkeeping (Optuna's tell/ask, the sampler) right after submitting, and
                # competing with it for the GIL would slow the search more than a short wait
                # slows the writes.
                time.sleep(LINGER_S)
            try:
                if item is None:
                    return
                what, task = item
                try:
                    task()
                except Exception as error:
                    try:
                        self.safety.report(what, error)
                    except Exception as strict_error:
                        # Strict mode cannot raise across threads: flush() raises it.
                        self._deferred = self._deferred or strict_error
            finally:
                self._queue.task_done()


@atexit.register
def _flush_all_writers() -> None:
    for writer in list(_LIVE_WRITERS):
        with contextlib.suppress(Exception):  # nothing left to report to at exit
            writer.flush()

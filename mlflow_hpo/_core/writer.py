"""The writer: carries the journal to the store, in order, and retries what failed.

Entries are appended to the journal first, then written by a small pool of threads: one for
a database store (SQLite allows one writer), a few for a tracking server, where requests
overlap. Entries of one run are written in order; a study summary waits for everything
before it; a trial run waits for its study run. A running trial's live metrics are held
briefly and consecutive batches of one run written as one (see ``coalesce``).

``synchronous=True`` waits for the store after each submission, but never longer than
``WAIT_CAP`` seconds: a store that is down or slow is left to the journal and the search
goes on, and the writer catches up when the store is back. A write that fails for a reason
that can pass (the store is unreachable, busy or restarting) is retried with backoff; a
write the store refuses (bad data) is kept in the journal as *dead* with its error and
reported. Each failed write is counted once on the safety counter; one warning is shown per
outage, not per write.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator

from mlflow_hpo._core import coalesce
from mlflow_hpo._core.journal import DEAD, DONE, Journal, Op, Owner
from mlflow_hpo._core.safety import Safety, transient, warn
from mlflow_hpo._core.secrets import redact

WAIT_CAP = 10.0  # seconds a synchronous write may hold up the search
# Non-blocking: a finished trial's writes wait this long, so that they do not compete for the
# GIL with the tuning library's sampler, which runs then (Optuna's TPE inside suggest_*).
SETTLE_S = 0.01
BACKOFF_MAX = 10.0
PRUNE_EVERY = 500
BARRIERS = frozenset({"summary"})
# Not idempotent: a replay looks for what an earlier attempt may have made.
ATTEMPTED = frozenset({"create_run", "open_study", "upload_model"})
CREATES = frozenset({"create_run", "open_study"})
_LIVE: weakref.WeakSet[Writer] = weakref.WeakSet()


class Writer:
    """Drains one study's journal to the store.

    Args:
        journal: The study's journal.
        execute: Writes one entry to the store; returns ``{ref: run_id}`` for runs it made.
        ready: ``ready(ref)``: whether the run ``ref`` exists (a trial waits for its study).
        safety: Where failed writes are counted.
        synchronous: Wait for the store after each submission (bounded by ``WAIT_CAP``).
        workers: Concurrent writes (1 for a database store).
    """

    def __init__(
        self,
        journal: Journal,
        execute: Callable[[Op], dict[str, str]],
        ready: Callable[[str], bool],
        safety: Safety,
        *,
        synchronous: bool = True,
        workers: int = 1,
    ) -> None:
        self.journal = journal
        self.owner = Owner()
        self._execute = execute
        self._ready = ready
        self.safety = safety
        self.synchronous = synchronous
        self.workers = workers
        self.behind = False  # the store is down or a backlog waits: do not wait for it
        # Pending entries in order; a dict keeps insertion order and removes in O(1), so a
        # backlog of thousands of writes (an outage, a 10k-trial study) stays cheap.
        self._queue: dict[int, Op] = {}
        self._order = 0
        self._inflight: set[str] = set()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._halted = False  # stop after the write in flight, leaving the rest journalled
        self._pause_until = 0.0
        self._hold_until = 0.0  # see SETTLE_S
        self._waiters = 0  # threads waiting for writes: nothing is held meanwhile
        self._failures = 0
        self._in_outage = False
        self._since_prune = 0
        self._deferred: BaseException | None = None
        _LIVE.add(self)

    # ----------------------------------------------------------------- submitting
    def submit(self, ops: list[Op], *, wait: bool | None = None, settle: bool = False) -> bool:
        """Journal ``ops`` and queue them; in synchronous mode wait for them (bounded).

        ``settle``: a finished trial's writes, which a writer that is idle (caught up) starts
        after ``SETTLE_S`` (non-blocking only; a flush or a wait starts them at once).

        Returns whether they are all in the store (or dead) already.

        Raises:
            Exception: Strict mode only, the store's refusal of one of them.
        """
        if not ops:
            return True
        with self._cond:
            idle = not self._queue and not self._inflight
            self.journal.append(ops, self.owner.id)
            self._enqueue(ops)
            if settle and idle and not self.synchronous:
                self._hold_until = time.monotonic() + SETTLE_S
            self._ensure_threads()
            self._cond.notify_all()
        waiting = self.synchronous if wait is None else wait
        if not waiting or self.behind:
            return False
        finished = self.wait(ops, WAIT_CAP)
        if not finished:
            self.behind = True
            self._outage(f"it did not answer within {WAIT_CAP:g}s")
        self._raise_deferred()
        return finished

    def adopt(self) -> int:
        """Queue the pending entries of dead writers of this study (and our own leftovers)."""
        taken = self.journal.adopt(self.owner.id)
        with self._cond:
            queued = {op.seq for op in self._queue.values()}
            leftovers = [op for op in self.journal.pending(self.owner.id) if op.seq not in queued]
            if leftovers:  # written before anything queued after them
                mine = list(self._queue.values())
                self._queue.clear()
                self._enqueue(sorted([*mine, *leftovers], key=lambda o: o.seq or 1 << 62))
                self._ensure_threads()
                self._cond.notify_all()
        return taken + len(leftovers)

    def _enqueue(self, ops: list[Op]) -> None:
        now = time.monotonic()
        for op in ops:
            self._order += 1
            self._queue[self._order] = op
            op.slot = self._order
            op.queued = now

    def release(self) -> None:
        """Start the writes held back by ``settle`` now."""
        with self._cond:
            if self._hold_until:
                self._hold_until = 0.0
                self._cond.notify_all()

    def wait(self, ops: list[Op], timeout: float) -> bool:
        self.release()
        deadline = time.monotonic() + timeout
        with self._waiting():
            while any(op.state not in (DONE, DEAD) for op in ops):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    @contextlib.contextmanager
    def _waiting(self) -> Iterator[None]:
        """Hold the lock as a waiter: nothing is held back (``coalesce``) meanwhile."""
        with self._cond:
            self._waiters += 1
            self._cond.notify_all()
            try:
                yield
            finally:
                self._waiters -= 1

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the queue is empty; ``False`` if ``timeout`` passed first.

        Raises:
            Exception: Strict mode only, the first write the store refused.
        """
        self.release()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._waiting():
            while self._queue:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left if left is not None else 1.0)
            drained = not self._queue
        self._raise_deferred()
        return drained

    def close(self, timeout: float) -> bool:
        """Flush (bounded) and stop; ``True`` if nothing is left in the journal's queue.

        A writer that could not drain keeps its owner lock until the process ends, so no
        other process replays what one of its threads may still be writing.
        """
        drained = False
        try:
            drained = self.flush(timeout)
        finally:
            with self._cond:
                self._stopping = drained
                self._cond.notify_all()
            if drained:
                for thread in self._threads:
                    thread.join(timeout=5)
                self._threads = []
                self._stopping = False
                self.owner.release()
                with contextlib.suppress(Exception):
                    self.journal.prune()
        return drained

    def halt(self, grace: float) -> bool:
        """Stop writing: the writes in flight finish (within ``grace`` seconds), the rest
        stay in the journal for the next writer. ``True`` if every thread has stopped, after
        which the journal may be closed."""
        with self._cond:
            self._halted = True
            self._cond.notify_all()
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]
        return not self._threads

    def _raise_deferred(self) -> None:
        error, self._deferred = self._deferred, None
        if error is not None:
            raise error

    # -------------------------------------------------------------------- writing
    def _ensure_threads(self) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        while len(self._threads) < self.workers:
            thread = threading.Thread(target=self._work, name="mlflow-hpo-writer", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _pick(self) -> list[Op] | None:
        holding = not self._waiters
        return coalesce.pick(self._queue, self._inflight, self._ready, BARRIERS, holding)

    def _work(self) -> None:
        while True:
            with self._cond:
                group = None
                while group is None:
                    if self._halted or (self._stopping and not self._queue):
                        return
                    wait = max(self._pause_until, self._hold_until) - time.monotonic()
                    if wait > 0:
                        self._cond.wait(wait)
                        continue
                    group = self._pick()
                    if group is None:
                        self._cond.wait(0.25 if self._queue else 1.0)  # a held entry is due
                self._inflight.add(group[0].ref)
                for op in group:
                    op.state = -1  # in flight
            try:
                self._write_group(group)
            finally:
                with self._cond:
                    self._inflight.discard(group[0].ref)
                    for op in group:
                        if op.state == -1:
                            op.state = 0
                        if op.state in (DONE, DEAD):
                            self._queue.pop(op.slot, None)
                    if not self._queue:
                        self.behind = False
                    self._cond.notify_all()

    def _write_group(self, group: list[Op]) -> None:
        """Consecutive batches of one run in one write; one by one if the store refuses it
        (so that only the entry it refuses is buried) or if one fails on the way."""
        if len(group) == 1:
            self._write(group[0])
            return
        try:
            self._execute(coalesce.merge(group))
            self.journal.finish(group)
        except Exception as error:
            if transient(error):
                self._retry_later(group[0], error)
                return
            for op in group:
                self._write(op)
                if op.state not in (DONE, DEAD):
                    return  # to be retried: the rest waits behind it
            return
        for op in group:
            op.state = DONE
        with self._cond:
            self._failures = 0
            self._in_outage = False

    def _write(self, op: Op) -> None:
        if op.task is not None:
            try:
                op.task()
            except Exception as error:  # our own step (e.g. saving a model): report it
                self._report(op, error)
            op.state = DONE
            return
        try:
            if op.kind in ATTEMPTED:
                self.journal.attempt(op)
            run_ids = self._execute(op)
            self.journal.finish([op], run_ids)
        except Exception as error:
            if transient(error):
                self._retry_later(op, error)
            else:
                self._bury(op, error)
            return
        op.state = DONE
        with self._cond:
            self._failures = 0
            self._in_outage = False
        self._since_prune += 1
        if self._since_prune >= PRUNE_EVERY:
            self._since_prune = 0
            with contextlib.suppress(Exception):
                self.journal.prune()

    def _retry_later(self, op: Op, error: BaseException) -> None:
        text = redact(f"{type(error).__name__}: {error}")
        with contextlib.suppress(Exception):
            self.journal.failed(op, text)
        with self._cond:
            self.behind = True
            self._failures += 1
            delay = min(BACKOFF_MAX, 0.25 * 2 ** (self._failures - 1))
            self._pause_until = time.monotonic() + delay
            if not op.counted:
                op.counted = True
                self.safety.count()
        self._outage(text)

    def _outage(self, why: str) -> None:
        """Say once per outage that the store is not taking writes (and count it)."""
        with self._cond:
            first, self._in_outage = not self._in_outage, True
        if first:
            self.safety.count()
            if not self.safety.strict:
                warn(
                    f"mlflow-hpo: the tracking store could not be written ({why}). The search "
                    f"goes on; its writes wait in the journal {self.journal.path} and are "
                    "retried until the store is back."
                )

    def _bury(self, op: Op, error: BaseException) -> None:
        text = redact(f"{type(error).__name__}: {error}")
        with contextlib.suppress(Exception):
            self.journal.failed(op, text, dead=True)
        op.state = DEAD
        op.result = error
        if op.kind in CREATES:  # nothing else of that run can be written
            with self._cond:
                orphans = [o for o in self._queue.values() if o.ref == op.ref and o.state == 0]
                for other in orphans:
                    other.state = DEAD
                    self._queue.pop(other.slot, None)
                    with contextlib.suppress(Exception):
                        self.journal.failed(other, f"its run was not created: {text}", dead=True)
        self._report(op, error)

    def _report(self, op: Op, error: BaseException) -> None:
        if self.safety.strict:
            self.safety.count()
            self._deferred = self._deferred or error
            return
        try:
            self.safety.report(f"writing {op.kind} of {op.ref}", error)
        except Exception as raised:  # a ConfigurationError: the caller must see it
            self._deferred = self._deferred or raised


@atexit.register
def _flush_at_exit() -> None:
    for writer in list(_LIVE):
        with contextlib.suppress(BaseException):
            writer.flush(timeout=5.0)

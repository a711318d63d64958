"""Which queued entries the writer writes next, and which together.

:func:`pick` keeps the writer's order rules: entries of one run in order, nothing overtakes
a study summary (it waits for everything before it), an entry that needs its study run
waits for it.

Live metrics of a running trial are merged into fewer store writes.

A Keras epoch, a scikit-learn fold or an Optuna report is journalled at once and written
live, but a running trial's live metrics wait up to ``LIVE_HOLD_S`` in the writer's queue for
the next ones: entries of one run that follow each other are then written as one
``log_batch``, within MLflow's batch limits. A trial whose epochs take a fraction of a second
reaches the store in a few writes instead of one per epoch (each a committed transaction on
SQLite, a request over HTTP), and none of them competes with the training loop for the
interpreter lock. An epoch longer than the hold is written as it ends, as before.

Nothing is held once a later entry of the same run is queued (the trial's end), nor while
anyone waits for the writer (a synchronous trial, a flush, the close).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator

from mlflow.utils import validation

from mlflow_hpo._core.journal import PENDING, Op

LIVE_HOLD_S = 2.0
LOOKAHEAD = 256  # queued entries looked at past the one picked (a backlog stays cheap)
LIVE = "live"  # payload key of a live entry
_SECTIONS = ("metrics", "params", "tags")


def pick(
    queue: dict[int, Op],
    inflight: set[str],
    ready: Callable[[str], bool],
    barriers: frozenset[str],
    holding: bool,
) -> list[Op] | None:
    """The next entry of ``queue`` that may be written, with those written together with it;
    ``holding``: young live entries may wait (nobody waits for the writer)."""
    blocked: set[str] = set()
    now = time.monotonic()

    def after(index: int) -> Iterator[Op]:  # a backlog stays cheap: LOOKAHEAD at most
        return itertools.islice(queue.values(), index + 1, index + 1 + LOOKAHEAD)

    for index, op in enumerate(queue.values()):
        if op.kind in barriers:
            if index == 0 and not inflight:
                return [op]
            return None  # nothing overtakes a summary
        if op.ref in inflight or op.ref in blocked or op.state < 0:
            blocked.add(op.ref)
            continue
        needs = op.payload.get("needs") if op.task is None else None
        if (needs and not ready(needs)) or (holding and held(op, after(index), now, barriers)):
            blocked.add(op.ref)
            continue
        return [op, *followers(op, after(index), barriers)]
    return None


def is_live(op: Op) -> bool:
    return op.kind == "log_batch" and bool(op.payload.get(LIVE))


def held(op: Op, later: Iterable[Op], now: float, barriers: frozenset[str]) -> bool:
    """Whether the live entry ``op`` still waits: young, with nothing else of its run after
    it, and no barrier (a summary, which waits for everything before it)."""
    if not is_live(op) or now - op.queued >= LIVE_HOLD_S:
        return False
    return all((o.ref != op.ref or is_live(o)) and o.kind not in barriers for o in later)


def followers(first: Op, later: Iterable[Op], barriers: frozenset[str]) -> list[Op]:
    """The entries written with ``first`` (a ``log_batch``): the ``log_batch`` entries of its
    run among those queued ``later``, up to the first other entry of that run or a barrier."""
    if first.kind != "log_batch" or first.task is not None:
        return []
    sizes = _sizes(first)
    out: list[Op] = []
    for op in later:
        if op.kind in barriers:
            break
        if op.ref != first.ref:
            continue
        if op.kind != "log_batch" or op.task is not None or op.state != PENDING:
            break
        grown = [a + b for a, b in zip(sizes, _sizes(op), strict=True)]
        if not _fits(grown) or _clashes(first, out, op):
            break
        sizes = grown
        out.append(op)
    return out


def merge(ops: list[Op]) -> Op:
    """One ``log_batch`` entry holding every entry of ``ops`` (of one run), in order."""
    payload: dict[str, list[list[object]]] = {s: [] for s in _SECTIONS}
    for op in ops:
        for section in _SECTIONS:
            payload[section].extend(op.payload.get(section, []))
    return Op(ops[0].ref, "log_batch", {k: v for k, v in payload.items() if v})


def _sizes(op: Op) -> list[int]:
    return [len(op.payload.get(s, [])) for s in _SECTIONS]


def _fits(sizes: list[int]) -> bool:
    metrics, params, tags = sizes
    return (
        metrics <= validation.MAX_METRICS_PER_BATCH
        and params + tags <= validation.MAX_PARAMS_TAGS_PER_BATCH
        and metrics + params + tags <= validation.MAX_ENTITIES_PER_BATCH
    )


def _clashes(first: Op, merged: list[Op], op: Op) -> bool:
    """A param or tag key twice in one batch: MLflow refuses the whole batch."""
    for section in ("params", "tags"):
        new = {k for k, _ in op.payload.get(section, [])}
        if new and any(k in new for o in (first, *merged) for k, _ in o.payload.get(section, [])):
            return True
    return False

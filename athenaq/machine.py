"""The machine: the one writer of a query's state.

What clients ask (commands.py), Athena's observations (the poller) and stored results
(storing.py) change a query only through `Machine.apply`, which checks the transition table
(athenaq/states.py) and writes the move with a compare-and-set in the store.
Transitions of one query are also serialized in this process by a per-id lock: the
lock saves work, the SQL guard keeps several processes correct.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from athenaq import metrics
from athenaq.athena import Execution
from athenaq.clock import in_order, utcnow
from athenaq.errors import (
    TooManyQueries,
)
from athenaq.identity import POLLER, TIMEOUT, Caller
from athenaq.schemas import STATUS
from athenaq.states import (
    NO_OPTIONS,
    Event,
    Idempotency,
    Lease,
    QueryRecord,
    QueryState,
    SubmitOptions,
    next_state,
)
from athenaq.store import Store
from athenaq.store.deliveries import Callback
from athenaq.store.keys import RunningLimitReached
from athenaq.store.moves import Move
from athenaq.tasks import KeyedLock

Q = QueryState
# How often an operation re-reads and tries again when another process changed the query.
RACE_RETRIES = 5
# When a caller at its max_running may try again: queries take seconds at the least.
RUNNING_LIMIT_RETRY_SECONDS = 5
# The state_reason of a query that ran past its timeout_seconds.
TIMEOUT_REASON = "timed out after {seconds} s"
# A query's times after its submitted_at, in the order of its life (see _times_in_order).
TIMES = ("started_at", "completed_at", "results_at")


class Machine:
    """Drives queries through their states; the only writer of `state`."""

    def __init__(
        self,
        store: Store,
        *,
        lease: Lease,
        moved: Callable[[QueryRecord], None] | None = None,
        status: Callable[[QueryRecord], Mapping[str, Any]] = STATUS.dump,
    ) -> None:
        """`moved` is called with the record of every move this machine writes (the
        long-poll watcher wakes its waiters with it); it must not raise. `status` makes
        a query's status object, as `GET /query/<id>/status` shows it: the body of the
        webhook delivery a finished run of a query with a callback_url gets."""
        self.store = store
        self.status = status
        # This process's: a query it submits or refreshes is its own to start and poll.
        self.lease = lease
        self.moved = moved
        self.lock = KeyedLock()

    # -- the single writer --------------------------------------------------------------

    async def apply(
        self,
        current: QueryRecord,
        event: Event,
        *,
        by: str,
        reason: str | None = None,
        changes: Mapping[str, Any] | None = None,
        running_limit: int | None = None,
        log: Mapping[str, Any] | None = None,
    ) -> QueryRecord | None:
        """Apply `event`, caused by `by` (a key's name, "poller"), to the query as last
        read (`current`).

        Raises IllegalTransition when the table forbids the move, TooManyQueries when it
        would make the owner's unfinished queries more than `running_limit`. Returns the
        new record, or None when another writer changed the query since it was read (the
        compare-and-set lost): the caller re-reads and decides again. The query's times
        are written in the order of its life (_times_in_order). `log`: fields the move's
        `state changed` line carries besides its own."""
        step = Step(current, event, reason, changes or {}, log or {})
        move = self._move(step)
        try:
            moved = await self.store.transition(
                current,
                move.to_state,
                reason,
                dict(move.changes),
                by=by,
                running_limit=running_limit,
                callback=move.callback,
            )
        except RunningLimitReached as exc:
            raise _too_many(exc) from None
        return self._moved(step, move, moved, by)

    async def apply_all(self, steps: Sequence[Step], *, by: str) -> list[QueryRecord | None]:
        """`apply` each step, all written in one transaction (Store.transitions: at most
        MAX_MOVES, setting only the columns of an execution's outcome): each step's new
        record, or None where its compare-and-set lost, as `apply` returns them. A step
        that loses does not keep the others from being written. Takes no per-id lock: the
        compare-and-set alone keeps a step from overwriting another writer's change.
        Raises IllegalTransition, before anything is written, when the table forbids a
        step's move."""
        batch = [self._move(step) for step in steps]
        written = await self.store.transitions(batch, by=by)
        return [
            self._moved(step, move, moved, by)
            for step, move, moved in zip(steps, batch, written, strict=True)
        ]

    def _move(self, step: Step) -> Move:
        """What `step` writes: its state, the columns with its times in order and its
        state_reason, the webhook delivery it makes."""
        current = step.current
        target = next_state(current.state, step.event)
        columns = _times_in_order(current, target, dict(step.changes))
        columns["state_reason"] = step.reason if target in (Q.FAILED, Q.CANCELLED) else None
        callback = self.callback(current, target, columns)
        return Move(current, target, step.reason, columns, callback)

    def _moved(self, step: Step, move: Move, moved: bool, by: str) -> QueryRecord | None:
        """Log the outcome of `step`'s write; the new record, told to the `moved` hook,
        when it was written."""
        current = move.current
        fields = {"query_id": current.id, "event": step.event.value, "by": by}
        if not moved:
            logger.info("transition lost a race", state=current.state.value, **fields)
            return None
        metrics.TRANSITIONS.labels(step.event.value).inc()
        logger.info(
            "state changed",
            athena_query_execution_id=move.changes.get(
                "athena_execution_id", current.athena_execution_id
            ),
            from_state=current.state.value,
            state=move.to_state.value,
            reason=step.reason,
            **fields,
            **step.log,
        )
        record = dataclasses.replace(
            current, state=move.to_state, version=current.version + 1, **move.changes
        )
        if self.moved is not None:
            self.moved(record)
        return record

    def callback(
        self, current: QueryRecord, target: QueryState, columns: Mapping[str, Any]
    ) -> Callback | None:
        """The webhook delivery that the move of `current` to `target`, setting `columns`,
        makes, written with the move: the status object the query then has, for its
        callback_url. None unless the move finishes a run of a query with a callback_url."""
        if current.callback_url is None or not target.is_finished:
            return None
        after = dataclasses.replace(current, state=target, version=current.version + 1, **columns)
        body = json.dumps(self.status(after), ensure_ascii=False)
        return Callback(current.id, after.run, target, current.callback_url, body)

    # -- a new query ------------------------------------------------------------------

    async def create(
        self,
        sql: str,
        database: str,
        workgroup: str,
        caller: Caller,
        options: SubmitOptions = NO_OPTIONS,
        idempotency: Idempotency | None = None,
    ) -> QueryRecord:
        """Record a new QUEUED query of `caller`, held by this process, which starts it;
        with `idempotency`, its Idempotency-Key with it.

        Raises TooManyQueries when the owner has its max_running unfinished queries, and
        store.idempotent.IdempotencyKeyTaken when the owner's key is taken."""
        try:
            record = await self.store.create(
                str(uuid.uuid4()),
                sql,
                database,
                workgroup,
                reason="submitted",
                owner=caller.name,
                options=options,
                running_limit=caller.max_running,
                lease_holder=self.lease.holder,
                lease_expires_at=self.lease.expires(utcnow()),
                idempotency=idempotency,
            )
        except RunningLimitReached as exc:
            raise _too_many(exc) from None
        metrics.TRANSITIONS.labels(metrics.SUBMIT).inc()
        logger.info(
            "state changed",
            query_id=record.id,
            state=record.state.value,
            event="submit",
            by=caller.name,
        )
        return record

    # -- what the poller reports ------------------------------------------------------

    async def observe(
        self, query_id: str, execution: Execution, known: QueryRecord | None = None
    ) -> QueryRecord | None:
        """Feed Athena's view of the query's current execution into the machine.

        `known` is the query as the caller read it a moment ago (the poller's claim): the
        move is tried on it without reading the query again, and only a lost
        compare-and-set (another writer changed it since) costs a read and a second try.
        Returns the query as it now stands when Athena says SUCCEEDED and the results
        must be stored; None otherwise."""
        execution_id = execution.execution_id
        async with self.lock(query_id):
            if known is not None and tracks(known, execution_id):
                try:
                    return await self._observed(known, execution)
                except _RaceLost:
                    pass  # another writer changed it since: read it and decide again
            current = await self.tracking(query_id, execution_id)
            if current is None:
                return None  # a stale observation: refreshed or finished meanwhile
            try:
                return await self._observed(current, execution)
            except _RaceLost:
                return None  # the next tick sees what the other writer made of it

    async def _observed(self, current: QueryRecord, execution: Execution) -> QueryRecord | None:
        """Apply Athena's view to `current`: the record to store results for (SUCCEEDED),
        None when nothing more is to be done; _RaceLost when the compare-and-set lost."""
        if execution.state in (Q.RUNNING, Q.SUCCEEDED) and current.state == Q.QUEUED:
            # Athena's start when it says, else now: the end's statistics may tell it later.
            running = await self.apply(
                current,
                Event.RUN,
                by=POLLER,
                reason=f"Athena reports {execution.state}",
                changes={"started_at": execution.started_at or utcnow()},
            )
            if running is None:
                raise _RaceLost
            current = running
        if execution.state == Q.SUCCEEDED:
            return current
        if execution.state == Q.FAILED:
            reason = execution.reason or "failed in Athena"
            moved = await self.apply(
                current, Event.FAIL, by=POLLER, reason=reason, changes=execution.statistics
            )
        elif execution.state == Q.CANCELLED and (
            current.cancel_requested_at is None and current.timed_out(utcnow())
        ):
            # The stop of its timeout (athenaq/timeouts.py), from whichever process.
            moved = await self.time_out(current, execution.statistics)
        elif execution.state == Q.CANCELLED:
            reason = (
                "cancelled by client"
                if current.cancel_requested_at
                else "cancelled in Athena, outside athenaq"
            )
            moved = await self.apply(
                current, Event.CANCEL, by=POLLER, reason=reason, changes=execution.statistics
            )
        else:
            return None
        if moved is None:
            raise _RaceLost
        return None

    async def time_out(
        self, current: QueryRecord, changes: Mapping[str, Any] | None = None
    ) -> QueryRecord | None:
        """End `current`, past its deadline (timeout_at), FAILED `timed out after N s`, by
        `timeout`: one not sent to Athena, or one whose stop Athena confirmed (CANCELLED,
        with its statistics in `changes`). None when the compare-and-set lost."""
        reason = TIMEOUT_REASON.format(seconds=current.timeout_seconds)
        return await self.apply(current, Event.FAIL, by=TIMEOUT, reason=reason, changes=changes)

    async def execution_lost(self, query_id: str, execution_id: str, message: str) -> None:
        """Athena no longer knows the execution (expired history): the query cannot finish."""
        async with self.lock(query_id):
            if current := await self.tracking(query_id, execution_id):
                await self.apply(
                    current,
                    Event.FAIL,
                    by=POLLER,
                    reason=f"Athena does not know the execution: {message}",
                    changes={"completed_at": utcnow()},
                )

    async def tracking(self, query_id: str, execution_id: str) -> QueryRecord | None:
        """The query as stored, if it is unfinished and its execution is `execution_id`."""
        current = await self.store.get(query_id)
        return current if current is not None and tracks(current, execution_id) else None


@dataclass(frozen=True, slots=True)
class Step:
    """One move for `Machine.apply_all`: the query as last read, the event, why, the
    columns it sets, and fields for its `state changed` line."""

    current: QueryRecord
    event: Event
    reason: str | None = None
    changes: Mapping[str, Any] = field(default_factory=dict)
    log: Mapping[str, Any] = field(default_factory=dict)


class _RaceLost(Exception):
    """A compare-and-set lost: another writer changed the query since it was read."""


def tracks(record: QueryRecord, execution_id: str) -> bool:
    """Whether `record` is unfinished with `execution_id` as its current execution."""
    return not record.is_finished and record.athena_execution_id == execution_id


def _times_in_order(
    current: QueryRecord, target: QueryState, columns: dict[str, Any]
) -> dict[str, Any]:
    """`columns` with the query's times in the order of its life, submitted_at <=
    started_at <= completed_at <= results_at (each where set): the ones they set, and
    one the query had that they would put out of order (clock.in_order says how). A
    query that ends without Athena's completion time takes athenaq's now for it."""
    now = utcnow()
    before = [columns.get(name, getattr(current, name)) for name in TIMES]
    if target.is_finished and before[1] is None:
        before[1] = now
    after = in_order(current.submitted_at, before, now)
    for name, value in zip(TIMES, after, strict=True):
        if name in columns or value != getattr(current, name):
            columns[name] = value
    return columns


def _too_many(exc: RunningLimitReached) -> TooManyQueries:
    return TooManyQueries(
        f"this key has {exc.running} unfinished queries, its max_running",
        retry_after=RUNNING_LIMIT_RETRY_SECONDS,
    )

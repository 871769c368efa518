"""The Store: every query and its transition history.

State changes are compare-and-set on (state, version), so two server processes sharing
the database cannot both win the same transition. The statements are built with Core
once, at import. The ones of a status read, a submit and a launch run on the driver's
connection, compiled once for the engine's dialect (driver.py); the others (the poller's
list of unfinished queries, a history, the API keys) run through SQLAlchemy, each
operation one plain function in one greenlet (`greenlet_spawn`, SQLAlchemy's bridge
between its synchronous core and asyncio).

Every operation has a deadline, and a store out of reach raises errors.StoreUnavailable
(outage.py): a request's within `call_timeout`, the poller's claim and release of a whole
batch within `BATCH_TIMEOUT_FACTOR` times that.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Executable,
    RowMapping,
    bindparam,
    case,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from athenaq.clock import utcnow
from athenaq.identity import ApiKey, Caller
from athenaq.states import (
    DEFAULT_CATALOG,
    EXECUTION_FIELDS,
    LEASE_FIELDS,
    NO_OPTIONS,
    UNFINISHED,
    FirstAnswer,
    Idempotency,
    QueryRecord,
    QueryState,
    SubmitOptions,
    Transition,
)
from athenaq.store import (
    admission,
    cache,
    deliveries,
    idempotent,
    keys,
    listing,
    moves,
    schema,
    watch,
)
from athenaq.store.counts import StateCounts, count_by_state
from athenaq.store.database import DEFAULT_CALL_TIMEOUT_SECONDS, open_engine, transaction
from athenaq.store.driver import DriverConnection, DriverPool
from athenaq.store.idempotent import IdempotencyKeyTaken
from athenaq.store.listing import GroupBy, Position, QueryFilter, UsageRow
from athenaq.store.outage import Deadline, is_deadlock
from athenaq.store.schema import SchemaChange
from athenaq.store.tables import queries, query_labels, query_transitions

T = TypeVar("T")
# Columns a transition or an update may set; anything else is a programming error.
MUTABLE_COLUMNS = frozenset({"state_reason", "run", "timeout_at", *EXECUTION_FIELDS, *LEASE_FIELDS})
# Ids a claim looks at between two turns of the event loop.
CLAIM_CHUNK = 500
# Ids per statement of a claim's writes and reads of whole rows, well under SQLite's limit
# of bound values: the records of one statement's rows are made in one step of the event
# loop, about 4 ms for 100 rows.
CLAIM_ROWS = 100
# A claim reads and writes every unfinished query, thousands of rows, where a request's
# call reads or writes one: it has this many times as long.
BATCH_TIMEOUT_FACTOR = 10
# How often a submit whose transaction MySQL/MariaDB rolled back as a deadlock's victim is
# run again (requests inserting one idempotency key after a first that rolled back).
DEADLOCK_RETRIES = 3

_GET = select(queries).where(queries.c.id == bindparam("id"))
_UNFINISHED = (
    select(queries)
    .where(queries.c.state.in_([QueryState.QUEUED.value, QueryState.RUNNING.value]))
    .order_by(queries.c.submitted_at)
)
_HISTORY = (
    select(
        query_transitions.c.query_id,
        query_transitions.c.from_state,
        query_transitions.c.to_state,
        query_transitions.c.reason,
        query_transitions.c.at,
        query_transitions.c.caused_by,
    )
    .where(query_transitions.c.query_id == bindparam("query_id"))
    .order_by(query_transitions.c.seq)
)
_UNFINISHED_STATES = [state.value for state in UNFINISHED]
# A claim reads, then takes each row by its primary key: a range scan that locked rows
# (an UPDATE over the state index) would deadlock with the compare-and-sets of requests.
_CLAIMABLE = (
    queries.c.state.in_(_UNFINISHED_STATES),
    queries.c.lease_holder.is_(None)
    | (queries.c.lease_holder == bindparam("me"))
    | (queries.c.lease_expires_at < bindparam("now")),
)
# What a claim reads of every query it may hold: no more than tells whether the record
# the previous claim returned still stands (its version, whether it is admitted: an
# admission moves no version) and whether the query is this process's already. Read on
# the driver's connection (OR rather than IN: driver.py renders no IN list), as plain
# values that need no conversion.
_CLAIMABLE_BRIEF = (
    select(
        queries.c.id,
        queries.c.version,
        case((queries.c.admitted_at.is_(None), 0), else_=1).label("admitted"),
        queries.c.lease_holder,
    )
    .where(
        or_(
            queries.c.state == QueryState.QUEUED.value,
            queries.c.state == QueryState.RUNNING.value,
        ),
        _CLAIMABLE[1],
    )
    .order_by(queries.c.submitted_at)
)
_TAKE = (
    update(queries)
    .where(queries.c.id.in_(bindparam("ids", expanding=True)), *_CLAIMABLE)
    .values(lease_holder=bindparam("me"), lease_expires_at=bindparam("until"))
)
_HELD = select(queries).where(
    queries.c.id.in_(bindparam("ids", expanding=True)),
    queries.c.lease_holder == bindparam("me"),
    queries.c.state.in_(_UNFINISHED_STATES),
)
_HELD_IDS = select(queries.c.id).where(queries.c.lease_holder == bindparam("me"))
# By primary key, as a claim: never a lock on rows of other holders.
_RELEASE = (
    update(queries)
    .where(
        queries.c.id.in_(bindparam("ids", expanding=True)),
        queries.c.lease_holder == bindparam("me"),
    )
    .values(lease_holder=None, lease_expires_at=None)
)
_INSERT_QUERY = insert(queries)
_INSERT_LABEL = insert(query_labels)
_INSERT_TRANSITION = insert(query_transitions)
# The guard that keeps processes correct: the row changes only if nobody else changed it
# since it was read, and the affected-row count says whether it did. The columns to set
# come with the values at each call (driver.py compiles one form per set of them); the
# expected values are bound under names no column has.
_COMPARE_AND_SET = (
    update(queries)
    .where(
        queries.c.id == bindparam("expected_id"),
        queries.c.state == bindparam("expected_state"),
        queries.c.version == bindparam("expected_version"),
    )
    .values(version=queries.c.version + 1)
)


def _record(row: RowMapping | dict[str, Any]) -> QueryRecord:
    fields = {**row, "state": QueryState(row["state"])}
    if fields["parameters"] is not None:
        fields["parameters"] = tuple(json.loads(fields["parameters"]))
    if fields["labels"] is not None:
        fields["labels"] = json.loads(fields["labels"])
    if fields["reused_previous_result"] is not None:
        fields["reused_previous_result"] = bool(fields["reused_previous_result"])
    return QueryRecord(**fields)


def _json(value: Sequence[str] | Mapping[str, str] | None) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


async def _compare_and_set(
    conn: DriverConnection, current: QueryRecord, columns: dict[str, Any], now: datetime
) -> bool:
    params = {
        **columns,
        "updated_at": now,
        "expected_id": current.id,
        "expected_state": current.state.value,
        "expected_version": current.version,
    }
    return await conn.execute(_COMPARE_AND_SET, params) == 1


def _stands(record: QueryRecord | None, version: int, admitted: Any) -> bool:
    """Whether `record` is still the query whose row has this version and admission."""
    return (
        record is not None
        and record.version == version
        and (record.admitted_at is not None) == bool(admitted)
    )


async def _deadlock_retried(operation: Callable[[], Awaitable[T]]) -> T:
    """`operation()`, run again when MySQL/MariaDB rolled it back as a deadlock's victim.

    Requests that insert one idempotency key wait for the first one's transaction; when
    that one rolls back, InnoDB may pick one waiter as a deadlock's victim (each holds a
    shared lock on the key and asks for the exclusive one)."""
    for attempt in range(1, DEADLOCK_RETRIES + 1):
        try:
            return await operation()
        except Exception as exc:
            if not is_deadlock(exc) or attempt == DEADLOCK_RETRIES:
                raise
    raise AssertionError("unreachable")


def _check_columns(changes: dict[str, Any]) -> None:
    unknown = set(changes) - MUTABLE_COLUMNS
    if unknown:
        raise ValueError(f"not a mutable column: {sorted(unknown)}")


class Store:
    """Queries and their transitions in MySQL/MariaDB (asyncmy) or SQLite (aiosqlite),
    through SQLAlchemy Core."""

    def __init__(
        self, engine: AsyncEngine, call_timeout: float = DEFAULT_CALL_TIMEOUT_SECONDS
    ) -> None:
        self._engine = engine
        self._sync = engine.sync_engine
        self._driver = DriverPool(self._sync)
        self.timeout = call_timeout
        self._batch_timeout = call_timeout * BATCH_TIMEOUT_FACTOR

    @classmethod
    async def connect(
        cls, url: str, *, maxsize: int = 10, call_timeout: float = DEFAULT_CALL_TIMEOUT_SECONDS
    ) -> Store:
        """Open the store that `url` names, creating the database when it is missing.

        `mysql://user:password@host:port/database` opens a pool of `maxsize`
        connections, creating the database on the server when it does not have it.
        `sqlite:///relative/path.db` or `sqlite:////absolute/path.db` opens one connection
        to the file, creating the file and its folder when missing, in WAL mode so several
        processes can share it. Raises ValueError for any other URL.

        Each operation then takes at most `call_timeout` seconds (a claim or a release more,
        see BATCH_TIMEOUT_FACTOR), or raises errors.StoreUnavailable, as it does when the
        store is out of reach."""
        return cls(await open_engine(url, maxsize, call_timeout), call_timeout)

    async def close(self) -> None:
        """Wait for the statements in flight, then close every connection."""
        await self._driver.wait_closed()
        await self._engine.dispose()

    async def create_schema(self) -> SchemaChange:
        """Bring the schema to this release's revision: create it in an empty database,
        adopt one made before schema revisions, apply the revisions it lacks. Safe to run
        at every start, by several processes at once."""
        return await schema.upgrade(self._engine)

    async def check_schema(self) -> None:
        """Raise SchemaError unless the schema is at this release's revision."""
        await schema.check(self._engine)

    async def ping(self, deadline: float) -> None:
        """Raise unless the database answers a `SELECT 1` within `deadline` seconds
        (TimeoutError when it does not answer). A statement cut short by the deadline
        closes its connection rather than pooling it."""
        async with asyncio.timeout(deadline), self._engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")

    async def create(
        self,
        query_id: str,
        sql: str,
        database: str,
        workgroup: str,
        reason: str,
        *,
        owner: str,
        options: SubmitOptions = NO_OPTIONS,
        running_limit: int | None = None,
        lease_holder: str | None = None,
        lease_expires_at: datetime | None = None,
        idempotency: Idempotency | None = None,
    ) -> QueryRecord:
        """Store a new QUEUED query, its labels and the first row of its history,
        atomically; leased to `lease_holder` (the process that takes the submit) when
        given.

        With `running_limit`, raise keys.RunningLimitReached instead when the owner has
        that many unfinished queries: counted in the same transaction, so processes
        sharing the database cannot overshoot it together.

        With `idempotency`, the key is stored in the same transaction as the answer of
        the query (202), made at its submit time; when the owner's key is taken already
        (expired or not), nothing is stored and idempotent.IdempotencyKeyTaken says what
        it answered first."""
        now = utcnow()
        record = QueryRecord(
            id=query_id,
            query_text=sql,
            database_name=database,
            workgroup=workgroup,
            state=QueryState.QUEUED,
            state_reason=None,
            run=1,
            submitted_at=now,
            version=0,
            updated_at=now,
            owner=owner,
            lease_holder=lease_holder,
            lease_expires_at=lease_expires_at,
            **dict.fromkeys(EXECUTION_FIELDS),  # no execution yet
            catalog=options.catalog or DEFAULT_CATALOG,
            parameters=options.parameters,
            labels=options.labels,
            cache_key=options.cache_key,
            result_reuse_minutes=options.result_reuse_minutes,
            timeout_seconds=options.timeout_seconds,
            callback_url=options.callback_url,
            timeout_at=(
                now + timedelta(seconds=options.timeout_seconds)
                if options.timeout_seconds is not None
                else None
            ),
        )
        async with Deadline(self.timeout):
            first = await _deadlock_retried(
                lambda: self._insert(record, reason, running_limit, idempotency)
            )
        if first is not None:
            raise IdempotencyKeyTaken(first)
        return record

    async def _insert(
        self,
        record: QueryRecord,
        reason: str,
        running_limit: int | None,
        idempotency: Idempotency | None,
    ) -> FirstAnswer | None:
        async with self._driver.transaction() as conn:
            locked = running_limit is not None and idempotency is not None
            if locked:
                # The owner's submits take turns from here: two with one key never insert
                # it at once, and a retry finds its first answer, never the limit.
                await keys.lock_owner(conn, record.owner)
            if idempotency is not None:
                # Before anything is written: a request whose key is taken changes
                # nothing, and waits for nothing but the transaction that holds the key.
                first = await idempotent.claim(
                    conn, record.owner, idempotency, record.id, 202, record.submitted_at
                )
                if first is not None:
                    return first  # nothing written: the commit has nothing to commit
            if running_limit is not None:
                await keys.check_running(conn, record.owner, running_limit, locked=locked)
            await conn.execute(
                _INSERT_QUERY,
                {
                    "id": record.id,
                    "query_text": record.query_text,
                    "database_name": record.database_name,
                    "workgroup": record.workgroup,
                    "state": record.state.value,
                    "run": record.run,
                    "submitted_at": record.submitted_at,
                    "version": record.version,
                    "updated_at": record.updated_at,
                    "owner": record.owner,
                    "lease_holder": record.lease_holder,
                    "lease_expires_at": record.lease_expires_at,
                    "catalog": record.catalog,
                    "parameters": _json(record.parameters),
                    "labels": _json(record.labels),
                    "cache_key": record.cache_key,
                    "result_reuse_minutes": record.result_reuse_minutes,
                    "timeout_seconds": record.timeout_seconds,
                    "timeout_at": record.timeout_at,
                    "callback_url": record.callback_url,
                },
            )
            for key, value in (record.labels or {}).items():
                await conn.execute(
                    _INSERT_LABEL,
                    {
                        "query_id": record.id,
                        "label_key": key,
                        "label_value": value,
                        "owner": record.owner,
                        "submitted_at": record.submitted_at,
                    },
                )
            await conn.execute(
                _INSERT_TRANSITION,
                {
                    "query_id": record.id,
                    "from_state": None,
                    "to_state": record.state.value,
                    "reason": reason,
                    "at": record.submitted_at,
                    "caused_by": record.owner,
                },
            )
        return None

    async def get(self, query_id: str) -> QueryRecord | None:
        """The query as stored now, or None when there is no query `query_id`."""
        async with Deadline(self.timeout), self._driver.connect() as conn:
            row = await conn.first(_GET, {"id": query_id})
        return _record(row) if row else None

    # -- athenaq's cache and idempotency keys --------------------------------------------

    async def cached(self, owner: str, cache_key: str, fresh_since: datetime) -> QueryRecord | None:
        """`owner`'s SUCCEEDED query with `cache_key` whose results were stored at or after
        `fresh_since` and are still there (the youngest); else one of its QUEUED or
        RUNNING queries with the key that no client is cancelling; else None. Reads the
        index queries_cache, never another owner's, key's or state's rows (cache.py)."""
        async with Deadline(self.timeout), self._driver.connect() as conn:
            row = await cache.find(conn, owner, cache_key, fresh_since)
        return _record(row) if row is not None else None

    async def first_answer(self, owner: str, key: str) -> FirstAnswer | None:
        """What `owner`'s Idempotency-Key `key` answered first, expired or not; None when
        it is unknown."""
        async with Deadline(self.timeout), self._driver.connect() as conn:
            return await idempotent.find(conn, owner, key)

    async def remember(
        self, owner: str, key: Idempotency, query_id: str, status_code: int
    ) -> FirstAnswer | None:
        """Store `query_id` (a query that was there already: cached or joined) and
        `status_code` as the first answer of `owner`'s key. None when stored; what the key
        answered first when it was taken (expired or not)."""

        async def claim() -> FirstAnswer | None:
            async with self._driver.connect() as conn:
                return await idempotent.claim(conn, owner, key, query_id, status_code, utcnow())

        async with Deadline(self.timeout):
            return await _deadlock_retried(claim)

    async def forget_expired_key(self, owner: str, key: str, expired_at: datetime) -> None:
        """Delete `owner`'s Idempotency-Key `key` if it was made at or before `expired_at`,
        so a new request may take it."""
        async with Deadline(self.timeout), self._driver.connect() as conn:
            await idempotent.forget_expired(conn, owner, key, expired_at)

    async def purge_idempotency_keys(self, expired_at: datetime, batch: int) -> int:
        """Delete about `batch` of the oldest idempotency keys made at or before
        `expired_at`, down their index by time; how many."""
        async with Deadline(self._batch_timeout), self._driver.connect() as conn:
            return await idempotent.purge(conn, expired_at, batch)

    async def unfinished(self) -> list[QueryRecord]:
        """Every QUEUED or RUNNING query, oldest first: what the poller must drive."""
        async with Deadline(self._batch_timeout):
            rows = await greenlet_spawn(self._all, _UNFINISHED, {})
        return [_record(row) for row in rows]

    async def claim(
        self,
        holder: str,
        lease_seconds: float,
        held: Mapping[str, QueryRecord] | None = None,
        *,
        renew: bool = True,
    ) -> list[QueryRecord]:
        """Claim the unfinished queries nobody holds (or whose lease expired) for
        `lease_seconds` from now, and with `renew` renew `holder`'s leases as long; returns
        every unfinished query it holds, oldest first: what its poller drives. A claim
        changes no version, so it never makes a compare-and-set lose; a row another
        process took meanwhile is left to it (the update's condition is checked again on
        each row).

        `held`: the records the previous claim returned, by id. Of every query it may hold
        a claim reads only its id, version, lease holder and whether it is admitted; a
        query of `holder` whose version and admission are those of its record in `held`
        is returned as that record, without reading its row. So a claim that renews
        nothing, over queries nothing changed, writes nothing and reads no row whole."""
        now = utcnow()
        params = {"me": holder, "now": now, "until": now + timedelta(seconds=lease_seconds)}
        held = held or {}
        async with Deadline(self._batch_timeout):
            async with self._driver.connect() as conn:
                brief = await conn.tuples(_CLAIMABLE_BRIEF, {"me": holder, "now": now})
            ids: list[str] = []  # oldest first
            new: list[str] = []
            stale: list[str] = []
            # Thousands of rows: looked at a chunk at a time, letting the loop run between.
            for start in range(0, len(brief), CLAIM_CHUNK):
                if start:
                    await asyncio.sleep(0)
                for query_id, version, admitted, lease_holder in brief[start : start + CLAIM_CHUNK]:
                    ids.append(query_id)
                    if lease_holder != holder:
                        new.append(query_id)
                    elif not _stands(held.get(query_id), version, admitted):
                        stale.append(query_id)
            taking = ids if renew else new  # renewing: the leases held with the new ones
            fresh: dict[str, QueryRecord] = {}
            if taking or new or stale:
                fresh = await greenlet_spawn(self._take, params, taking, new + stale)
        await asyncio.sleep(0)
        unread = {*new, *stale}
        return [
            fresh[query_id] if query_id in unread else held[query_id]
            for query_id in ids
            if query_id in fresh or query_id not in unread
        ]

    def _take(
        self, params: dict[str, Any], taking: list[str], wanted: list[str]
    ) -> dict[str, QueryRecord]:
        """Take (or renew) the leases of `taking`, then read whole the rows of `wanted`
        this process holds: the ones taken (a row another process took meanwhile is not
        read) and the held ones that changed. The records are made chunk by chunk,
        between the chunks' round trips (which let the event loop run): thousands made
        at once would hold it for tens of ms."""
        fresh: dict[str, QueryRecord] = {}
        with self._sync.connect() as conn:
            for start in range(0, len(taking), CLAIM_ROWS):
                conn.execute(_TAKE, {**params, "ids": taking[start : start + CLAIM_ROWS]})
            for start in range(0, len(wanted), CLAIM_ROWS):
                chunk = {**params, "ids": wanted[start : start + CLAIM_ROWS]}
                fresh.update((r["id"], _record(r)) for r in conn.execute(_HELD, chunk).mappings())
        return fresh

    async def release(self, holder: str, keep: Collection[str] = ()) -> int:
        """End every lease of `holder` (a stopping process) but those of the queries in
        `keep` (whose results it is still storing): another process's next poll claims
        them. Returns how many were released."""
        async with Deadline(self._batch_timeout):
            return await greenlet_spawn(self._release, holder, frozenset(keep))

    def _release(self, holder: str, keep: frozenset[str]) -> int:
        released = 0
        with self._sync.connect() as conn:
            ids = [i for i in conn.execute(_HELD_IDS, {"me": holder}).scalars() if i not in keep]
            for start in range(0, len(ids), CLAIM_CHUNK):
                chunk = {"me": holder, "ids": ids[start : start + CLAIM_CHUNK]}
                released += conn.execute(_RELEASE, chunk).rowcount
        return released

    def _all(self, statement: Executable, params: dict[str, Any]) -> Sequence[RowMapping]:
        with self._sync.connect() as conn:
            return conn.execute(statement, params).mappings().all()

    async def transition(
        self,
        current: QueryRecord,
        to_state: QueryState,
        reason: str | None,
        changes: dict[str, Any],
        *,
        by: str,
        running_limit: int | None = None,
        callback: deliveries.Callback | None = None,
    ) -> bool:
        """Compare-and-set `current` to `to_state`, appending to the history (`by`: who
        caused it) in the same transaction. False when another writer changed the row
        since `current` was read. A `callback` (the webhook delivery of a finished run)
        is written in the same transaction too.

        A finished run's scanned bytes count to its owner's day in the same transaction.
        With `running_limit`, raise keys.RunningLimitReached when the owner has that many
        unfinished queries (a refresh makes one more)."""
        _check_columns(changes)
        now = utcnow()
        async with Deadline(self.timeout), self._driver.transaction() as conn:
            if running_limit is not None:
                await keys.check_running(conn, current.owner, running_limit)
            if not await _compare_and_set(conn, current, {"state": to_state.value, **changes}, now):
                return False  # nothing written: the commit has nothing to commit
            move = moves.Move(current, to_state, reason, changes, callback)
            await self._moved_with(conn, [move], by, now)
        return True

    async def transitions(self, batch: Sequence[moves.Move], *, by: str) -> list[bool]:
        """Compare-and-set each move's query to its state, as `transition` does one, all
        in one transaction: one UPDATE for the batch (each row under its own guard), one
        usage upsert per owner of runs it finishes, one INSERT of the history rows, and
        the webhook deliveries. Returns, for each move, whether it was written: a move
        whose query another writer changed since its record was read writes nothing, and
        the others are written together (see moves.py for what a batch may set).

        When a guard does not hold, the transaction is rolled back, the rows' versions
        read, and the moves that still stand written again; a batch that loses a second
        time is given up (every move of it False): the caller reads them again."""
        moves.check(batch)
        if len(batch) == 1:  # the one compare-and-set of `transition`, no CASE to build
            move = batch[0]
            return [
                await self.transition(
                    move.current,
                    move.to_state,
                    move.reason,
                    dict(move.changes),
                    by=by,
                    callback=move.callback,
                )
            ]
        now = utcnow()
        pending = list(batch)
        async with Deadline(self.timeout):
            for attempt in range(2):
                async with self._driver.transaction() as conn:
                    if await moves.update(conn, pending, now):
                        await self._moved_with(conn, pending, by, now)
                        written = {move.current.id for move in pending}
                        return [move.current.id in written for move in batch]
                    await conn.rollback()
                    if attempt == 0:
                        stands = await moves.standing(conn, pending)
                        pending = [m for m, kept in zip(pending, stands, strict=True) if kept]
                if not pending:
                    break
        return [False] * len(batch)

    @staticmethod
    async def _moved_with(
        conn: DriverConnection, batch: Sequence[moves.Move], by: str, now: datetime
    ) -> None:
        """What a batch's moves write with them: the usage of the runs they finish, one
        upsert per owner; their history rows; their webhook deliveries."""
        day = now.date().isoformat()
        scanned: dict[str, int] = {}
        for move in batch:
            if move.to_state.is_finished and (more := move.changes.get("data_scanned_bytes")):
                scanned[move.current.owner] = scanned.get(move.current.owner, 0) + more
        for owner, total in scanned.items():
            await keys.add_usage(conn, owner, day, total)
        await moves.add_history(conn, batch, by, now)
        callbacks = [move.callback for move in batch if move.callback is not None]
        if callbacks:
            await deliveries.enqueue(conn, callbacks, now)

    async def update(self, current: QueryRecord, changes: dict[str, Any]) -> bool:
        """Compare-and-set columns other than the state (for instance the Athena execution
        id); False when another writer changed the row since `current` was read."""
        _check_columns(changes)
        # One statement is atomic on its own: no BEGIN and COMMIT round trips around it.
        async with Deadline(self.timeout), self._driver.connect() as conn:
            return await _compare_and_set(conn, current, changes, utcnow())

    async def history(self, query_id: str) -> list[Transition]:
        """The query's transitions, oldest first."""
        async with Deadline(self.timeout):
            rows = await greenlet_spawn(self._all, _HISTORY, {"query_id": query_id})
        return [
            Transition(
                query_id=row["query_id"],
                from_state=QueryState(row["from_state"]) if row["from_state"] else None,
                to_state=QueryState(row["to_state"]),
                reason=row["reason"],
                at=row["at"],
                by=row["caused_by"],
            )
            for row in rows
        ]

    # -- long-polls --------------------------------------------------------------------

    async def states_of(
        self, ids: Sequence[str], whole: Callable[[str, watch.Progress], bool] | None = None
    ) -> tuple[dict[str, watch.Progress], dict[str, QueryRecord]]:
        """The state and run of each query of `ids` that exists, by id: what the long-poll
        watcher reads, by primary key, in `watch.statements_for(len(ids))` statements;
        and the whole rows of those `whole` picks (query id, its state and run), read
        right after on the same connection, one checkout of the pool for both."""
        async with Deadline(self.timeout), self._driver.connect() as conn:
            progress = await watch.progress(conn, ids)
            picked = [i for i, p in progress.items() if whole(i, p)] if whole else []
            found = await watch.rows(conn, picked) if picked else []
        return progress, {row["id"]: _record(row) for row in found}

    async def records_of(self, ids: Sequence[str]) -> dict[str, QueryRecord]:
        """Each query of `ids` that exists as stored now, by id: what the long-poll watcher
        answers its waiters with, in `watch.statements_for(len(ids))` statements."""
        async with Deadline(self.timeout), self._driver.connect() as conn:
            found = await watch.rows(conn, ids)
        return {row["id"]: _record(row) for row in found}

    # -- webhook deliveries -----------------------------------------------------------

    async def delivery(self, query_id: str, run: int) -> deliveries.Delivery | None:
        """The webhook delivery of the query's run; None when it has none (yet)."""
        async with Deadline(self.timeout), self._driver.connect() as conn:
            return await deliveries.find(conn, query_id, run)

    async def take_deliveries(
        self, holder: str, lease_seconds: float, limit: int
    ) -> list[deliveries.Delivery]:
        """Take up to `limit` due webhook deliveries, soonest first, for `holder` (a
        process's dispatcher) for `lease_seconds`: no other process sends them meanwhile,
        and they are due again after it unless the taker records what became of them.
        Each has the attempt it begins counted."""
        now = utcnow()
        until = now + timedelta(seconds=lease_seconds)
        async with Deadline(self.timeout), self._driver.connect() as conn:
            return await deliveries.take(conn, holder, now, until, limit)

    async def delivered(self, delivery: deliveries.Delivery) -> bool:
        """Record that `delivery` (as taken) was delivered now; False when it was already."""
        async with Deadline(self.timeout), self._driver.connect() as conn:
            return await deliveries.delivered(conn, delivery, utcnow())

    async def delivery_failed(
        self, delivery: deliveries.Delivery, error: str, retry_at: datetime | None
    ) -> bool:
        """Record the failure of the attempt `delivery` (as taken) began: due again at
        `retry_at`, or given up now when None. False when a later attempt holds the
        delivery, or it was delivered meanwhile."""
        gave_up_at = utcnow() if retry_at is None else None
        async with Deadline(self.timeout), self._driver.connect() as conn:
            return await deliveries.failed(conn, delivery, error, retry_at, gave_up_at)

    async def put_back_deliveries(self, taken: Sequence[deliveries.Delivery]) -> int:
        """Make the deliveries of attempts cut short (by a shutdown) due at once for any
        process; how many were."""
        now = utcnow()
        async with Deadline(self.timeout), self._driver.connect() as conn:
            return sum([await deliveries.put_back(conn, delivery, now) for delivery in taken])

    # -- admission control ------------------------------------------------------------

    async def admit(self, cap: int) -> list[tuple[str, str | None]]:
        """Give waiting queries (QUEUED, not admitted) the slots of `cap` that the
        admitted and unfinished queries of every process leave free, in the fair order
        across owners (athenaq/admission.py); one admission at a time across processes.
        Returns each admitted query's id and lease holder: its holder sends it to Athena."""
        async with Deadline(self.timeout), self._driver.transaction() as conn:
            return await admission.admit(conn, cap, utcnow())

    async def places_ahead(self, record: QueryRecord) -> int:
        """How many waiting queries come before `record`, a waiting one, in the fair order
        of admission: counted when asked, as no admission writes the waiting queries."""
        async with Deadline(self.timeout), self._driver.connect() as conn:
            return await admission.ahead(conn, record)

    async def places_ahead_each(self, records: list[QueryRecord]) -> dict[str, int]:
        """`places_ahead` of each of `records` (waiting ones), by id, counted together."""
        async with Deadline(self.timeout), self._driver.connect() as conn:
            return await admission.ahead_each(conn, records)

    async def count_states(self) -> StateCounts:
        """How many queries are in each state, and how many QUEUED ones wait for an Athena
        slot: one read of the admission index (GET /metrics)."""
        async with Deadline(self.timeout), self._driver.connect() as conn:
            return await count_by_state(conn)

    # -- listing, usage and retention (listing.py) --------------------------------------

    async def list_queries(
        self, where: QueryFilter, after: Position | None, limit: int
    ) -> list[QueryRecord]:
        """At most `limit` queries under `where`, newest first (by submitted_at, then id),
        after `after` when given: a keyset page, so queries submitted while a client
        pages make no page repeat or skip one."""
        async with Deadline(self.timeout), self._driver.connect() as conn:
            rows = await listing.page(conn, where, after, limit)
        return [_record(row) for row in rows]

    async def usage(
        self,
        group_by: GroupBy,
        *,
        owner: str | None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[UsageRow]:
        """The queries of `owner` (None: everyone's) submitted in [since, until), counted
        and summed by `group_by`, in the order of its key."""
        async with Deadline(self.timeout), self._driver.connect() as conn:
            return await listing.usage(conn, group_by, owner, since, until)

    async def results_to_expire(self, cutoff: datetime, limit: int) -> list[tuple[str, str]]:
        """(id, execution id) of at most `limit` runs whose results were stored before
        `cutoff` and not removed yet, oldest first."""
        async with Deadline(self.timeout), self._driver.connect() as conn:
            return await listing.to_expire(conn, cutoff, limit)

    async def expire_results(self, query_id: str, execution_id: str) -> bool:
        """Mark the results of the query's run `execution_id` removed, before their files
        are: False when the query is no longer that SUCCEEDED run (refreshed meanwhile),
        or when another process marked it first. Moves no version."""
        async with Deadline(self.timeout), self._driver.connect() as conn:
            return await listing.expire(conn, query_id, execution_id, utcnow())

    async def results_expired_since(self, since: datetime) -> list[tuple[str, str]]:
        """(id, execution id) of the runs whose results were marked removed since `since`."""
        async with Deadline(self.timeout), self._driver.connect() as conn:
            return list(await listing.expired_since(conn, since))

    # -- API keys and usage -------------------------------------------------------------

    async def add_key(self, caller: Caller, key_hash: str) -> None:
        """Store a new key; keys.KeyExists when its name is taken, also by a revoked key."""
        async with Deadline(self.timeout):
            await greenlet_spawn(self._in_transaction, keys.insert_key, caller, key_hash, utcnow())

    async def find_key(self, key_hash: str) -> ApiKey | None:
        """The key with this hash, revoked or not; None when there is none."""
        async with Deadline(self.timeout), self._driver.connect() as conn:
            return await keys.find_key(conn, key_hash)

    async def list_keys(self) -> list[ApiKey]:
        """Every key, revoked ones too, by name."""
        async with Deadline(self.timeout):
            return await greenlet_spawn(self._on_connection, keys.all_keys)

    async def revoke_key(self, name: str) -> bool:
        """Revoke the key `name` at once; False when no unrevoked key has that name."""
        async with Deadline(self.timeout):
            return await greenlet_spawn(self._on_connection, keys.revoke_key, name, utcnow())

    async def scanned_today(self, owner: str) -> int:
        """Bytes Athena scanned for `owner`'s queries that finished this UTC day."""
        day = utcnow().date().isoformat()
        async with Deadline(self.timeout), self._driver.connect() as conn:
            return await keys.used(conn, owner, day)

    def _on_connection(self, operation: Callable[..., T], *args: Any) -> T:
        with self._sync.connect() as conn:
            return operation(conn, *args)

    def _in_transaction(self, operation: Callable[..., T], *args: Any) -> T:
        with transaction(self._sync) as conn:
            return operation(conn, *args)

"""Finding queries again: a page of an owner's (or everyone's) queries newest first, the
usage aggregate, and retention's reads and marks. The statements run inside a store
operation on the driver's connection (queries.py `Store.list_queries`, `Store.usage`,
`Store.results_to_expire`, ...; driver.py).

Each statement is served by an index of revision 0005 (docs/internals.md#the-store says
which, and tests/test_listing_store.py checks the plans with EXPLAIN):

- a page is a keyset walk, newest first, on `(submitted_at, id)`: the owner's queries on
  `queries_owner_submitted`, of one state on `queries_owner_state_submitted`, everyone's
  on `queries_submitted`, and those with a label from `query_labels`, by owner or not;
- the usage of an owner over a time range reads `queries_owner_submitted`, everyone's
  `queries_submitted`;
- retention's candidates are the oldest results not yet removed, from
  `queries_results_expiry`.

A page's statement differs with the filters given; each form is built once, when first
asked for, and kept (the driver compiles each once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    FunctionElement,
    Integer,
    Select,
    Table,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from athenaq.pricing import MIB, MINIMUM_MIB
from athenaq.states import QueryState
from athenaq.store.driver import DriverConnection
from athenaq.store.tables import queries, query_labels

GroupBy = Literal["owner", "day", "workgroup"]
GROUPS: tuple[GroupBy, ...] = ("owner", "day", "workgroup")


@dataclass(frozen=True)
class QueryFilter:
    """Which queries a listing shows: an owner's (None: everyone's), and of those only
    the ones in `state`, with the label `label` (key, value), submitted in
    [since, until)."""

    owner: str | None
    state: QueryState | None = None
    label: tuple[str, str] | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class Position:
    """Where a page ended: the last query shown, by (submitted_at, id). The next page
    starts after it, whatever was submitted since."""

    submitted_at: datetime
    id: str


@dataclass(frozen=True)
class UsageRow:
    """One group of the usage aggregate; `billed_mib` is each query's billed MiB (see
    athenaq/pricing.py), summed."""

    key: str
    queries: int
    succeeded: int
    failed: int
    cancelled: int
    data_scanned_bytes: int
    billed_mib: int


# -- a page of queries ----------------------------------------------------------------

_PAGE_FORMS: dict[tuple[bool, ...], Select[Any]] = {}


def page_statement(where: QueryFilter, after: bool) -> Select[Any]:
    """The SELECT of a page under `where` (after a position when `after`), whose values
    `page_params` gives."""
    form = (
        where.owner is not None,
        where.state is not None,
        where.label is not None,
        where.since is not None,
        where.until is not None,
        after,
    )
    statement = _PAGE_FORMS.get(form)
    if statement is None:
        statement = _PAGE_FORMS[form] = _page_form(*form)
    return statement


def _page_form(
    owner: bool, state: bool, label: bool, since: bool, until: bool, after: bool
) -> Select[Any]:
    q, lbl = queries.c, query_labels.c
    # With a label, the walk is on the label's rows (which carry the owner and the submit
    # time), each joined to its query by primary key.
    at, query_id, owner_column = (
        (lbl.submitted_at, lbl.query_id, lbl.owner) if label else (q.submitted_at, q.id, q.owner)
    )
    conditions: list[ColumnElement[bool]] = []
    if label:
        conditions += [
            lbl.label_key == bindparam("label_key"),
            lbl.label_value == bindparam("label_value"),
        ]
    if owner:
        conditions.append(owner_column == bindparam("owner"))
    if state:
        conditions.append(q.state == bindparam("state"))
    if since:
        conditions.append(at >= bindparam("since"))
    if until:
        conditions.append(at < bindparam("until"))
    if after:
        # The first condition alone bounds the index range; the second cuts the rows of
        # the position's own time that came before it.
        conditions += [
            at <= bindparam("after_at"),
            or_(
                at < bindparam("after_at"),
                and_(at == bindparam("after_at"), query_id < bindparam("after_id")),
            ),
        ]
    statement = select(queries)
    if label:
        statement = statement.select_from(
            query_labels.join(queries, queries.c.id == query_labels.c.query_id)
        )
    # MariaDB's optimizer may take a small table's scan and a sort for cheaper than the
    # walk (seen at a few thousand rows): the walk is what stops at the limit.
    walked, index = _walk(owner, state, label)
    return (
        statement.where(*conditions)
        .order_by(at.desc(), query_id.desc())
        .limit(bindparam("limit", type_=Integer))
        .with_hint(walked, f"FORCE INDEX ({index})", "mysql")
    )


def _walk(owner: bool, state: bool, label: bool) -> tuple[Table, str]:
    """The table and the index a page walks, newest first."""
    if label:
        return query_labels, "query_labels_owner" if owner else "query_labels_label"
    if owner:
        return queries, "queries_owner_state_submitted" if state else "queries_owner_submitted"
    return queries, "queries_submitted"


def page_params(where: QueryFilter, after: Position | None, limit: int) -> dict[str, Any]:
    """The values of `page_statement(where, after is not None)`."""
    params: dict[str, Any] = {"limit": limit}
    if where.owner is not None:
        params["owner"] = where.owner
    if where.state is not None:
        params["state"] = where.state.value
    if where.label is not None:
        params["label_key"], params["label_value"] = where.label
    if where.since is not None:
        params["since"] = where.since
    if where.until is not None:
        params["until"] = where.until
    if after is not None:
        params["after_at"] = after.submitted_at
        params["after_id"] = after.id
    return params


async def page(
    conn: DriverConnection, where: QueryFilter, after: Position | None, limit: int
) -> list[dict[str, Any]]:
    """At most `limit` rows of queries under `where`, newest first, after `after`."""
    statement = page_statement(where, after is not None)
    return await conn.all(statement, page_params(where, after, limit))


# -- usage ---------------------------------------------------------------------------


class _quotient(FunctionElement[int]):
    """Integer division, the same on both databases: `/` on two integers in SQLite, `DIV`
    in MySQL (whose `/` is a decimal division, rounded: FLOOR of it can be one too many)."""

    type = BigInteger()
    inherit_cache = True


@compiles(_quotient)
def _quotient_sqlite(element: _quotient, compiler: SQLCompiler, **kw: Any) -> str:
    dividend, divisor = element.clauses
    return f"(({compiler.process(dividend, **kw)}) / ({compiler.process(divisor, **kw)}))"


@compiles(_quotient, "mysql")
def _quotient_mysql(element: _quotient, compiler: SQLCompiler, **kw: Any) -> str:
    dividend, divisor = element.clauses
    return f"(({compiler.process(dividend, **kw)}) DIV ({compiler.process(divisor, **kw)}))"


# Each query's billed MiB (athenaq/pricing.py `billed_mib`), so that a sum of costs is
# the sum of each query's own rounded cost.
_SCANNED = queries.c.data_scanned_bytes
BILLED_MIB = case(
    (
        or_(
            queries.c.state == QueryState.FAILED.value,
            _SCANNED.is_(None),
            _SCANNED <= 0,
        ),
        0,
    ),
    (_SCANNED <= MINIMUM_MIB * MIB, MINIMUM_MIB),
    else_=_quotient(_SCANNED + (MIB - 1), MIB),
)
_GROUP_KEYS: dict[GroupBy, ColumnElement[Any]] = {
    "owner": queries.c.owner,
    "workgroup": queries.c.workgroup,
    # The UTC day the query was submitted: a DATE in MySQL, YYYY-MM-DD text in SQLite.
    "day": func.date(queries.c.submitted_at),
}
_USAGE_FORMS: dict[tuple[Any, ...], Select[Any]] = {}


def _count_of(state: QueryState) -> ColumnElement[int]:
    return func.count(case((queries.c.state == state.value, 1)))


def usage_statement(group_by: GroupBy, owner: bool, since: bool, until: bool) -> Select[Any]:
    """The usage aggregate by `group_by`, of one owner or everyone, over a time range."""
    form = (group_by, owner, since, until)
    statement = _USAGE_FORMS.get(form)
    if statement is not None:
        return statement
    key = _GROUP_KEYS[group_by]
    conditions: list[ColumnElement[bool]] = []
    if owner:
        conditions.append(queries.c.owner == bindparam("owner"))
    if since:
        conditions.append(queries.c.submitted_at >= bindparam("since"))
    if until:
        conditions.append(queries.c.submitted_at < bindparam("until"))
    statement = _USAGE_FORMS[form] = (
        select(
            key.label("key"),
            func.count().label("queries"),
            _count_of(QueryState.SUCCEEDED).label("succeeded"),
            _count_of(QueryState.FAILED).label("failed"),
            _count_of(QueryState.CANCELLED).label("cancelled"),
            func.sum(_SCANNED).label("data_scanned_bytes"),
            func.sum(BILLED_MIB).label("billed_mib"),
        )
        .where(*conditions)
        .group_by(key)
        .order_by(key)
    )
    return statement


async def usage(
    conn: DriverConnection,
    group_by: GroupBy,
    owner: str | None,
    since: datetime | None,
    until: datetime | None,
) -> list[UsageRow]:
    statement = usage_statement(group_by, owner is not None, since is not None, until is not None)
    params = {
        name: value
        for name, value in (("owner", owner), ("since", since), ("until", until))
        if value is not None
    }
    return [
        UsageRow(
            # A DATE from MySQL, text from SQLite: both read YYYY-MM-DD.
            key=str(row["key"]),
            queries=int(row["queries"]),
            succeeded=int(row["succeeded"]),
            failed=int(row["failed"]),
            cancelled=int(row["cancelled"]),
            # MySQL's SUM of integers is a DECIMAL; a group may have no bytes known yet.
            data_scanned_bytes=int(row["data_scanned_bytes"] or 0),
            billed_mib=int(row["billed_mib"] or 0),
        )
        for row in await conn.all(statement, params)
    ]


# -- retention -----------------------------------------------------------------------

# The oldest stored results not yet removed. Only a SUCCEEDED run has results_at (a
# refresh clears it with the rest of the run).
TO_EXPIRE = (
    select(queries.c.id, queries.c.athena_execution_id)
    .where(queries.c.results_expired_at.is_(None), queries.c.results_at < bindparam("cutoff"))
    .order_by(queries.c.results_at)
    .limit(bindparam("limit", type_=Integer))
)
# The compare-and-set that gives one process the removal of one run's files: the run must
# still be SUCCEEDED, the same execution, not yet removed. It moves no version: nothing
# of the query's state changes, and a refresh or a cancel in flight must not lose its
# own compare-and-set to it.
_EXPIRE = (
    update(queries)
    .where(
        queries.c.id == bindparam("match_id"),
        queries.c.state == QueryState.SUCCEEDED.value,
        queries.c.athena_execution_id == bindparam("match_execution"),
        queries.c.results_expired_at.is_(None),
    )
    .values(results_expired_at=bindparam("now"), updated_at=bindparam("now"))
)
EXPIRED_SINCE = select(queries.c.id, queries.c.athena_execution_id).where(
    queries.c.results_expired_at >= bindparam("since")
)


async def to_expire(conn: DriverConnection, cutoff: datetime, limit: int) -> list[tuple[str, str]]:
    """(id, execution id) of at most `limit` runs whose results were stored before
    `cutoff` and are still on disk, oldest first."""
    rows = await conn.tuples(TO_EXPIRE, {"cutoff": cutoff, "limit": limit})
    return [(query_id, execution_id) for query_id, execution_id in rows]


async def expire(conn: DriverConnection, query_id: str, execution_id: str, now: datetime) -> bool:
    """Mark the run's results removed; False when it changed meanwhile (refreshed) or
    another process marked it first."""
    params = {"match_id": query_id, "match_execution": execution_id, "now": now}
    return await conn.execute(_EXPIRE, params) == 1


async def expired_since(conn: DriverConnection, since: datetime) -> Sequence[tuple[str, str]]:
    """(id, execution id) of the runs whose results were marked removed at or after `since`."""
    rows = await conn.all(EXPIRED_SINCE, {"since": since})
    return [(row["id"], row["athena_execution_id"]) for row in rows]

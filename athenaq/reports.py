"""Finding queries again, for the handlers: a caller's queries page by page, a query's
history, and what the queries scanned and cost. It writes nothing.

Whose queries a caller sees is decided here: its own, or every owner's for an admin.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from athenaq.admission import WAITING_REASON, waits_for_slot
from athenaq.errors import Forbidden, QueryNotFound
from athenaq.identity import Caller
from athenaq.pricing import cost_of
from athenaq.states import TRANSITIONS, Event, QueryRecord, QueryState
from athenaq.store import Store
from athenaq.store.listing import GroupBy, Position, QueryFilter

# The event of each legal move (one per move: the table never leads two events from one
# state to the same state); a submit, the first move, is no event of the table.
SUBMIT = "submit"
_EVENTS: Mapping[tuple[QueryState, QueryState], Event] = {
    (source, target): event for (source, event), target in TRANSITIONS.items()
}


def event_of(from_state: QueryState | None, to_state: QueryState) -> str | None:
    """The event that moved a query from `from_state` to `to_state`: `submit` for the
    first move; None for a move the table does not have (none is ever written)."""
    if from_state is None:
        return SUBMIT
    event = _EVENTS.get((from_state, to_state))
    return None if event is None else event.value


@dataclass(frozen=True)
class Page:
    """A page of queries, newest first, and where it ended when more may follow."""

    records: list[QueryRecord]
    last: Position | None


@dataclass(frozen=True)
class HistoryEntry:
    """One move of a query, in the run it belongs to (1, then one more per refresh)."""

    run: int
    from_state: QueryState | None
    to_state: QueryState
    event: str | None
    reason: str | None
    by: str | None
    at: datetime


@dataclass(frozen=True)
class UsageGroup:
    key: str
    queries: int
    succeeded: int
    failed: int
    cancelled: int
    data_scanned_bytes: int
    cost_usd: float


class Reports:
    """Listings, histories and usage, each through the caller's eyes."""

    def __init__(self, store: Store, *, price_per_tb_usd: float) -> None:
        self.store = store
        self.price_per_tb_usd = price_per_tb_usd

    @staticmethod
    def owner_seen(caller: Caller, owner: str | None) -> str | None:
        """The owner whose queries `caller` sees when it asks for `owner`'s (None: not
        named): any one, or everyone's (None), for an admin; its own otherwise. Naming
        another owner without the admin scope is Forbidden: the answer would be empty
        whether that owner exists or not, and a client that expects another's queries
        is better told."""
        if caller.sees_all:
            return owner
        if owner is not None and owner != caller.name:
            raise Forbidden(
                f"owner: this key sees only its own queries ({caller.name}); "
                "naming another owner takes the admin scope"
            )
        return caller.name

    async def page(
        self, caller: Caller, where: QueryFilter, after: Position | None, limit: int
    ) -> Page:
        """At most `limit` of the queries under `where` that `caller` sees, newest first,
        after `after`. A query waiting for an Athena slot says so in its state_reason, as
        its status does (Lookup.status)."""
        where = dataclasses.replace(where, owner=self.owner_seen(caller, where.owner))
        # One more than asked: whether another page follows.
        records = await self.store.list_queries(where, after, limit + 1)
        more = len(records) > limit
        records = records[:limit]
        waiting = [record for record in records if waits_for_slot(record)]
        if waiting:
            places = await self.store.places_ahead_each(waiting)
            records = [
                dataclasses.replace(
                    record, state_reason=WAITING_REASON.format(ahead=places[record.id])
                )
                if record.id in places
                else record
                for record in records
            ]
        last = Position(records[-1].submitted_at, records[-1].id) if more else None
        return Page(records, last)

    async def history(
        self, query_id: str, caller: Caller
    ) -> tuple[QueryRecord, list[HistoryEntry]]:
        """The query and every move of every run of it, oldest first; QueryNotFound
        when `caller` neither owns it nor sees all (as Lookup.get)."""
        record = await self.store.get(query_id)
        if record is None or not caller.owns(record.owner):
            raise QueryNotFound(query_id)
        entries = []
        run = 1
        for transition in await self.store.history(query_id):
            event = event_of(transition.from_state, transition.to_state)
            if event == Event.REFRESH:
                run += 1
            entries.append(
                HistoryEntry(
                    run=run,
                    from_state=transition.from_state,
                    to_state=transition.to_state,
                    event=event,
                    reason=transition.reason,
                    by=transition.by,
                    at=transition.at,
                )
            )
        return record, entries

    async def usage(
        self,
        caller: Caller,
        group_by: GroupBy,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[UsageGroup]:
        """The queries `caller` sees (its own; everyone's for an admin) submitted in
        [since, until), counted by `group_by` with their bytes scanned and cost: each
        query's cost is rounded as Athena bills it (athenaq/pricing.py) before the sum."""
        rows = await self.store.usage(
            group_by, owner=self.owner_seen(caller, None), since=since, until=until
        )
        return [
            UsageGroup(
                key=row.key,
                queries=row.queries,
                succeeded=row.succeeded,
                failed=row.failed,
                cancelled=row.cancelled,
                data_scanned_bytes=row.data_scanned_bytes,
                cost_usd=cost_of(row.billed_mib, self.price_per_tb_usd),
            )
            for row in rows
        ]

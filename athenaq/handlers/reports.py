"""The endpoints that find queries again: the listing, a query's history, the usage."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from athenaq import cursor
from athenaq.handlers.base import BaseHandler
from athenaq.handlers.queries import _load_parameters
from athenaq.identity import READ
from athenaq.schemas import HistorySchema, ListRequest, UsageRequest, UsageSchema
from athenaq.states import QueryState
from athenaq.store.listing import Position, QueryFilter

_LIST_REQUEST = ListRequest()
_USAGE_REQUEST = UsageRequest()
_HISTORY = HistorySchema()
_USAGE = UsageSchema()
# The listing's filters, in the order its `next` link gives them.
_FILTERS = ("state", "label", "since", "until", "owner")


class QueriesHandler(BaseHandler):
    """GET /queries: 200 a page of the caller's queries, newest first; 400, 403."""

    required_scope = READ

    async def get(self) -> None:
        request = _load_parameters(_LIST_REQUEST, self.request.query_arguments)
        filters = _canonical(request)
        after = None
        if "cursor" in request:
            at, query_id = cursor.decode(request["cursor"], filters)
            after = Position(at, query_id)
        where = QueryFilter(
            owner=request.get("owner"),
            state=QueryState(request["state"]) if "state" in request else None,
            label=request.get("label"),
            since=request.get("since"),
            until=request.get("until"),
        )
        limit = request["limit"]
        page = await self.ctx.reports.page(self.caller, where, after, limit)
        following = None
        if page.last is not None:
            position = cursor.encode(page.last.submitted_at, page.last.id, filters)
            following = "/queries?" + urlencode(
                [*filters.items(), ("limit", str(limit)), ("cursor", position)]
            )
        statuses = [await self.status_object(record) for record in page.records]
        self.write_json({"queries": statuses, "next": following})


def _canonical(request: dict[str, Any]) -> dict[str, str]:
    """The filters given, each as text in one form (the cursor's check is made over it)."""
    canonical = {}
    for name in _FILTERS:
        if name not in request:
            continue
        value = request[name]
        if name == "label":
            value = f"{value[0]}:{value[1]}"
        elif name in ("since", "until"):
            # To the microsecond, as stored: the millisecond of isoformat() would move it.
            value = value.isoformat(timespec="microseconds") + "Z"
        canonical[name] = value
    return canonical


class HistoryHandler(BaseHandler):
    """GET /query/<id>/history: 200 every move of every run, oldest first; 404."""

    required_scope = READ

    async def get(self, segment: str) -> None:
        record, entries = await self.ctx.reports.history(self.query_id(segment), self.caller)
        self.write_json(_HISTORY.dump({"id": record.id, "transitions": entries}))


class UsageHandler(BaseHandler):
    """GET /usage: 200 the caller's queries (an admin's: everyone's) counted by owner,
    day or workgroup, with the bytes they scanned and their cost; 400."""

    required_scope = READ

    async def get(self) -> None:
        request = _load_parameters(_USAGE_REQUEST, self.request.query_arguments)
        groups = await self.ctx.reports.usage(
            self.caller, request["group_by"], request.get("since"), request.get("until")
        )
        self.write_json(_USAGE.dump({"groups": groups}))


default_handlers = [
    (r"/queries", QueriesHandler),
    (r"/query/([^/]+)/history", HistoryHandler),
    (r"/usage", UsageHandler),
]

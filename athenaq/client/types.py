"""What the API answers, as typed dictionaries: the JSON as the service sends it (see
docs/api.md), so a field the service adds later is there too, untyped."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Literal, NotRequired, Required, TypedDict

State = Literal["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]
# The states a query stays in until a refresh.
FINAL_STATES: frozenset[str] = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
ResultFormat = Literal["csv", "jsonl"]
GroupBy = Literal["owner", "day", "workgroup"]
Cell = str | None


class SubmitFields(TypedDict, total=False):
    """The optional fields of a submit (docs/api.md, "Submitting a query"); one left
    out, or None, takes the service's default."""

    database: str | None
    workgroup: str | None
    catalog: str | None
    # Athena's ExecutionParameters, SQL literals for the `?` of the SQL in order.
    parameters: list[str] | None
    labels: dict[str, str] | None
    result_reuse_minutes: int | None
    timeout_seconds: int | None
    callback_url: str | None
    max_age_seconds: int | None
    # Sent as the Idempotency-Key header; the client makes one when not given.
    idempotency_key: str | None


class WaitOptions(TypedDict, total=False):
    """How `wait` waits: `timeout` seconds at most (None, the default: no limit; then
    WaitTimeout), long-polls of up to `poll` seconds (30; 1 to 60), and `on_status`
    called with each status seen (the first at once)."""

    timeout: float | None
    poll: int
    on_status: Callable[[Status], object] | None


class PageOptions(TypedDict, total=False):
    """Which results `results` iterates: pages of up to `page_size` rows (1,000; at most
    10,000) from row `offset` (0)."""

    page_size: int
    offset: int


class DownloadOptions(TypedDict, total=False):
    """How `download` writes: `format` "csv" (the default) or "jsonl"; `progress`
    called with the bytes written so far, after each chunk."""

    format: ResultFormat
    progress: Callable[[int], object] | None


class ListFilters(TypedDict, total=False):
    """Which queries `list` iterates (all must hold): `state`; `label`, a (key, value)
    pair; submitted at or after `since` and before `until` (datetimes, UTC when naive,
    or ISO 8601 text); `owner` (an admin's listing); fetched `page_size` at a time (100;
    1 to 500)."""

    state: State | None
    label: tuple[str, str] | None
    since: str | datetime | None
    until: str | datetime | None
    owner: str | None
    page_size: int


class UsageFilters(TypedDict, total=False):
    """Which queries `usage` counts: submitted in [`since`, `until`), grouped by
    `group_by`: "owner" (the default), "day" or "workgroup"."""

    since: str | datetime | None
    until: str | datetime | None
    group_by: GroupBy


class Submission(TypedDict):
    """The answer to a submit: `id` and `state`, `cached` or `joined` when the service
    answered from its cache; and two of the client's own: the `idempotency_key` sent
    (send it again to retry the same submit safely) and whether the answer was a
    `replayed` one (the `Idempotent-Replayed` header)."""

    id: str
    state: State
    cached: NotRequired[bool]
    joined: NotRequired[bool]
    idempotency_key: str
    replayed: bool


class Accepted(TypedDict):
    """The answer to a refresh or a cancel: `cancel_requested` when Athena has not
    confirmed a cancel yet (the service finishes it)."""

    id: str
    state: State
    cancel_requested: NotRequired[bool]


class Statistics(TypedDict, total=False):
    data_scanned_bytes: int | None
    engine_execution_ms: int | None
    queue_ms: int | None
    total_execution_ms: int | None
    cost_usd: float | None


class Callback(TypedDict):
    url: str
    delivered_at: str | None
    attempts: int
    last_error: str | None


class Status(TypedDict, total=False):
    """A query's status object (`GET /query/<id>/status`)."""

    id: Required[str]
    state: Required[State]
    state_reason: str | None
    query: str
    database: str
    workgroup: str
    catalog: str
    parameters: list[str] | None
    labels: dict[str, str] | None
    result_reuse_minutes: int | None
    reused_previous_result: bool | None
    timeout_seconds: int | None
    timeout_at: str | None
    callback_url: str | None
    callback: Callback | None
    athena_query_execution_id: str | None
    submitted_at: str
    started_at: str | None
    completed_at: str | None
    results_at: str | None
    results_expires_at: str | None
    cancel_requested: bool
    row_count: int | None
    results_source: str | None
    owner: str
    statistics: Statistics


class Column(TypedDict):
    name: str
    type: str


class ResultPage(TypedDict):
    """A page of a query's results (`GET /query/<id>/results`): `rows` from `offset`,
    cells in Athena's text form, SQL NULL as None; `row_count` is the whole result's."""

    id: str
    state: State
    results_at: str
    columns: list[Column]
    rows: list[list[Cell]]
    row_count: int
    offset: int
    limit: int
    next: str | None


Transition = TypedDict(
    "Transition",
    {
        "run": int,
        "from": State | None,
        "to": State,
        "event": str,
        "reason": str | None,
        "by": str | None,
        "at": str,
    },
)


class History(TypedDict):
    """Every move of a query, every run, oldest first (`GET /query/<id>/history`)."""

    id: str
    transitions: list[Transition]


class UsageGroup(TypedDict):
    key: str
    queries: int
    succeeded: int
    failed: int
    cancelled: int
    data_scanned_bytes: int
    cost_usd: float


class Usage(TypedDict):
    """Counts, bytes and cost of the caller's queries (`GET /usage`)."""

    groups: list[UsageGroup]

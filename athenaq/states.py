"""The vocabulary of a query's life: its states, the events that move it, the legal moves,
and the record the store keeps. Everything else in athenaq builds on this module, which
imports nothing of athenaq."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class QueryState(StrEnum):
    """A query's state; the names are Athena's own."""

    #: accepted; Athena has not started it, or the service has not sent it yet
    QUEUED = "QUEUED"
    #: Athena runs it, or it succeeded in Athena and its results are being stored
    RUNNING = "RUNNING"
    #: finished, and its results are stored and readable
    SUCCEEDED = "SUCCEEDED"
    #: Athena, or the service storing its results, failed it; state_reason says why
    FAILED = "FAILED"
    #: stopped on a client's request before it finished
    CANCELLED = "CANCELLED"

    @property
    def is_finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({QueryState.SUCCEEDED, QueryState.FAILED, QueryState.CANCELLED})
UNFINISHED = frozenset({QueryState.QUEUED, QueryState.RUNNING})


class Event(StrEnum):
    """What happened to a query."""

    #: Athena runs the query, or it succeeded there and its results are being stored
    RUN = "run"
    #: the results are stored
    SUCCEED = "succeed"
    #: Athena failed the query, or its results could not be stored
    FAIL = "fail"
    #: Athena confirmed a stop, or the query was cancelled before it was sent
    CANCEL = "cancel"
    #: a client asked for a new execution of a finished query
    REFRESH = "refresh"


Q = QueryState
TRANSITIONS: Mapping[tuple[QueryState, Event], QueryState] = {
    (Q.QUEUED, Event.RUN): Q.RUNNING,
    (Q.QUEUED, Event.SUCCEED): Q.SUCCEEDED,
    (Q.QUEUED, Event.FAIL): Q.FAILED,
    (Q.QUEUED, Event.CANCEL): Q.CANCELLED,
    (Q.RUNNING, Event.SUCCEED): Q.SUCCEEDED,
    (Q.RUNNING, Event.FAIL): Q.FAILED,
    (Q.RUNNING, Event.CANCEL): Q.CANCELLED,
    (Q.SUCCEEDED, Event.REFRESH): Q.QUEUED,
    (Q.FAILED, Event.REFRESH): Q.QUEUED,
    (Q.CANCELLED, Event.REFRESH): Q.QUEUED,
}
LEGAL_MOVES = frozenset((source, target) for (source, _), target in TRANSITIONS.items())


class IllegalTransition(Exception):
    """The transition table has no move for this event in this state: a bug or a lost
    race, never a client's fault alone."""

    def __init__(self, state: QueryState, event: Event) -> None:
        super().__init__(f"{event.value} is not allowed in state {state.value}")
        self.state = state
        self.event = event


def next_state(state: QueryState, event: Event) -> QueryState:
    """The state `event` leads to from `state`; IllegalTransition when the table has no move."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None


# Athena's catalog when a query names none: the AWS Glue Data Catalog.
DEFAULT_CATALOG = "AwsDataCatalog"


@dataclass(frozen=True, slots=True)
class QueryRecord:
    """One query as stored; `version` is the compare-and-set token. With slots: a poller
    keeps thousands of them from tick to tick, which each garbage collection walks, and
    an instance without a dict is one object to walk rather than two."""

    id: str
    query_text: str
    database_name: str
    workgroup: str
    state: QueryState
    state_reason: str | None
    athena_execution_id: str | None
    run: int
    cancel_requested_at: datetime | None
    submitted_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    results_at: datetime | None
    row_count: int | None
    # Where the stored results were read from: "s3" (the result object) or "api"
    # (GetQueryResults); None until they are stored.
    results_source: str | None
    data_scanned_bytes: int | None
    engine_execution_ms: int | None
    queue_ms: int | None
    total_execution_ms: int | None
    version: int
    updated_at: datetime
    # The name of the key that submitted it ("anonymous" when keys are off).
    owner: str
    # The process that polls it and stores its results, and until when; None: nobody.
    lease_holder: str | None
    lease_expires_at: datetime | None
    # When this run took one of athena.max_running's slots; None while it waits for one
    # (only an admitted query is sent to Athena).
    admitted_at: datetime | None = None
    # What the client asked besides the SQL (SubmitOptions), as submitted.
    catalog: str = DEFAULT_CATALOG
    parameters: tuple[str, ...] | None = None
    labels: Mapping[str, str] | None = None
    cache_key: str | None = None
    result_reuse_minutes: int | None = None
    timeout_seconds: int | None = None
    callback_url: str | None = None
    # When the current run times out: timeout_seconds after its submit or refresh.
    timeout_at: datetime | None = None
    # Whether Athena served the current run from an earlier execution's results.
    reused_previous_result: bool | None = None
    # When retention removed the current run's result files.
    results_expired_at: datetime | None = None

    @property
    def is_finished(self) -> bool:
        return self.state.is_finished

    def timed_out(self, now: datetime) -> bool:
        """Whether the current run's deadline (timeout_at) has passed at `now`."""
        return self.timeout_at is not None and self.timeout_at <= now


# The fields of a QueryRecord that belong to one Athena execution: a refresh clears them,
# so nothing of the old execution survives it (its Athena slot included).
EXECUTION_FIELDS = (
    "admitted_at",
    "athena_execution_id",
    "cancel_requested_at",
    "started_at",
    "completed_at",
    "results_at",
    "row_count",
    "results_source",
    "data_scanned_bytes",
    "engine_execution_ms",
    "queue_ms",
    "total_execution_ms",
    "reused_previous_result",
    "results_expired_at",
)


@dataclass(frozen=True, slots=True)
class SubmitOptions:
    """What a submit may ask besides the SQL: its Athena context (database, workgroup,
    catalog; None: the config's), ExecutionParameters and result reuse; labels;
    athenaq's cache key; a timeout; a webhook. Stored with the query as given, the
    context as resolved (Commands.submit)."""

    database: str | None = None
    workgroup: str | None = None
    catalog: str | None = None
    parameters: tuple[str, ...] | None = None
    labels: Mapping[str, str] | None = None
    cache_key: str | None = None
    result_reuse_minutes: int | None = None
    timeout_seconds: int | None = None
    callback_url: str | None = None


# A plain submit: the SQL alone.
NO_OPTIONS = SubmitOptions()

# How long an Idempotency-Key holds: a request with the same key within this long gets the
# first one's query again.
IDEMPOTENCY_HOURS = 24


@dataclass(frozen=True, slots=True)
class Idempotency:
    """A submit's Idempotency-Key, and the SHA-256 of its request (the parsed body) that
    tells a retry of it from another request reusing the key."""

    key: str
    request_hash: str


@dataclass(frozen=True, slots=True)
class FirstAnswer:
    """What an owner's Idempotency-Key answered first: the query, the status code (200 for
    a cached answer, 202 otherwise), the request's hash, and when."""

    query_id: str
    status_code: int
    request_hash: str
    created_at: datetime

    def expired(self, now: datetime) -> bool:
        return self.created_at <= now - timedelta(hours=IDEMPOTENCY_HOURS)


# The fields of a lease: a submit, a refresh or the poller's claim sets them, and they
# move no state (a claim changes no version).
LEASE_FIELDS = ("lease_holder", "lease_expires_at")


@dataclass(frozen=True)
class Lease:
    """A process's hold on the queries it polls: its name, and how long a hold lasts
    without renewal (after that, another process takes the query over)."""

    holder: str
    seconds: float

    def expires(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.seconds)


@dataclass(frozen=True)
class Transition:
    """One row of a query's append-only history."""

    query_id: str
    from_state: QueryState | None
    to_state: QueryState
    reason: str | None
    at: datetime
    # Who caused it: a key's name, "poller" or "timeout"; None before keys existed.
    by: str | None

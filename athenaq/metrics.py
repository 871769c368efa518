"""The service's Prometheus metrics, served by GET /metrics in the Prometheus text format.

The metric objects live here, at the bottom of the layers, so that the module doing a
thing records it, once: the machine its transitions, athena.py each AWS call, the poller
its ticks, the ingest each result it stores, the request log line each request.

They are the process's: every service in a process records into the same objects (tests
run several in one). Each service serves them through a registry of its own (`registry`),
with what only it can tell: its store's counts, the leases its poller holds, how long ago
its poller last ticked (`ServiceCollector`). Several processes each serve their own, the
Prometheus way: Prometheus scrapes every one and sums or aggregates across them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.registry import Collector
from tornado.routing import PathMatches

if TYPE_CHECKING:
    from tornado.web import RequestHandler

# The route label of a request no route matches (answered 404 by the default handler).
UNMATCHED = "unmatched"
# The method label of a request whose method no handler has (answered 405).
OTHER_METHOD = "other"
# Where a stored result was read from (the ingest's `source` label): its first
# GetQueryResults page alone, the result object in S3, or GetQueryResults page by page
# (when the object could not be read).
FIRST_PAGE = "first_page"
S3 = "s3"
GET_QUERY_RESULTS = "get_query_results"
INGEST_SOURCES = (FIRST_PAGE, S3, GET_QUERY_RESULTS)
# A call's outcome (the `outcome` label of Athena and S3 calls).
OK = "ok"
THROTTLED = "throttled"
CLIENT_ERROR = "client_error"
SERVER_ERROR = "server_error"
UNREACHABLE = "unreachable"
CANCELLED = "cancelled"
# The event of a new query: the first row of its history, as `Event` names the others.
SUBMIT = "submit"

# No `_created` series (when each series was made): from the text format Prometheus
# stores them as series of their own, one per counter and histogram series, and uses
# them for nothing.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Requests range from a status read (ms) to a long-poll or a large download (a minute).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# A result stored from its first page takes ms; a large one's download minutes.
INGEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

TRANSITIONS = Counter(
    "athenaq_transitions",
    "State changes the machine wrote, by event (submit for a new query)",
    ["event"],
    registry=None,
)
ATHENA_CALLS = Histogram(
    "athenaq_athena_call_duration_seconds",
    "Athena and S3 calls by operation and outcome, each with its retries",
    ["operation", "outcome"],
    registry=None,
)
POLL_TICKS = Histogram(
    "athenaq_poll_tick_duration_seconds",
    "The poller's ticks: one round over the queries this process holds",
    registry=None,
)
INGEST_BYTES = Counter(
    "athenaq_ingest_bytes",
    "Bytes of results stored, by where they were read from",
    ["source"],
    registry=None,
)
INGEST_SECONDS = Histogram(
    "athenaq_ingest_duration_seconds",
    "Results stored, from the first Athena call to the files in place, by source",
    ["source"],
    buckets=INGEST_BUCKETS,
    registry=None,
)
REQUESTS = Histogram(
    "athenaq_http_request_duration_seconds",
    "HTTP requests by method, route pattern and status",
    ["method", "route", "status"],
    buckets=REQUEST_BUCKETS,
    registry=None,
)
# Every series that can be known up front starts at 0, so that a rate over it is right
# from its first increment.
for _event in (SUBMIT, "run", "succeed", "fail", "cancel", "refresh"):
    TRANSITIONS.labels(_event)
for _source in INGEST_SOURCES:
    INGEST_BYTES.labels(_source)
    INGEST_SECONDS.labels(_source)

_SHARED: tuple[Collector, ...] = (
    TRANSITIONS,
    ATHENA_CALLS,
    POLL_TICKS,
    INGEST_BYTES,
    INGEST_SECONDS,
    REQUESTS,
    # The process's CPU, memory and open files, and the Python it runs on.
    ProcessCollector(registry=None),
    PlatformCollector(registry=None),
)


def registry(*own: Collector) -> CollectorRegistry:
    """A service's registry: the process's metrics and the service's `own` collectors."""
    made = CollectorRegistry()
    for collector in (*_SHARED, *own):
        made.register(collector)
    GCCollector(registry=made)  # it takes no other way in
    return made


def route_of(handler: RequestHandler) -> str:
    """The pattern of the route that served `handler`'s request, as the routes name it
    (never the path itself: a label per query id would grow without end); UNMATCHED for a
    path no route matches."""
    for rule in handler.application.wildcard_router.rules:
        matcher = rule.matcher
        if (
            rule.target is type(handler)
            and isinstance(matcher, PathMatches)
            and matcher.match(handler.request) is not None
        ):
            return matcher.regex.pattern.removesuffix("$")
    return UNMATCHED


def request_done(handler: RequestHandler, status: int, seconds: float) -> None:
    """Count a request answered with `status` after `seconds`."""
    method = handler.request.method or OTHER_METHOD
    if method not in handler.SUPPORTED_METHODS:
        method = OTHER_METHOD  # any token is a method on the wire: no label per one
    REQUESTS.labels(method, route_of(handler), str(status)).observe(seconds)


@dataclass(frozen=True)
class StoreFigures:
    """What a service last read of its store for the metrics: queries by state (every
    state), those QUEUED waiting for an Athena slot, and when (time.monotonic())."""

    by_state: Mapping[str, int]
    waiting: int
    read_at: float


class ServiceCollector(Collector):
    """The figures of one service, read at each scrape from what it hands over."""

    def __init__(
        self,
        figures: Callable[[], StoreFigures | None],
        held: Callable[[], int],
        last_tick: Callable[[], float | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`figures`: the latest store figures (None before the first read); `held`: how
        many queries this process's poller holds; `last_tick`: time.monotonic() at the end
        of the poller's latest tick (None before the first)."""
        self._figures = figures
        self._held = held
        self._last_tick = last_tick
        self._clock = clock
        self._started = clock()

    def collect(self) -> Iterable[Metric]:
        now = self._clock()
        figures = self._figures()
        if figures is not None:
            queries = GaugeMetricFamily(
                "athenaq_queries", "Queries in the store by state", labels=["state"]
            )
            for state, count in sorted(figures.by_state.items()):
                queries.add_metric([state], count)
            yield queries
            yield GaugeMetricFamily(
                "athenaq_admission_waiting",
                "Queries QUEUED waiting for an Athena slot (athena.max_running), all processes'",
                value=figures.waiting,
            )
            yield GaugeMetricFamily(
                "athenaq_store_figures_age_seconds",
                "How long ago athenaq_queries and athenaq_admission_waiting were read",
                value=now - figures.read_at,
            )
        yield GaugeMetricFamily(
            "athenaq_leases_held",
            "Unfinished queries this process holds: polls them and stores their results",
            value=self._held(),
        )
        last_tick = self._last_tick()
        yield GaugeMetricFamily(
            "athenaq_poll_lag_seconds",
            "Seconds since the poller's latest tick ended (since the start before the first)",
            value=now - (self._started if last_tick is None else last_tick),
        )

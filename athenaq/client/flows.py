"""What the two clients share: every request they make, how they read its answer, when
they send it again, and how they follow a query, written once and free of I/O.

An operation is a *flow*, a generator that yields steps and is sent what each step
gave: a `Call` (an HTTP request; sent back the httpx.Response) or a `Pause` (seconds to
sleep; sent back None). Its return value is the operation's result; it raises the
client's exceptions. `Client` runs flows with blocking I/O and `AsyncClient` awaits
them; neither knows anything of the API.
"""

from __future__ import annotations

import email.utils
import itertools
import logging
import math
import os
import random
import time
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, cast
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from athenaq.client import types as api
from athenaq.client.errors import APIError, Unreachable, WaitTimeout
from athenaq.client.files import Sink, Target

T = TypeVar("T")
Item = TypeVar("Item")

logger = logging.getLogger("athenaq.client")

# The quick start's server (README): `athenaq --config etc/local.json`.
DEFAULT_URL = "http://127.0.0.1:8080"
URL_VARIABLE = "ATHENAQ_URL"
KEY_VARIABLE = "ATHENAQ_KEY"
# The longest `?wait=N` the service takes (docs/api.md, "Long-poll").
MAX_WAIT_SECONDS = 60
# Codes of answers after which the service did nothing, whatever the request was: it can
# be sent again as it is (docs/api.md, "Errors").
NOTHING_DONE = frozenset(
    {"overloaded", "rate_limited", "too_many_queries", "quota_exceeded", "unavailable"}
)
RETRIED_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class Call:
    """One HTTP request. `replayable`: sending it twice does no more than once (a read,
    or a submit with its Idempotency-Key), so any 429 or 503 may be retried; otherwise
    only those whose code says nothing was done. `sink`: stream a 200's body there."""

    method: str
    path: str
    params: Mapping[str, str | int] | None = None
    json: Any = None
    headers: Mapping[str, str] | None = None
    replayable: bool = True
    # Seconds to wait for the answer beyond the client's timeout (a long-poll's wait).
    extra_seconds: float = 0.0
    sink: Sink | None = None

    def sink_for(self, response: httpx.Response) -> Sink | None:
        """Where `response`'s body goes: the sink for a download's 200, else None (read
        into memory)."""
        return self.sink if response.status_code == 200 else None

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """The request, built by `http` (its base URL, headers and timeout)."""
        timeout = http.timeout
        if self.extra_seconds:
            read = (timeout.read or 0) + self.extra_seconds
            timeout = httpx.Timeout(read, connect=timeout.connect)
        return http.build_request(
            self.method,
            self.path,
            params=self.params,
            json=self.json,
            headers=self.headers,
            timeout=timeout,
        )


@dataclass(frozen=True)
class Pause:
    """Sleep this many seconds before the next step."""

    seconds: float


Step = Call | Pause
Flow = Generator[Step, httpx.Response | None, T]


@dataclass(frozen=True)
class Retries:
    """When a 429 or a 503 is sent again: at most `attempts` more times, after the
    `Retry-After` the answer asks for, or `backoff` seconds doubling at each retry
    (with up to a quarter more at random, so clients that met one overload do not all
    come back at once), whichever is longer. An answer asking for more than `max_delay`
    seconds (a daily quota's wait until midnight) is raised at once instead."""

    attempts: int = 4
    backoff: float = 0.5
    max_delay: float = 60.0

    def delay(self, call: Call, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before sending `call` again after `response`, or None to stop."""
        if response.status_code not in RETRIED_STATUSES or attempt >= self.attempts:
            return None
        if not call.replayable and _error_code(response) not in NOTHING_DONE:
            return None
        asked = retry_after(response) or 0.0
        backoff = self.backoff * 2**attempt * random.uniform(1.0, 1.25)
        delay = max(asked, backoff)
        return delay if delay <= self.max_delay else None


def retry_after(response: httpx.Response) -> float | None:
    """The seconds `Retry-After` asks for (a number, or an HTTP date), or None."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error_code(response: httpx.Response) -> str | None:
    try:
        document = response.json()
        code = document["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


def raise_for_error(response: httpx.Response) -> None:
    """APIError for an answer of status 400 and up, from its envelope when it has one
    (a proxy in the way may answer with something else)."""
    if response.status_code < 400:
        return
    code, message, state = f"http_{response.status_code}", response.reason_phrase, None
    try:
        document = response.json()
        error = document["error"]
        code, message = str(error["code"]), str(error["message"])
        state = document.get("state")
    except (ValueError, KeyError, TypeError):
        pass
    raise APIError(
        response.status_code, code, message, state=state, retry_after=retry_after(response)
    )


def exchange(call: Call, retries: Retries) -> Flow[httpx.Response]:
    """Send `call`, again after each answer `retries` says to retry; the last answer."""
    for attempt in itertools.count():
        response = yield call
        assert response is not None
        delay = retries.delay(call, response, attempt)
        if delay is None:
            return response
        logger.info(
            "athenaq answered %s %s to %s %s; sending it again in %.1f s (retry %d of %d)",
            response.status_code,
            _error_code(response) or "",
            call.method,
            urlsplit(str(response.request.url)).path,
            delay,
            attempt + 1,
            retries.attempts,
        )
        yield Pause(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def answer(call: Call, retries: Retries) -> Flow[Any]:
    """The JSON document of `call`'s answer; APIError for an error."""
    response = yield from exchange(call, retries)
    raise_for_error(response)
    return response.json()


def public_url(url: str) -> str:
    """`url` without a user name or password, fit for a message."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def unreachable(url: str, exc: httpx.TransportError) -> Unreachable:
    """The error for a request to `url` that got no answer."""
    return Unreachable(f"no answer from {public_url(url)}: {type(exc).__name__}: {exc}")


def _segment(query_id: str) -> str:
    # An id is the service's UUID; anything else is sent escaped, and answered 404.
    return quote(query_id, safe="")


def _time(value: str | datetime | None) -> str | None:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return value


def _params(**values: str | int | None) -> dict[str, str | int]:
    return {name: value for name, value in values.items() if value is not None}


@dataclass
class Pager(Generic[Item]):
    """A listing the service answers in pages, each naming the next (`next`): the path
    of the next page to ask for, and how a page's document gives its items."""

    path: str | None
    params: Mapping[str, str | int] | None
    items: Callable[[Any], list[Item]]
    retries: Retries

    def next_page(self) -> Flow[list[Item]] | None:
        """The flow of the next page's items, or None after the last page."""
        if self.path is None:
            return None
        return self._page(Call("GET", self.path, self.params))

    def _page(self, call: Call) -> Flow[list[Item]]:
        document = yield from answer(call, self.retries)
        # `next` holds the whole query string of the next page.
        self.path, self.params = document["next"], None
        return self.items(document)


@dataclass(frozen=True)
class Settings:
    """How a client reaches the service: its URL and key (from ATHENAQ_URL and
    ATHENAQ_KEY when not given), the seconds it waits for an answer, and its retries."""

    url: str
    key: str | None = field(repr=False)
    timeout: float
    retries: Retries

    @classmethod
    def of(
        cls, url: str | None, key: str | None, timeout: float, retries: Retries | None
    ) -> Settings:
        url = url or os.environ.get(URL_VARIABLE) or DEFAULT_URL
        key = key or os.environ.get(KEY_VARIABLE) or None
        return cls(url.rstrip("/"), key, timeout, retries or Retries())

    def http_options(self) -> dict[str, Any]:
        """What httpx.Client and httpx.AsyncClient are made with."""
        from importlib.metadata import version

        headers = {"User-Agent": f"athenaq-client/{version('athenaq')}"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        return {
            "base_url": self.url,
            "headers": headers,
            "timeout": httpx.Timeout(self.timeout),
            "follow_redirects": False,
            # Redirects are not followed, so an http:// URL never meets TLS: no need to
            # load the certificate authorities (a fifth of a second a command line call).
            "verify": urlsplit(self.url).scheme == "https",
        }


class Flows:
    """Every operation of the API as a flow; both clients run these."""

    def __init__(self, retries: Retries) -> None:
        self.retries = retries

    def _answer(self, call: Call) -> Flow[Any]:
        return answer(call, self.retries)

    def submit(self, sql: str, fields: api.SubmitFields) -> Flow[api.Submission]:
        """POST /query, with an Idempotency-Key (a new UUID when none is given), so that
        the retries of a 429 or 503 never start the query twice."""
        options = {name: value for name, value in fields.items() if value is not None}
        key = str(options.pop("idempotency_key", None) or uuid.uuid4())
        call = Call("POST", "/query", json={"query": sql, **options},
                    headers={"Idempotency-Key": key})  # fmt: skip
        response = yield from exchange(call, self.retries)
        raise_for_error(response)
        submission = cast(api.Submission, response.json())
        submission["idempotency_key"] = key
        submission["replayed"] = response.headers.get("Idempotent-Replayed") == "true"
        return submission

    def status(self, query_id: str, wait: int | None = None) -> Flow[api.Status]:
        """GET /query/<id>/status; with `wait`, a long-poll of up to that many seconds."""
        call = Call(
            "GET",
            f"/query/{_segment(query_id)}/status",
            _params(wait=wait),
            extra_seconds=wait or 0,
        )
        return cast(api.Status, (yield from self._answer(call)))

    def wait(self, query_id: str, options: api.WaitOptions) -> Flow[api.Status]:
        """The status once the query is finished, by long-polls; WaitTimeout past the
        deadline (to within a second)."""
        timeout, on_status = options.get("timeout"), options.get("on_status")
        poll = max(1, min(options.get("poll", 30), MAX_WAIT_SECONDS))
        started = time.monotonic()
        status = yield from self.status(query_id)
        while True:
            if on_status is not None:
                on_status(status)
            if status["state"] in api.FINAL_STATES:
                return status
            wait = poll
            if timeout is not None:
                left = timeout - (time.monotonic() - started)
                if left <= 0:
                    raise WaitTimeout(status, timeout)
                wait = min(wait, max(1, math.ceil(left)))
            status = yield from self.status(query_id, wait)

    def results(self, query_id: str, options: api.PageOptions) -> Pager[api.ResultPage]:
        """The pages of GET /query/<id>/results."""
        path = f"/query/{_segment(query_id)}/results"
        params = {"offset": options.get("offset", 0), "limit": options.get("page_size", 1000)}
        return Pager(path, params, lambda document: [document], self.retries)

    def download(self, query_id: str, target: Target, options: api.DownloadOptions) -> Flow[int]:
        """GET /query/<id>/results?format=..., streamed to `target`; the bytes written."""
        result_format = options.get("format", "csv")
        if result_format not in ("csv", "jsonl"):
            raise ValueError(f"format must be csv or jsonl, not {result_format!r}")
        sink = Sink(target, options.get("progress"))
        call = Call(
            "GET", f"/query/{_segment(query_id)}/results", {"format": result_format}, sink=sink
        )
        response = yield from exchange(call, self.retries)
        raise_for_error(response)
        return sink.received

    def cancel(self, query_id: str) -> Flow[api.Accepted]:
        """POST /query/<id>/cancel."""
        call = Call("POST", f"/query/{_segment(query_id)}/cancel", replayable=False)
        return cast(api.Accepted, (yield from self._answer(call)))

    def refresh(self, query_id: str) -> Flow[api.Accepted]:
        """POST /query/<id>/refresh."""
        call = Call("POST", f"/query/{_segment(query_id)}/refresh", replayable=False)
        return cast(api.Accepted, (yield from self._answer(call)))

    def listing(self, filters: api.ListFilters) -> Pager[api.Status]:
        """The pages of GET /queries, newest first, following its cursor."""
        label = filters.get("label")
        params = _params(
            state=filters.get("state"),
            label=None if label is None else f"{label[0]}:{label[1]}",
            since=_time(filters.get("since")),
            until=_time(filters.get("until")),
            owner=filters.get("owner"),
            limit=filters.get("page_size", 100),
        )
        return Pager("/queries", params, lambda document: document["queries"], self.retries)

    def history(self, query_id: str) -> Flow[api.History]:
        """GET /query/<id>/history."""
        call = Call("GET", f"/query/{_segment(query_id)}/history")
        return cast(api.History, (yield from self._answer(call)))

    def usage(self, filters: api.UsageFilters) -> Flow[api.Usage]:
        """GET /usage."""
        params = _params(
            since=_time(filters.get("since")),
            until=_time(filters.get("until")),
            group_by=filters.get("group_by", "owner"),
        )
        return cast(api.Usage, (yield from self._answer(Call("GET", "/usage", params))))


H = TypeVar("H", httpx.Client, httpx.AsyncClient)


class Base(Generic[H]):
    """What both clients are made of: their settings (`url` and `key`, from ATHENAQ_URL
    and ATHENAQ_KEY when not given, else the quick start's URL and no key; `timeout`,
    the seconds an answer may take; `retries`), the flows, and the httpx client."""

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: Retries | None = None,
    ) -> None:
        self.settings = Settings.of(url, key, timeout, retries)
        self._flows = Flows(self.settings.retries)
        self._http: H = self._connect(self.settings.http_options())

    def _connect(self, options: dict[str, Any]) -> H:
        raise NotImplementedError

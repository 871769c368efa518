"""`Client`: athenaq's API from blocking code."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any, TypeVar, Unpack, cast

import httpx

from athenaq.client import types as api
from athenaq.client.files import Target
from athenaq.client.flows import Base, Flow, Pager, Pause, Step, unreachable

T = TypeVar("T")


class Client(Base[httpx.Client]):
    """athenaq's HTTP API, one blocking call per operation.

    `Client(url=None, key=None, *, timeout=30.0, retries=None)`: `url` and `key` default
    to the ATHENAQ_URL and ATHENAQ_KEY environment variables (else the quick start's
    http://127.0.0.1:8080, without a key); `timeout` is the seconds an answer may take
    (a long-poll's wait comes on top). A 429 or 503 is sent again as `retries` says (a
    `Retries`: 4 times by default, each after the `Retry-After` asked for or a doubling
    backoff) where that is safe: reads, submits (each carries an Idempotency-Key), and
    answers whose code says nothing was done. Errors raise `APIError` (with the
    envelope's `code`, `message` and HTTP `status`), `Unreachable` or `WaitTimeout`,
    all `ClientError`s.

    Use it as a context manager, or call `close()`, to close its connections::

        with Client("http://127.0.0.1:8080") as athenaq:
            query = athenaq.submit("SELECT 42 AS answer")
            athenaq.wait(query["id"])
            athenaq.download(query["id"], "answer.csv")
    """

    def _connect(self, options: dict[str, Any]) -> httpx.Client:
        return httpx.Client(**options)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the client's connections."""
        self._http.close()

    def submit(self, sql: str, /, **fields: Unpack[api.SubmitFields]) -> api.Submission:
        """Submit `sql`; `fields` are the submit's optional fields (database, workgroup,
        catalog, parameters, labels, result_reuse_minutes, timeout_seconds, callback_url,
        max_age_seconds: see SubmitFields) and its idempotency_key. Answers at once:
        follow the query with `wait` or `status`. A submit sent again with the same
        `idempotency_key` (the answer's, or one of yours) within 24 hours gets the
        first answer back, `replayed`, and starts nothing."""
        return self._run(self._flows.submit(sql, fields))

    def status(self, query_id: str) -> api.Status:
        """The query's status object."""
        return self._run(self._flows.status(query_id))

    def wait(self, query_id: str, **options: Unpack[api.WaitOptions]) -> api.Status:
        """The status once the query is SUCCEEDED, FAILED or CANCELLED, waited for with
        long-polls, each answered as soon as the query finishes (options: `timeout`,
        `poll`, `on_status`; see WaitOptions)."""
        return self._run(self._flows.wait(query_id, options))

    def results(
        self, query_id: str, **options: Unpack[api.PageOptions]
    ) -> Iterator[api.ResultPage]:
        """The query's results page by page, each asked for only once the one before
        has been taken (options: `page_size`, `offset`)."""
        return self._each(self._flows.results(query_id, options))

    def download(
        self, query_id: str, target: Target, **options: Unpack[api.DownloadOptions]
    ) -> int:
        """Stream the whole result to `target`, a path or a binary stream, as CSV or
        JSON lines (options: `format`, `progress`); the bytes written. A path is
        written whole or not at all: a temporary file beside it is renamed over it once
        complete, and removed on an error."""
        return self._run(self._flows.download(query_id, target, options))

    def cancel(self, query_id: str) -> api.Accepted:
        """Cancel the query: CANCELLED once Athena confirmed the stop, or
        `cancel_requested` when the service finishes the cancel later."""
        return self._run(self._flows.cancel(query_id))

    def refresh(self, query_id: str) -> api.Accepted:
        """Run the finished query again, a new Athena execution: QUEUED."""
        return self._run(self._flows.refresh(query_id))

    def history(self, query_id: str) -> api.History:
        """Every move of the query, every run, oldest first."""
        return self._run(self._flows.history(query_id))

    def usage(self, **filters: Unpack[api.UsageFilters]) -> api.Usage:
        """Counts, bytes scanned and cost of the caller's queries (filters: `since`,
        `until`, `group_by`)."""
        return self._run(self._flows.usage(filters))

    def list(self, **filters: Unpack[api.ListFilters]) -> Iterator[api.Status]:
        """The caller's queries, newest first, following the listing's cursor as the
        iteration goes on (filters: `state`, `label`, `since`, `until`, `owner`,
        `page_size`)."""
        return self._each(self._flows.listing(filters))

    def _each(self, pager: Pager[T]) -> Iterator[T]:
        while (page := pager.next_page()) is not None:
            yield from self._run(page)

    def _run(self, flow: Flow[T]) -> T:
        """Carry out `flow`'s steps until it returns."""
        answer = None
        try:
            while True:
                answer = self._carry_out(flow.send(answer))
        except StopIteration as done:
            return cast(T, done.value)

    def _carry_out(self, step: Step) -> httpx.Response | None:
        if isinstance(step, Pause):
            time.sleep(step.seconds)
            return None
        try:
            response = self._http.send(step.request(self._http), stream=True)
            try:
                if (sink := step.sink_for(response)) is None:
                    response.read()
                else:
                    with sink.receiving() as write:
                        for chunk in response.iter_bytes():
                            write(chunk)
            finally:
                response.close()
        except httpx.TransportError as exc:
            raise unreachable(self.settings.url, exc) from None
        return response

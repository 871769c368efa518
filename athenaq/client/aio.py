"""`AsyncClient`: athenaq's API from asyncio code."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, TypeVar, Unpack, cast

import httpx

from athenaq.client import types as api
from athenaq.client.files import Target
from athenaq.client.flows import Base, Flow, Pager, Pause, Step, unreachable

T = TypeVar("T")


class AsyncClient(Base[httpx.AsyncClient]):
    """athenaq's HTTP API for asyncio: `Client`'s methods, made the same way, each a
    coroutine (`results` and `list` async iterators), with the same options, retries
    and errors; `Client` documents each one.

    ::

        async with AsyncClient("http://127.0.0.1:8080") as athenaq:
            query = await athenaq.submit("SELECT 42 AS answer")
            await athenaq.wait(query["id"])
            async for page in athenaq.results(query["id"]):
                print(page["rows"])
    """

    def _connect(self, options: dict[str, Any]) -> httpx.AsyncClient:
        return httpx.AsyncClient(**options)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self._http.aclose()

    async def submit(self, sql: str, /, **fields: Unpack[api.SubmitFields]) -> api.Submission:
        """Submit `sql` with the optional fields and Idempotency-Key (Client.submit)."""
        return await self._run(self._flows.submit(sql, fields))

    async def status(self, query_id: str) -> api.Status:
        """The query's status object."""
        return await self._run(self._flows.status(query_id))

    async def wait(self, query_id: str, **options: Unpack[api.WaitOptions]) -> api.Status:
        """The status once the query is finished, by long-polls (Client.wait)."""
        return await self._run(self._flows.wait(query_id, options))

    def results(
        self, query_id: str, **options: Unpack[api.PageOptions]
    ) -> AsyncIterator[api.ResultPage]:
        """The query's results page by page, each fetched as iterated (Client.results)."""
        return self._each(self._flows.results(query_id, options))

    async def download(
        self, query_id: str, target: Target, **options: Unpack[api.DownloadOptions]
    ) -> int:
        """Stream the whole result to `target`, whole or not at all (Client.download)."""
        return await self._run(self._flows.download(query_id, target, options))

    async def cancel(self, query_id: str) -> api.Accepted:
        """Cancel the query (Client.cancel)."""
        return await self._run(self._flows.cancel(query_id))

    async def refresh(self, query_id: str) -> api.Accepted:
        """Run the finished query again: QUEUED."""
        return await self._run(self._flows.refresh(query_id))

    async def history(self, query_id: str) -> api.History:
        """Every move of the query, every run, oldest first."""
        return await self._run(self._flows.history(query_id))

    async def usage(self, **filters: Unpack[api.UsageFilters]) -> api.Usage:
        """Counts, bytes scanned and cost of the caller's queries (Client.usage)."""
        return await self._run(self._flows.usage(filters))

    def list(self, **filters: Unpack[api.ListFilters]) -> AsyncIterator[api.Status]:
        """The caller's queries, newest first, page by page as iterated (Client.list)."""
        return self._each(self._flows.listing(filters))

    async def _each(self, pager: Pager[T]) -> AsyncIterator[T]:
        while (page := pager.next_page()) is not None:
            for item in await self._run(page):
                yield item

    async def _run(self, flow: Flow[T]) -> T:
        """Carry out `flow`'s steps until it returns."""
        answer = None
        try:
            while True:
                answer = await self._carry_out(flow.send(answer))
        except StopIteration as done:
            return cast(T, done.value)

    async def _carry_out(self, step: Step) -> httpx.Response | None:
        if isinstance(step, Pause):
            await asyncio.sleep(step.seconds)
            return None
        try:
            response = await self._http.send(step.request(self._http), stream=True)
            try:
                if (sink := step.sink_for(response)) is None:
                    await response.aread()
                else:
                    with sink.receiving() as write:
                        async for chunk in response.aiter_bytes():
                            write(chunk)
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            raise unreachable(self.settings.url, exc) from None
        return response

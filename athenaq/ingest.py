"""The ingest: a SUCCEEDED execution's results, read from Athena and written as result
files. It writes no state: the machine decides what the outcome means for the query.

The first GetQueryResults page comes first, for the column types the CSV object lacks. A
result it holds whole (most results of a few rows) is stored from it alone: one Athena
call, no S3 request. For any other, the S3 result object is the fast way: it already is
the stored form, so its bytes are copied. When it cannot be used, even after some of it
was written (an object cut off shows only at its end), the write starts over from
GetQueryResults. A result directory is renamed into place only once complete, so the
result served never mixes the two sources.
"""

from __future__ import annotations

import contextlib
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from loguru import logger

from athenaq import metrics
from athenaq.athena import Athena, Execution, FirstPage, ResultObjectUnreadable
from athenaq.results import MalformedResult, ResultFiles, Written


@dataclass(frozen=True)
class Stored:
    """A result as stored: its row count, where it was read from ("s3" or "api"), and how
    long its store took (seconds)."""

    row_count: int
    source: str
    seconds: float


class Ingest:
    """Reads results from Athena (S3 or GetQueryResults) into the results folder."""

    def __init__(self, athena: Athena, results: ResultFiles, first_page_rows: int = 100) -> None:
        self.athena = athena
        self.results = results
        # The rows of the first page asked for (header row included); 0: always from S3,
        # the first page then being one row, for the column types only.
        self.first_page_rows = first_page_rows

    async def store(
        self,
        query_id: str,
        execution: Execution,
        large: AbstractAsyncContextManager[object] | None = None,
    ) -> Stored:
        """Write the execution's result files. Raises AthenaCallError when Athena cannot
        give the results, OSError when they cannot be written. (The caller logs what was
        stored, with the query's move.)

        `large` is entered around the reading of a result its first page does not hold
        (the caller's bound on large downloads): a result stored from its first page never
        waits for it."""
        execution_id = execution.execution_id
        started = time.monotonic()
        first = await self.athena.first_page(execution_id, self.first_page_rows or 1)
        if first.whole and self.first_page_rows:
            written = await self.results.write_page(query_id, execution_id, first.page)
            read_from = metrics.FIRST_PAGE
            working = time.monotonic() - started
        else:
            working = time.monotonic() - started
            async with large or contextlib.nullcontext():
                # The wait for a download slot is no time spent storing.
                resumed = time.monotonic()
                written, read_from = await self._store_large(query_id, execution, first)
                working += time.monotonic() - resumed
        metrics.INGEST_BYTES.labels(read_from).inc(written.size)
        metrics.INGEST_SECONDS.labels(read_from).observe(working)
        source = "s3" if read_from == metrics.S3 else "api"
        return Stored(written.rows, source, time.monotonic() - started)

    async def _store_large(
        self, query_id: str, execution: Execution, first: FirstPage
    ) -> tuple[Written, str]:
        """Store a result its first page does not hold; where it was read from (the
        metrics' source: S3, or GetQueryResults)."""
        execution_id = execution.execution_id
        try:
            return await self._copy_object(query_id, execution, first), metrics.S3
        except ResultObjectUnreadable as exc:
            logger.warning(
                "result object unreadable; reading the results through GetQueryResults",
                query_id=query_id,
                athena_query_execution_id=execution_id,
                location=exc.location,
                error_code=exc.code,
                error=exc.message,
            )
            written = await self.results.write(
                query_id, execution_id, self.athena.result_pages(execution_id)
            )
            return written, metrics.GET_QUERY_RESULTS

    async def _copy_object(self, query_id: str, execution: Execution, first: FirstPage) -> Written:
        """Store the result object's bytes; ResultObjectUnreadable if they cannot be used."""
        chunks = self.athena.object_chunks(execution)
        try:
            return await self.results.copy_csv(
                query_id, execution.execution_id, first.columns, first.labels, chunks
            )
        except MalformedResult as exc:
            location = execution.output_location or ""
            raise ResultObjectUnreadable(location, "MalformedObject", str(exc)) from exc

"""The ingest: a SUCCEEDED execution's results, read from Athena and written as result
files. It writes no state: the machine decides what the outcome means for the query.

The S3 result object is the fast way: it already is the stored form, so its bytes are
copied. When it cannot be used, even after some of it was written (an object cut off
shows only at its end), the write starts over from GetQueryResults. A result directory is
renamed into place only once complete, so the result served never mixes the two sources.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from loguru import logger

from athenaq.athena import Athena, Execution, ResultObjectUnreadable
from athenaq.results import MalformedResult, ResultFiles


@dataclass(frozen=True)
class Stored:
    """A result as stored: its row count and where it was read from ("s3" or "api")."""

    row_count: int
    source: str


class Ingest:
    """Reads results from Athena (S3 or GetQueryResults) into the results folder."""

    def __init__(self, athena: Athena, results: ResultFiles) -> None:
        self.athena = athena
        self.results = results

    async def store(self, query_id: str, execution: Execution) -> Stored:
        """Write the execution's result files. Raises AthenaCallError when Athena cannot
        give the results, OSError when they cannot be written."""
        execution_id = execution.execution_id
        started = time.monotonic()
        try:
            rows = await self._copy_object(query_id, execution)
            source = "s3"
        except ResultObjectUnreadable as exc:
            logger.warning(
                "result object unreadable; reading the results through GetQueryResults",
                query_id=query_id,
                athena_query_execution_id=execution_id,
                location=exc.location,
                error_code=exc.code,
                error=exc.message,
            )
            rows = await self.results.write(
                query_id, execution_id, self.athena.result_pages(execution_id)
            )
            source = "api"
        logger.info(
            "results stored",
            query_id=query_id,
            athena_query_execution_id=execution_id,
            row_count=rows,
            results_source=source,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return Stored(rows, source)

    async def _copy_object(self, query_id: str, execution: Execution) -> int:
        """Store the result object's bytes; ResultObjectUnreadable if they cannot be used."""
        columns, labels = await self.athena.result_columns(execution.execution_id)
        chunks = self.athena.object_chunks(execution)
        try:
            return await self.results.copy_csv(
                query_id, execution.execution_id, columns, labels, chunks
            )
        except MalformedResult as exc:
            location = execution.output_location or ""
            raise ResultObjectUnreadable(location, "MalformedObject", str(exc)) from exc

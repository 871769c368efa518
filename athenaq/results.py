"""Result files under the results folder: every path the service touches there.

A result file is JSON lines: the first line `{"columns": [...]}`, then one JSON
array per row. It is named after the query and the Athena execution that made
it, written under a temporary name and renamed, so a reader sees a whole file
or none, and a refreshed query never finds its old file under the new name.
All file I/O runs on worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from loguru import logger

from athenaq.athena import Column, ResultPage

TEMP_PREFIX = ".partial-"


@dataclass(frozen=True)
class StoredResult:
    columns: list[Column]
    rows: list[list[str | None]]


class ResultFiles:
    """The results folder; one file per query execution."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).resolve()

    def prepare(self) -> None:
        """Create the folder and remove temporary files a crash left behind."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob(TEMP_PREFIX + "*"):
            leftover.unlink(missing_ok=True)

    def path(self, query_id: str, execution_id: str) -> Path:
        return self.directory / f"{query_id}.{execution_id}.jsonl"

    async def write(
        self, query_id: str, execution_id: str, pages: AsyncIterator[ResultPage]
    ) -> int:
        """Write every page to the execution's file; returns the row count.

        The file appears under its final name only once complete."""
        fd, temp_name = await asyncio.to_thread(
            tempfile.mkstemp, prefix=TEMP_PREFIX, dir=self.directory
        )
        rows = 0
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                async for page in pages:
                    if page.columns is not None:
                        header = {
                            "columns": [{"name": c.name, "type": c.type} for c in page.columns]
                        }
                        await asyncio.to_thread(_write_lines, out, [header])
                    await asyncio.to_thread(_write_lines, out, page.rows)
                    rows += len(page.rows)
                await asyncio.to_thread(_flush, out)
            await asyncio.to_thread(os.replace, temp_name, self.path(query_id, execution_id))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise
        return rows

    async def read(self, query_id: str, execution_id: str) -> StoredResult:
        """The whole result; FileNotFoundError when it is gone (refreshed meanwhile)."""
        return await asyncio.to_thread(_read, self.path(query_id, execution_id))

    async def delete(self, query_id: str, execution_id: str | None) -> None:
        if execution_id:
            logger.debug(
                "deleting results", query_id=query_id, athena_query_execution_id=execution_id
            )
            await asyncio.to_thread(self.path(query_id, execution_id).unlink, missing_ok=True)


def _write_lines(out: IO[str], items: list[Any]) -> None:
    for item in items:
        out.write(json.dumps(item, ensure_ascii=False, separators=(",", ":")))
        out.write("\n")


def _flush(out: IO[str]) -> None:
    out.flush()
    os.fsync(out.fileno())


def _read(path: Path) -> StoredResult:
    with path.open(encoding="utf-8") as source:
        header = json.loads(next(source))
        rows = [json.loads(line) for line in source]
    columns = [Column(name=c["name"], type=c["type"]) for c in header["columns"]]
    return StoredResult(columns=columns, rows=rows)

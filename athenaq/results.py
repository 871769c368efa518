"""Result files under the results folder: every path the service touches there.

Each Athena execution of a query has one directory, `<query id>.<execution id>/`,
holding three files:

- `columns.json`: `{"columns": [{"name", "type"}, ...]}`;
- `rows.csv`: the result in Athena's own CSV form (see athenaq/csvformat.py): a header
  row of the column names, then one line per row, every value quoted, NULL an empty
  unquoted field;
- `rows.idx`: little-endian uint64 byte offsets into `rows.csv`, row i's at byte 8*i,
  followed by one more offset, the end of the last row (the size of `rows.csv`). So it
  holds row_count + 1 entries, and its first entry is also the length of the header row.

A page of rows [a, b) is one read of the index (entries a..b) and one read of the
bytes between them, whatever a is; a CSV download is a byte copy of `rows.csv`, the
download most clients want and the largest (JSON lines are converted on the way).
Athena's result object is already `rows.csv`: it is copied as it comes, and only its
row ends are looked for (RowScanner), since they are the index. The
directory is written under a temporary name and renamed in one
step, so a reader sees a whole result or none, a crash leaves only a temporary
directory (which `prepare` removes), and a refreshed query never finds its old
result under the new name. All file I/O but the opening and the closing of a
result's files (see _Files) runs on worker threads, in batches; a result small enough to
come in one page is written in one trip to a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import uuid
import zlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from loguru import logger

from athenaq.csvformat import CsvParser, Row, RowScanner, format_row
from athenaq.resultset import Column, ResultPage

TEMP_PREFIX = ".partial-"
COLUMNS_FILE = "columns.json"
DATA_FILE = "rows.csv"
INDEX_FILE = "rows.idx"
OFFSET_BYTES = 8
# How much a download reads (and converts, and compresses) per trip to a worker thread.
CHUNK_BYTES = 256 * 1024
# A header row longer than this is no header row: Athena caps names far below it.
MAX_HEADER_BYTES = 4 * 1024 * 1024
# Rows and index entries are buffered up to this size before one write on a thread.
WRITE_BATCH_BYTES = 1024 * 1024

DownloadFormat = Literal["csv", "jsonl"]
T = TypeVar("T")
R = TypeVar("R")
T_contra = TypeVar("T_contra", contravariant=True)


@dataclass(frozen=True)
class Written:
    """A result as written: its row count, and the size of its `rows.csv` (header row
    included) in bytes."""

    rows: int
    size: int


class ResultFiles:
    """The results folder; one directory per query execution."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).resolve()

    def prepare(self) -> None:
        """Create the folder and remove what a crash mid-write left behind."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob(TEMP_PREFIX + "*"):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)

    def check_writable(self) -> None:
        """Create, sync and remove a small file in the folder; OSError when it cannot. The
        file has the temporary prefix, so one a crash left behind is removed at start."""
        probe = self.directory / f"{TEMP_PREFIX}probe-{uuid.uuid4().hex}"
        try:
            with probe.open("xb") as file:
                file.write(b"ready")
                os.fsync(file.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                probe.unlink()
            raise
        probe.unlink()

    def path(self, query_id: str, execution_id: str) -> Path:
        """The execution's result directory."""
        return self.directory / f"{query_id}.{execution_id}"

    async def write(
        self, query_id: str, execution_id: str, pages: AsyncGenerator[ResultPage, None]
    ) -> Written:
        """Write every page of rows (GetQueryResults') to the execution's result."""
        return await self._write(query_id, execution_id, _RowWriter, pages)

    async def write_page(self, query_id: str, execution_id: str, page: ResultPage) -> Written:
        """Write a result given whole in one page (a first GetQueryResults page that is
        also the last): the same files as `write` makes of it, written, synced and renamed
        into place in one trip to a worker thread."""
        return await _to_thread_whole(self._write_page, self.path(query_id, execution_id), page)

    def _write_page(self, final: Path, page: ResultPage) -> Written:
        temp = self.directory / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        try:
            temp.mkdir()
            writer = _RowWriter(temp)
            try:
                writer._open(page.columns or [])
                writer._add(page)
                rows = writer._finish()
            finally:
                if writer.files is not None:
                    writer.files.close()
            _publish(temp, final)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        return Written(rows, writer.size)

    async def copy_csv(
        self,
        query_id: str,
        execution_id: str,
        columns: list[Column],
        labels: list[str],
        chunks: AsyncGenerator[bytes, None],
    ) -> Written:
        """Store a result object, Athena's CSV, as it is: its bytes become `rows.csv`
        and only the row ends are looked for, to make the index. Its header row must
        name the `columns` (or give their `labels`). Raises MalformedResult when the
        bytes are not a whole result in Athena's form."""

        def open_writer(directory: Path) -> _CsvCopier:
            return _CsvCopier(directory, columns, labels)

        return await self._write(query_id, execution_id, open_writer, chunks)

    async def _write(
        self,
        query_id: str,
        execution_id: str,
        open_writer: Callable[[Path], _Writer[T]],
        items: AsyncGenerator[T, None],
    ) -> Written:
        """Feed every item to a writer in a temporary directory, renamed to the
        execution's result once complete. When another process stored the same
        execution first, its result is kept."""
        temp = self.directory / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        try:
            await _to_thread_whole(temp.mkdir)
            writer = open_writer(temp)
            try:
                async with contextlib.aclosing(items):
                    async for item in items:
                        await writer.add(item)
                rows = await writer.finish()
            finally:
                await writer.close()
            await _to_thread_whole(_publish, temp, self.path(query_id, execution_id))
        except BaseException:
            await _to_thread_whole(shutil.rmtree, temp, True)
            raise
        return Written(rows, writer.size)

    async def open(self, query_id: str, execution_id: str) -> ResultReader:
        """The execution's result, opened; FileNotFoundError when it is gone (refreshed
        meanwhile). Once open it stays readable to the end even if deleted."""
        return await _to_thread_whole(
            ResultReader,
            self.path(query_id, execution_id),
            undo=ResultReader.close,
        )

    async def delete(self, query_id: str, execution_id: str | None) -> None:
        if execution_id:
            logger.debug(
                "deleting results", query_id=query_id, athena_query_execution_id=execution_id
            )
            await asyncio.to_thread(_remove, self.path(query_id, execution_id))


async def _to_thread_whole(
    func: Callable[..., R], /, *args: Any, undo: Callable[[R], object] | None = None
) -> R:
    """`func(*args)` on a worker thread, as asyncio.to_thread, but see `_whole`."""
    return await _whole(asyncio.ensure_future(asyncio.to_thread(func, *args)), undo)


async def _whole(work: asyncio.Future[R], undo: Callable[[R], object] | None = None) -> R:
    """The result of `work`; when the caller is cancelled, it waits for `work` to end
    first, however many cancels follow, then `undo`es what it made (on the event loop,
    so no cancel can cut it short). A worker thread cannot be stopped: a file it opened
    after its caller gave up would stay open, since nobody would close it. And a job
    cancelled before a worker thread took it never runs at all."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        while not work.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([work])  # a cancel of this wait leaves `work` running
        if undo is not None and not work.cancelled() and work.exception() is None:
            undo(work.result())
        raise


class MalformedResult(ValueError):
    """A result object's bytes are not a whole result in Athena's CSV form."""


class _Writer(Protocol[T_contra]):
    """Writes one result's files in a directory. It opens and closes them on the event
    loop (see _Files); its methods put the rest of the file I/O on worker threads."""

    @property
    def size(self) -> int:
        """The bytes of `rows.csv` so far."""
        ...

    async def add(self, item: T_contra) -> None: ...

    async def finish(self) -> int:
        """Complete and sync the files; returns the row count."""
        ...

    async def close(self) -> None: ...


class _Files:
    """The three files of a result being written.

    They are opened and closed on the event loop (an open and a small write, a close:
    microseconds, no sync), so that the coroutine that closes them owns them from the
    first instant to the last, with no worker thread between the open and the `finally`
    that closes them: a close sent to a worker thread is dropped when a cancel (a
    stopping service) reaches its caller before a thread takes it."""

    def __init__(self, directory: Path, columns: list[Column]) -> None:
        header = {"columns": [{"name": c.name, "type": c.type} for c in columns]}
        self.columns_path = directory / COLUMNS_FILE
        self.columns_path.write_bytes(json.dumps(header, ensure_ascii=False).encode())
        self.data = (directory / DATA_FILE).open("wb")
        try:
            self.index = (directory / INDEX_FILE).open("wb")
        except BaseException:
            self.data.close()
            raise

    def sync(self) -> None:
        """Make the three files durable (on a worker thread)."""
        for out in (self.data, self.index):
            out.flush()
            os.fsync(out.fileno())
        fd = os.open(self.columns_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        try:
            self.data.close()
        finally:
            self.index.close()


class _RowWriter:
    """Writes rows given as values (GetQueryResults pages) in Athena's CSV form."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files: _Files | None = None
        self.offset = 0
        self.rows = 0
        self._data_buffer: list[bytes] = []
        self._index_buffer = bytearray()
        self._buffered = 0

    @property
    def size(self) -> int:
        return self.offset

    async def add(self, page: ResultPage) -> None:
        self._open(page.columns or [])
        await _to_thread_whole(self._add, page)

    async def finish(self) -> int:
        self._open([])
        return await _to_thread_whole(self._finish)

    async def close(self) -> None:
        if self.files is not None:
            self.files.close()

    def _open(self, columns: list[Column]) -> None:
        """Open the files at the first page, which names the columns (none without one)."""
        if self.files is None:
            self.files = _Files(self.directory, columns)
            self._line([c.name for c in columns])

    def _add(self, page: ResultPage) -> None:
        for row in page.rows:
            self._index_buffer += self.offset.to_bytes(OFFSET_BYTES, "little")
            self._line(row)
            self.rows += 1
        if self._buffered >= WRITE_BATCH_BYTES:
            self._flush()

    def _finish(self) -> int:
        self._index_buffer += self.offset.to_bytes(OFFSET_BYTES, "little")
        self._flush()
        assert self.files is not None
        self.files.sync()
        return self.rows

    def _line(self, values: Row) -> None:
        line = format_row(values).encode()
        self._data_buffer.append(line)
        self.offset += len(line)
        self._buffered += len(line)

    def _flush(self) -> None:
        assert self.files is not None
        self.files.data.write(b"".join(self._data_buffer))
        self.files.index.write(self._index_buffer)
        self._data_buffer.clear()
        self._index_buffer.clear()
        self._buffered = 0


class _CsvCopier:
    """Copies a result object's bytes to `rows.csv` and writes their row ends to the
    index: the object's header row is the file's, each row end is where the next row
    starts, and the last one is the end of the file, which is the whole index.

    The row ends of a chunk are found on the event loop: numpy takes ~1 ms per MiB, and
    on a worker thread it waited for the GIL, held by the loop reading the next chunk,
    which measured slower. The chunk's write, which can block on the disk, goes to a
    worker thread and runs while the next chunk is read and scanned."""

    def __init__(self, directory: Path, columns: list[Column], labels: list[str]) -> None:
        self.expected_headers = ([c.name for c in columns], labels)
        self.files = _Files(directory, columns)
        self.scanner = RowScanner()
        self.header = bytearray()  # the object's first bytes until its header row is whole
        self.row_ends = 0
        self.size = 0
        self._writing: asyncio.Task[None] | None = None

    async def add(self, chunk: bytes) -> None:
        try:
            ends = self.scanner.feed(chunk)
        except ValueError as exc:
            raise MalformedResult(str(exc)) from exc
        if not self.row_ends:
            self._check_header(chunk, ends)
        self.row_ends += len(ends)
        self.size += len(chunk)
        await self._written()
        self._writing = asyncio.create_task(asyncio.to_thread(self._write, chunk, ends))

    async def finish(self) -> int:
        await self._written()
        try:
            self.scanner.close()
        except ValueError as exc:
            raise MalformedResult(str(exc)) from exc
        if not self.row_ends:
            # Even a 0-row SELECT has a header row; only DDL writes nothing (and no CSV).
            raise MalformedResult("no header row")
        await _to_thread_whole(self.files.sync)
        return self.row_ends - 1

    async def close(self) -> None:
        try:
            with contextlib.suppress(Exception):  # the error that stopped the write is raised
                await self._written()
        finally:
            self.files.close()

    async def _written(self) -> None:
        """Wait for the write of the previous chunk (to its end, even when cancelled)."""
        if self._writing is not None:
            await _whole(self._writing)
            self._writing = None

    def _write(self, chunk: bytes, ends: npt.NDArray[np.uint64]) -> None:
        self.files.data.write(chunk)
        self.files.index.write(ends.astype("<u8", copy=False).tobytes())

    def _check_header(self, chunk: bytes, ends: npt.NDArray[np.uint64]) -> None:
        if not len(ends):
            self.header += chunk
            if len(self.header) > MAX_HEADER_BYTES:
                raise MalformedResult(f"no header row in the first {MAX_HEADER_BYTES} bytes")
            return
        self.header += chunk[: int(ends[0]) - len(self.header)]
        try:
            (header,) = CsvParser().feed(bytes(self.header))
        except ValueError as exc:
            raise MalformedResult(f"the header row: {exc}") from exc
        if header not in self.expected_headers:
            raise MalformedResult(
                f"the header {header} does not name the columns {self.expected_headers[1]}"
            )


def _publish(temp: Path, final: Path) -> None:
    try:
        os.rename(temp, final)
    except OSError as exc:
        # A directory cannot replace a non-empty one: another process stored this
        # execution first, and its result is the same.
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        shutil.rmtree(temp, ignore_errors=True)
    # Make the rename itself durable.
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    # Renamed away first, so a reader never opens a half-deleted result.
    doomed = path.with_name(f"{TEMP_PREFIX}deleted-{uuid.uuid4().hex}")
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


@dataclass(frozen=True)
class Page:
    """Rows [offset, offset + len(rows)) of a result of `row_count` rows."""

    offset: int
    rows: list[Row]
    row_count: int


class ResultReader:
    """One stored result, opened. Both files are open from the start, so a refresh
    that deletes them meanwhile does not cut a download short. Close it when done."""

    def __init__(self, directory: Path) -> None:
        self.data: IO[bytes] = (directory / DATA_FILE).open("rb")
        try:
            self.index: IO[bytes] = (directory / INDEX_FILE).open("rb")
            header = json.loads((directory / COLUMNS_FILE).read_bytes())
            entries = os.fstat(self.index.fileno()).st_size // OFFSET_BYTES
            self.row_count = entries - 1
            self.rows_start = self._offset(0)
        except BaseException:
            self.close()
            raise
        self.columns = [Column(name=c["name"], type=c["type"]) for c in header["columns"]]

    def close(self) -> None:
        with contextlib.suppress(AttributeError):
            self.index.close()
        self.data.close()

    async def page(self, offset: int, limit: int) -> Page:
        """At most `limit` rows from `offset`; none past the end."""
        return await asyncio.to_thread(self._page, offset, limit)

    async def download(self, fmt: DownloadFormat, *, gzip: bool) -> AsyncGenerator[bytes, None]:
        """The whole result as CSV (header row, then rows in Athena's CSV form: the
        stored bytes) or JSON lines (the line `{"columns": [...]}`, then one array per
        row), in chunks of about CHUNK_BYTES, gzipped on the fly if asked."""
        chunks = _Chunks(self, fmt, gzip)
        while True:
            chunk = await asyncio.to_thread(chunks.next)
            if chunk is None:
                return
            if chunk:
                yield chunk

    def checked(self, rows: list[Row]) -> list[Row]:
        """`rows`, once each is seen to hold a value per column: the ingest checked the
        object's rows end where the index says, not what is in them."""
        width = len(self.columns)
        for row in rows:
            if len(row) != width:
                raise MalformedResult(f"a stored row of {len(row)} values, not {width}")
        return rows

    def _offset(self, row: int) -> int:
        self.index.seek(row * OFFSET_BYTES)
        return int.from_bytes(self.index.read(OFFSET_BYTES), "little")

    def _page(self, offset: int, limit: int) -> Page:
        first = min(offset, self.row_count)
        last = min(offset + limit, self.row_count)
        if first == last:
            return Page(offset=offset, rows=[], row_count=self.row_count)
        self.index.seek(first * OFFSET_BYTES)
        raw = self.index.read((last - first + 1) * OFFSET_BYTES)
        start = int.from_bytes(raw[:OFFSET_BYTES], "little")
        end = int.from_bytes(raw[-OFFSET_BYTES:], "little")
        self.data.seek(start)
        parser = CsvParser()
        rows = self.checked(parser.feed(self.data.read(end - start)))
        parser.close()
        return Page(offset=offset, rows=rows, row_count=self.row_count)


class _Chunks:
    """The download's chunks, one per call of `next` (on a worker thread); None at the end."""

    def __init__(self, reader: ResultReader, fmt: DownloadFormat, gzip: bool) -> None:
        self.reader = reader
        self.fmt = fmt
        self.position = 0 if fmt == "csv" else reader.rows_start
        self.end = reader._offset(reader.row_count)
        self.compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS) if gzip else None
        self.parser = CsvParser()
        self.started = False
        self.done = False

    def next(self) -> bytes | None:
        if self.done:
            return None
        out = b""
        if not self.started and self.fmt == "jsonl":
            columns = [{"name": c.name, "type": c.type} for c in self.reader.columns]
            out = _json_line({"columns": columns})
        self.started = True
        if self.position < self.end:
            self.reader.data.seek(self.position)
            raw = self.reader.data.read(min(CHUNK_BYTES, self.end - self.position))
            if not raw:
                raise OSError("result file shorter than its index")
            self.position += len(raw)
            out += self._convert(raw)
        else:
            self.done = True
            if self.fmt == "jsonl":
                self.parser.close()  # raises if the file ends inside a row
        if self.compressor is not None:
            out = self.compressor.compress(out)
            if self.done:
                out += self.compressor.flush()
        return out

    def _convert(self, raw: bytes) -> bytes:
        if self.fmt == "csv":
            return raw
        return b"".join(_json_line(row) for row in self.reader.checked(self.parser.feed(raw)))


def _json_line(item: Any) -> bytes:
    return json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"

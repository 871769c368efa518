"""ResultFiles: the on-disk form of a result, paged reads and downloads."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from athenaq.csvformat import format_row
from athenaq.results import INDEX_FILE, TEMP_PREFIX, MalformedResult, ResultFiles, Written
from athenaq.resultset import Column, ResultPage

COLUMNS = [Column(name="n", type="integer"), Column(name="s", type="varchar")]


def make_rows(count: int) -> list[list[str | None]]:
    return [
        [str(i), None if i % 3 == 0 else ("" if i % 3 == 1 else f'x "{i}",\né')]
        for i in range(count)
    ]


async def pages_of(
    rows: list[list[str | None]],
    size: int = 7,
    fail_after: int | None = None,
    never_ends: bool = False,
) -> AsyncGenerator[ResultPage, None]:
    if not rows:
        yield ResultPage(columns=COLUMNS, rows=[])
        return
    for start in range(0, len(rows), size):
        if fail_after is not None and start >= fail_after:
            raise OSError("connection reset in the middle of the download")
        yield ResultPage(columns=COLUMNS if start == 0 else None, rows=rows[start : start + size])
    if never_ends:
        await asyncio.Event().wait()


def athena_csv(rows: list[list[str | None]], header: list[str | None] | None = None) -> bytes:
    """A result object's bytes, as Athena writes them."""
    names: list[str | None] = ["n", "s"] if header is None else header
    return "".join(format_row(row) for row in [names, *rows]).encode()


async def chunks_of(data: bytes, size: int) -> AsyncGenerator[bytes, None]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.fixture
def files(tmp_path: Path) -> ResultFiles:
    results = ResultFiles(tmp_path / "results")
    results.prepare()
    return results


async def test_round_trip_and_pages_at_start_middle_end(files: ResultFiles) -> None:
    rows = make_rows(100)
    assert (await files.write("q", "e", pages_of(rows))).rows == 100
    reader = await files.open("q", "e")
    try:
        assert reader.columns == COLUMNS
        assert reader.row_count == 100
        whole = await reader.page(0, 1000)
        assert whole.rows == rows and whole.row_count == 100
        assert (await reader.page(0, 10)).rows == rows[:10]
        assert (await reader.page(45, 10)).rows == rows[45:55]
        assert (await reader.page(95, 10)).rows == rows[95:]
        assert (await reader.page(99, 1)).rows == rows[99:]
        past = await reader.page(100, 10)
        assert past.rows == [] and past.row_count == 100 and past.offset == 100
        assert (await reader.page(10**12, 10)).rows == []
    finally:
        reader.close()


async def test_files_are_columns_athenas_csv_and_an_offset_index(files: ResultFiles) -> None:
    rows = make_rows(5)  # row 2 has a newline inside a value
    written = await files.write("q", "e", pages_of(rows))
    directory = files.path("q", "e")
    assert sorted(p.name for p in directory.iterdir()) == ["columns.json", "rows.csv", "rows.idx"]
    assert json.loads((directory / "columns.json").read_bytes()) == {
        "columns": [{"name": "n", "type": "integer"}, {"name": "s", "type": "varchar"}]
    }
    lines = [format_row(["n", "s"]).encode()] + [format_row(row).encode() for row in rows]
    data = (directory / "rows.csv").read_bytes()
    assert data == b"".join(lines)
    assert written == Written(rows=5, size=len(data))
    index = (directory / INDEX_FILE).read_bytes()
    assert len(index) == 8 * 6
    offsets = [int.from_bytes(index[i : i + 8], "little") for i in range(0, len(index), 8)]
    assert offsets == [sum(len(line) for line in lines[: i + 1]) for i in range(6)]
    assert offsets[-1] == len(data)


async def test_zero_rows_is_a_header_only(files: ResultFiles) -> None:
    assert (await files.write("q", "e", pages_of([]))).rows == 0
    reader = await files.open("q", "e")
    try:
        assert reader.row_count == 0
        assert reader.columns == COLUMNS
        assert (await reader.page(0, 10)).rows == []
        csv = b"".join([chunk async for chunk in reader.download("csv", gzip=False)])
        assert csv == b'"n","s"\n'
        jsonl = b"".join([chunk async for chunk in reader.download("jsonl", gzip=False)])
        assert jsonl.splitlines() == [
            b'{"columns":[{"name":"n","type":"integer"},{"name":"s","type":"varchar"}]}'
        ]
    finally:
        reader.close()


async def test_downloads_in_both_formats_and_gzipped(files: ResultFiles) -> None:
    rows = make_rows(80_000)  # several read chunks, rows split across them
    await files.write("q", "e", pages_of(rows, size=1000))
    reader = await files.open("q", "e")
    try:
        chunks = [chunk async for chunk in reader.download("csv", gzip=False)]
        assert len(chunks) > 3
        expected = ['"n","s"\n'] + [
            ",".join("" if v is None else '"' + v.replace('"', '""') + '"' for v in row) + "\n"
            for row in rows
        ]
        assert b"".join(chunks) == "".join(expected).encode()
        zipped = b"".join([chunk async for chunk in reader.download("csv", gzip=True)])
        assert gzip.decompress(zipped) == "".join(expected).encode()
        jsonl = b"".join([chunk async for chunk in reader.download("jsonl", gzip=False)])
        assert b"".join(chunks) == (files.path("q", "e") / "rows.csv").read_bytes()
        assert [json.loads(line) for line in jsonl.splitlines()[1:]] == rows
    finally:
        reader.close()


async def test_an_open_result_survives_its_deletion(files: ResultFiles) -> None:
    rows = make_rows(50)
    await files.write("q", "e", pages_of(rows))
    reader = await files.open("q", "e")
    try:
        await files.delete("q", "e")
        assert not files.path("q", "e").exists()
        assert (await reader.page(40, 20)).rows == rows[40:]
    finally:
        reader.close()
    with pytest.raises(FileNotFoundError):
        await files.open("q", "e")


async def test_a_crash_mid_write_leaves_nothing_servable(files: ResultFiles) -> None:
    with pytest.raises(OSError, match="connection reset"):
        await files.write("q", "e", pages_of(make_rows(100), fail_after=50))
    assert not files.path("q", "e").exists()
    with pytest.raises(FileNotFoundError):
        await files.open("q", "e")
    assert list(files.directory.iterdir()) == []
    files.prepare()
    assert list(files.directory.iterdir()) == []


async def test_prepare_removes_what_a_killed_process_left(files: ResultFiles) -> None:
    # A process killed mid-write never reaches its cleanup: simulate what it leaves.
    partial = files.directory / (TEMP_PREFIX + "abc")
    partial.mkdir()
    (partial / "rows.csv").write_bytes(b'"n"\n"1"\n')
    (files.directory / (TEMP_PREFIX + "old-file")).write_bytes(b"x")
    await files.write("q", "e", pages_of(make_rows(3)))
    files.prepare()
    assert sorted(p.name for p in files.directory.iterdir()) == ["q.e"]
    reader = await files.open("q", "e")
    reader.close()


async def test_a_second_writer_of_the_same_execution_keeps_the_first(files: ResultFiles) -> None:
    rows = make_rows(10)
    assert (await files.write("q", "e", pages_of(rows))).rows == 10
    assert (await files.write("q", "e", pages_of(rows))).rows == 10
    assert sorted(p.name for p in files.directory.iterdir()) == ["q.e"]
    reader = await files.open("q", "e")
    try:
        assert (await reader.page(0, 100)).rows == rows
    finally:
        reader.close()


@pytest.mark.parametrize("size", [1, 5, 64, 1 << 20])
async def test_a_copied_object_is_stored_as_it_is_with_its_row_index(
    files: ResultFiles, size: int
) -> None:
    rows = make_rows(300)  # newlines, quotes and commas inside values, NULL and ""
    data = athena_csv(rows)
    copied = await files.copy_csv("q", "e", COLUMNS, ["n", "s"], chunks_of(data, size))
    assert copied == Written(rows=300, size=len(data))
    directory = files.path("q", "e")
    assert (directory / "rows.csv").read_bytes() == data
    # The same index as rows written one by one.
    await files.write("q", "written", pages_of(rows))
    written = files.path("q", "written")
    assert (directory / INDEX_FILE).read_bytes() == (written / INDEX_FILE).read_bytes()
    assert (directory / "columns.json").read_bytes() == (written / "columns.json").read_bytes()
    reader = await files.open("q", "e")
    try:
        assert reader.row_count == 300
        assert (await reader.page(0, 1000)).rows == rows
        assert (await reader.page(297, 10)).rows == rows[297:]
    finally:
        reader.close()


async def test_a_copied_object_of_zero_rows(files: ResultFiles) -> None:
    data = athena_csv([])
    assert (await files.copy_csv("q", "e", COLUMNS, ["n", "s"], chunks_of(data, 3))).rows == 0
    reader = await files.open("q", "e")
    try:
        assert reader.row_count == 0 and (await reader.page(0, 10)).rows == []
    finally:
        reader.close()


@pytest.mark.parametrize(
    "data",
    [
        athena_csv(make_rows(10))[:-2],  # cut inside the last row
        athena_csv(make_rows(10))[:-1],  # no newline at the end
        b"",  # no header row
        athena_csv(make_rows(10), header=["n", "other"]),  # not these columns
        athena_csv(make_rows(10), header=["n"]),
        athena_csv(make_rows(3)) + b'"\xff"\n',  # not UTF-8
    ],
)
async def test_an_unusable_object_raises_and_leaves_nothing(
    files: ResultFiles, data: bytes
) -> None:
    with pytest.raises(MalformedResult):
        await files.copy_csv("q", "e", COLUMNS, ["n", "s"], chunks_of(data, 7))
    assert list(files.directory.iterdir()) == []


async def test_the_header_may_give_the_labels(files: ResultFiles) -> None:
    data = athena_csv(make_rows(2), header=["Number", "Text"])
    copied = await files.copy_csv("q", "e", COLUMNS, ["Number", "Text"], chunks_of(data, 4))
    assert copied.rows == 2


async def test_a_stored_row_of_the_wrong_width_is_refused_when_read(files: ResultFiles) -> None:
    # Whole and balanced, so stored; what is inside each row is checked when it is read.
    data = athena_csv([["1", "a"], ["2"], ["3", "c"]])
    assert (await files.copy_csv("q", "e", COLUMNS, ["n", "s"], chunks_of(data, 5))).rows == 3
    reader = await files.open("q", "e")
    try:
        assert (await reader.page(0, 1)).rows == [["1", "a"]]
        assert (await reader.page(2, 1)).rows == [["3", "c"]]
        with pytest.raises(MalformedResult, match="1 values, not 2"):
            await reader.page(0, 3)
        with pytest.raises(MalformedResult):
            [chunk async for chunk in reader.download("jsonl", gzip=False)]
        csv = b"".join([chunk async for chunk in reader.download("csv", gzip=False)])
        assert csv == data  # the bytes as stored, for the client to judge
    finally:
        reader.close()


def open_files_under(directory: Path) -> list[str]:
    """The files this process holds open below `directory`."""
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own fd is gone by now
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
    return [p for p in paths if p.startswith(str(directory))]


async def endless_chunks(data: bytes) -> AsyncGenerator[bytes, None]:
    """The object's first bytes, then nothing more: a read that never ends."""
    yield data
    await asyncio.Event().wait()


@pytest.mark.parametrize("writer", ["copy", "rows"])
async def test_a_cancelled_write_leaves_no_file_open_and_nothing_behind(
    files: ResultFiles, writer: str
) -> None:
    # A service stopping abandons the downloads in flight: whenever the cancel lands,
    # at the open, at a write, waiting for the object, nothing may stay open or behind.
    rows = make_rows(2000)
    for turns in range(40):
        if writer == "copy":
            work = files.copy_csv("q", "e", COLUMNS, ["n", "s"], endless_chunks(athena_csv(rows)))
        else:
            work = files.write("q", "e", pages_of(rows, size=100, never_ends=True))
        task = asyncio.create_task(work)
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert open_files_under(files.directory) == []
        assert list(files.directory.iterdir()) == []


@pytest.mark.parametrize("writer", ["copy", "rows"])
async def test_a_write_cancelled_anywhere_up_to_its_end_closes_its_files(
    files: ResultFiles, writer: str
) -> None:
    # A stopping service cancels the downloads in flight, which may be at their last
    # steps: the sync, the closing of the files, the rename. Cancels land one loop turn
    # further each time, until the write is done before them; at every one, either the
    # result is whole or nothing is left, and no file stays open.
    rows = make_rows(300)
    data = athena_csv(rows)
    done_first = 0
    for turns in range(10_000):
        if writer == "copy":
            work = files.copy_csv("q", "e", COLUMNS, ["n", "s"], chunks_of(data, 4096))
        else:
            work = files.write("q", "e", pages_of(rows, size=100))
        task = asyncio.create_task(work)
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        try:
            assert await task == Written(rows=len(rows), size=len(data))
            done_first += 1
        except asyncio.CancelledError:
            pass
        assert open_files_under(files.directory) == []
        # Cancelled during its rename, a write has put its result in place all the same.
        stored = [path.name for path in files.directory.iterdir()]
        if task.cancelled():
            assert stored in ([], ["q.e"])
        else:
            assert stored == ["q.e"]
        if stored:
            reader = await files.open("q", "e")
            try:
                assert (await reader.page(0, len(rows))).rows == rows
            finally:
                reader.close()
            await files.delete("q", "e")
        if done_first == 3:
            break
    assert done_first == 3

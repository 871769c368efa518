"""Where a download's bytes go: a file written whole or not at all, or an open stream."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

# Called with the bytes received so far, after each chunk.
Progress = Callable[[int], object]
Write = Callable[[bytes], object]
# A download's destination: a path, or a binary stream open for writing.
Target = str | os.PathLike[str] | BinaryIO


class Sink:
    """A download's destination: `path` (a file, replaced only once the download is
    whole) or `stream` (a binary stream, such as stdout's buffer, written as the bytes
    come); `received` counts the bytes, reported to `progress` after each chunk."""

    def __init__(self, target: Target, progress: Progress | None) -> None:
        self.path: Path | None = None
        self.stream: BinaryIO | None = None
        if isinstance(target, str | os.PathLike):
            self.path = Path(target)
        else:
            self.stream = target
        self.progress = progress
        self.received = 0

    @contextlib.contextmanager
    def receiving(self) -> Iterator[Callable[[bytes], None]]:
        """A `write(chunk)` for the body; leaving the block normally completes the
        download, an exception leaves no partial file behind."""
        if self.path is None:
            assert self.stream is not None
            yield self._counting(self.stream.write)
            self.stream.flush()
            return
        with _atomic_file(self.path) as write:
            yield self._counting(write)

    def _counting(self, write: Write) -> Callable[[bytes], None]:
        def counted(chunk: bytes) -> None:
            write(chunk)
            self.received += len(chunk)
            if self.progress is not None:
                self.progress(self.received)

        return counted


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[Write]:
    """Bytes written to a temporary file beside `path` (so the rename stays on one file
    system), synced and renamed over `path` at the end of the block; removed instead when
    the block raises, leaving `path` as it was. The file is made with the process's
    umask, as `open` would make `path`."""
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            yield file.write
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise

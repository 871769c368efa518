"""A store call's deadline, and the failures that mean the store is out of reach.

Every operation of the Store runs inside `Deadline`: a database that refuses, drops or
never answers a connection, a pool with no free connection, a statement that does not
answer in time, or a SQLite file locked past its busy timeout all come out as one
`StoreUnavailable` (503 with Retry-After), within the deadline. What says the SQL or the
data is wrong (integrity, programming errors) is a bug and passes through unchanged.

A call cut by the deadline leaves no connection behind in an unknown state: the driver's
path discards the connection of a block that failed (driver.py), and SQLAlchemy's
invalidates a connection whose statement was interrupted rather than pooling it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from types import TracebackType

import asyncmy.errors
from sqlalchemy import exc as sa_exc

from athenaq.errors import StoreUnavailable

# SQLite's result codes (their primary part) of a file out of reach or held by another
# connection; the others (no such table, a constraint, a syntax error) are bugs.
_SQLITE_OUTAGE = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_PROTOCOL,
    }
)
# What the MySQL driver raises for a refused, lost or timed-out connection and for the
# server's own passing conditions (too many connections, a lock wait timeout); OSError
# covers refused and reset connections and TimeoutError, EOFError a reply cut short
# (asyncio.IncompleteReadError).
_MYSQL_ERRORS = (asyncmy.errors.OperationalError, asyncmy.errors.InterfaceError)
_OUTAGE_TYPES = (*_MYSQL_ERRORS, OSError, EOFError)
# ER_LOCK_DEADLOCK.
_MYSQL_DEADLOCK = 1213


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` says the store is out of reach (rather than that a statement is wrong)."""
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        if not isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
            return False
        # SQLite's are told by their code; the MySQL driver's, all of them.
        code = None if exc.orig is None else _sqlite_code(exc.orig)
        return code is None or code & 0xFF in _SQLITE_OUTAGE
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return True  # no pooled connection came free in time; a connection lost
    code = _sqlite_code(exc)
    if code is not None:
        return code & 0xFF in _SQLITE_OUTAGE
    return isinstance(exc, _OUTAGE_TYPES)


def is_disconnect(exc: BaseException) -> bool:
    """Whether the driver's `exc` says its connection is gone (the server closed it, the
    network dropped it, it never opened): the pool's other connections, opened alike,
    are likely gone too. MySQL's client-side error codes are 2000 to 2999."""
    if isinstance(exc, _MYSQL_ERRORS):
        code = exc.args[0] if exc.args else None
        return isinstance(code, int) and 2000 <= code < 3000
    return isinstance(exc, OSError | EOFError)


def is_deadlock(exc: BaseException) -> bool:
    """Whether the driver's `exc` says MySQL/MariaDB chose its transaction as a deadlock's
    victim and rolled it back whole: the transaction may simply be run again."""
    return (
        isinstance(exc, asyncmy.errors.OperationalError)
        and bool(exc.args)
        and exc.args[0] == _MYSQL_DEADLOCK
    )


def _sqlite_code(exc: BaseException) -> int | None:
    """SQLite's result code of `exc` or of the sqlite3 error it wraps, if it has one."""
    for error in (exc, exc.__cause__):
        if isinstance(error, sqlite3.Error):
            code = getattr(error, "sqlite_errorcode", None)
            return sqlite3.SQLITE_ERROR if code is None else int(code)
    return None


# After the deadline, the block is cancelled again this often until it ends: on Python
# 3.11, asyncio.wait_for (which the MySQL driver uses to connect and read) returns normally
# instead of raising a cancel that arrives as its operation completes (CPython gh-86296),
# and the block would go on, past its deadline, on a connection that may never answer.
RECANCEL_SECONDS = 0.05


class Deadline:
    """`async with Deadline(seconds)`: the block ends within `seconds`, and a store out of
    reach in it (see `is_outage`) raises StoreUnavailable. A class rather than a
    generator-based context manager: it wraps every statement of the hot path.

    Like asyncio.timeout, it cancels the block's task at the deadline and turns that
    cancel into its own error; unlike it, it cancels again until the block has ended
    (RECANCEL_SECONDS), so a cancel swallowed on the way cannot let the block run on."""

    __slots__ = ("_cancels", "_expiry", "_seconds", "_task")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._task: asyncio.Task[object] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._cancels = 0

    async def __aenter__(self) -> None:
        self._task = asyncio.current_task()
        self._cancels = 0
        self._expiry = asyncio.get_running_loop().call_later(self._seconds, self._expire)

    def _expire(self) -> None:
        assert self._task is not None
        # The task waits inside the block (a callback runs only while it is suspended),
        # so the cancel lands there.
        self._cancels += 1
        self._task.cancel()
        self._expiry = asyncio.get_running_loop().call_later(RECANCEL_SECONDS, self._expire)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task is not None and self._expiry is not None
        self._expiry.cancel()
        if self._cancels:
            for _ in range(self._cancels):
                self._task.uncancel()
            if exc is not None and self._task.cancelling() == 0:
                # Cut by the deadline (a CancelledError, or what cleaning up after it
                # raised), and by no one else's cancel.
                raise StoreUnavailable(
                    f"the store did not answer within {self._seconds:g} s"
                ) from exc
        if exc is not None and is_outage(exc):
            raise StoreUnavailable("the store cannot be reached") from exc

"""What a caller may start: the databases, workgroups and statement kinds of its key, and
its daily scan quota. Checked before a submit or a refresh writes anything; the limit on
unfinished queries is the store's, counted in the write itself."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from athenaq.clock import utcnow
from athenaq.errors import Forbidden, QuotaExceeded
from athenaq.identity import Caller
from athenaq.statements import check_statement
from athenaq.store import Store


def seconds_to_next_utc_day(now: datetime) -> int:
    midnight = datetime(now.year, now.month, now.day) + timedelta(days=1)
    return int((midnight - now).total_seconds()) + 1


class Policy:
    """Refuses a start its caller's key does not allow."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def admit(self, caller: Caller, sql: str, database: str, workgroup: str) -> None:
        """Forbidden for a database or workgroup outside the key's; StatementNotAllowed
        for SQL of a kind the key may not run; QuotaExceeded once the day's scanned bytes
        reached the key's daily_scan_bytes."""
        if caller.databases is not None and database not in caller.databases:
            raise Forbidden(f"this key may not query the database {database!r}")
        if caller.workgroups is not None and workgroup not in caller.workgroups:
            raise Forbidden(f"this key may not use the workgroup {workgroup!r}")
        if caller.statements is not None:
            # Parsing is pure Python, up to half a second for the largest text it reads:
            # in a thread, so the loop serves other requests meanwhile.
            await asyncio.to_thread(check_statement, sql, caller.statements)
        if caller.daily_scan_bytes is not None:
            used = await self.store.scanned_today(caller.name)
            if used >= caller.daily_scan_bytes:
                raise QuotaExceeded(
                    f"this key's queries scanned {used} bytes today (UTC), its daily quota"
                    f" is {caller.daily_scan_bytes}",
                    retry_after=seconds_to_next_utc_day(utcnow()),
                )

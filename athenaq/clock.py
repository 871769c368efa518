"""Time as the service stores and shows it: UTC."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime


def utcnow() -> datetime:
    """Naive UTC: the store's DATETIME columns carry no zone."""
    return datetime.now(UTC).replace(tzinfo=None)


def isoformat(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a `Z`, to the millisecond."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="milliseconds") + "Z"


def in_order(
    first: datetime, later: Sequence[datetime | None], now: datetime
) -> list[datetime | None]:
    """`later`, the times of a query's life after `first` in their order (None where
    unset), made to keep that order: each one set is no later than the next one set (the
    last no later than `now`), then no earlier than the one set before it (the first no
    earlier than `first`).

    The times come from two clocks, athenaq's (`first`, `now`, a result's storing) and
    Athena's (a start, a completion), which may differ: a time of Athena's is moved to
    the nearest one that athenaq's own observations allow, never taken for the truth
    against them. The floors are applied last: should `first` come from a process whose
    clock is ahead of this one's `now`, the order still holds."""
    times = list(later)
    ceiling = now
    for i in reversed(range(len(times))):
        if (value := times[i]) is not None:
            ceiling = times[i] = min(value, ceiling)
    floor = first
    for i, value in enumerate(times):
        if value is not None:
            floor = times[i] = max(value, floor)
    return times

"""Admission control's decisions, free of SQL and I/O: the fair order in which waiting
queries take Athena slots, and the cap that Athena's throttling lowers for a while.

The store applies the order inside the transaction that admits (store/admission.py);
the launcher keeps the cap and asks for admissions (launcher.py).

The fair order fills slots as water fills vessels: the next slot goes to the owner with
the fewest queries admitted and unfinished, counting the ones given out before it, each
owner's waiting queries oldest first. Among owners level with each other, the one whose
last slot is the longest ago goes first (round robin: every slot given out is numbered,
its turn), then the one whose oldest waiting query is older. So an owner with 500
queries waiting never delays another owner's one, and owners that wait together take
the slots in turn.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from loguru import logger

from athenaq.states import QueryRecord, QueryState

# The state_reason a waiting query's status shows, with its place in the fair order.
WAITING_REASON = "waiting for an Athena slot: {ahead} ahead"


def waits_for_slot(record: QueryRecord) -> bool:
    """Whether `record` waits QUEUED for an Athena slot: not admitted, never sent."""
    return (
        record.state == QueryState.QUEUED
        and record.admitted_at is None
        and record.athena_execution_id is None
    )


@dataclass(frozen=True)
class Backlog:
    """One owner's queries as admission sees them: admitted and unfinished (holding a
    slot), waiting for one, when the oldest waiting one was submitted, and the turn of
    the owner's latest slot (0: none yet)."""

    admitted: int
    waiting: int
    # Any orderable value (a datetime), None when nothing waits.
    oldest: object = None
    turn: int = 0


def _tie(backlogs: Mapping[str, Backlog], owner: str) -> tuple[int, int, object, str]:
    """The order of owners at one level. Of two owners, the one that had more admitted
    reaches the level without a slot of this round, so its last slot is older than those
    the other got on its way up: it goes first; then the older turn, the older query."""
    b = backlogs[owner]
    return -b.admitted, b.turn, b.oldest, owner


def fair_order(backlogs: Mapping[str, Backlog], slots: int) -> list[str]:
    """The owners of the waiting queries that take the `slots` free slots, slot by slot
    in the fair order (each owner's oldest waiting queries, in their order)."""
    heap = [
        (b.admitted, _tie(backlogs, owner), owner) for owner, b in backlogs.items() if b.waiting > 0
    ]
    heapq.heapify(heap)
    order: list[str] = []
    taken: dict[str, int] = {}
    while len(order) < slots and heap:
        level, tie, owner = heapq.heappop(heap)
        order.append(owner)
        taken[owner] = taken.get(owner, 0) + 1
        if taken[owner] < backlogs[owner].waiting:
            heapq.heappush(heap, (level + 1, tie, owner))
    return order


def places_ahead(backlogs: Mapping[str, Backlog], owner: str, rank: int) -> int:
    """How many waiting queries come before `owner`'s waiting query that has `rank` of its
    own before it (0: its oldest), in the order `fair_order` gives out slots."""
    level = backlogs[owner].admitted + rank
    tie = _tie(backlogs, owner)
    ahead = rank
    for other, b in backlogs.items():
        if other == owner or b.waiting == 0:
            continue
        # The other's waiting queries stand at levels admitted, admitted + 1, ...
        below = level - b.admitted
        ahead += min(max(below, 0), b.waiting)
        if 0 <= below < b.waiting and _tie(backlogs, other) < tie:
            ahead += 1  # its query at the same level goes first
    return ahead


class AdaptiveCap:
    """The most executions this process lets athenaq have running in Athena: the
    configured `athena.max_running`, halved (at least 1) when Athena throttles a start,
    at most once per `hold_seconds` (the starts of one round are throttled together),
    and raised back by one after each `quiet_seconds` without a throttle, as a TCP window
    is. Each change is logged once, at WARNING."""

    def __init__(
        self,
        configured: int,
        *,
        hold_seconds: float,
        quiet_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.configured = configured
        self.hold_seconds = hold_seconds
        self.quiet_seconds = quiet_seconds
        self._clock = clock
        self._value = configured
        self._lowered_at = -float("inf")
        # Since when no throttle came (moved on by each raise).
        self._quiet_since = clock()
        # The lowest the cap has been since the start.
        self.lowest = configured

    @property
    def value(self) -> int:
        """The cap now: raised by one per quiet interval since the last throttle."""
        if self._value < self.configured:
            steps = int((self._clock() - self._quiet_since) // self.quiet_seconds)
            if steps > 0:
                before = self._value
                self._value = min(self.configured, before + steps)
                self._quiet_since += steps * self.quiet_seconds
                logger.warning(
                    "Athena no longer throttles starts; the running cap is raised",
                    max_running=self._value,
                    was=before,
                    configured=self.configured,
                )
        return self._value

    def throttled(self) -> None:
        """Athena answered a start with TooManyRequestsException."""
        current = self.value
        now = self._clock()
        self._quiet_since = now
        if current == 1 or now - self._lowered_at < self.hold_seconds:
            return
        self._value = max(1, current // 2)
        self._lowered_at = now
        self.lowest = min(self.lowest, self._value)
        logger.warning(
            "Athena throttles starts; the running cap is lowered",
            max_running=self._value,
            was=current,
            configured=self.configured,
        )

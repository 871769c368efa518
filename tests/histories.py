"""A query's history, as the store keeps it, checked against the state table: shared by
the tests that put several processes on one store and by the soak benchmark."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from athenaq.states import LEGAL_MOVES, QueryState

Move = tuple[QueryState | None, QueryState]


def illegal_move(moves: Sequence[Move]) -> Move | None:
    """The first of `moves` (a history's `(from_state, to_state)`, oldest first) that is
    no legal path's: a first move other than the submit, a move the state table lacks,
    or one that does not start where the move before it ended. None for a legal path."""
    if not moves or moves[0] != (None, QueryState.QUEUED):
        return moves[0] if moves else (None, QueryState.QUEUED)
    for (_, reached), (source, target) in itertools.pairwise(moves):
        if source != reached or (source, target) not in LEGAL_MOVES:
            return source, target
    return None


def assert_legal_path(query_id: str, moves: Sequence[Move]) -> None:
    assert illegal_move(moves) is None, (query_id, moves)

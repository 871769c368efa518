"""The planned status dump answers exactly what the status schema itself dumps."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import pytest
from marshmallow import Schema, fields, post_dump

from athenaq.schemas import STATUS, DumpPlan, StatusSchema
from athenaq.states import EXECUTION_FIELDS, LEASE_FIELDS, QueryRecord, QueryState

AT = datetime(2024, 1, 1, 12, 0, 0, 123456)
QUEUED = QueryRecord(
    id="00000000-0000-0000-0000-000000000001",
    query_text="SELECT 1",
    database_name="default",
    workgroup="primary",
    state=QueryState.QUEUED,
    state_reason=None,
    run=1,
    submitted_at=AT,
    version=0,
    updated_at=AT,
    owner="alice",
    **dict.fromkeys((*EXECUTION_FIELDS, *LEASE_FIELDS)),
)
SUCCEEDED = dataclasses.replace(
    QUEUED,
    state=QueryState.SUCCEEDED,
    state_reason="done",
    athena_execution_id="e-1",
    cancel_requested_at=AT,
    started_at=AT,
    completed_at=AT,
    results_at=AT,
    row_count=3,
    results_source="s3",
    data_scanned_bytes=10,
    engine_execution_ms=20,
    queue_ms=0,
    total_execution_ms=30,
    version=4,
)


@pytest.mark.parametrize("record", [QUEUED, SUCCEEDED], ids=["queued", "succeeded"])
def test_status_plan_dumps_what_the_schema_dumps(record: QueryRecord) -> None:
    expected = StatusSchema().dump(record)
    planned = STATUS.dump(record)
    assert planned == expected
    assert list(planned) == list(expected)  # the same key order too


def test_a_schema_with_dump_hooks_is_not_planned() -> None:
    class Hooked(Schema):
        id = fields.String()

        @post_dump
        def wrap(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
            return {"data": data}

    with pytest.raises(ValueError, match="dump hooks"):
        DumpPlan(Hooked())

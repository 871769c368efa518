"""schemathesis against the live server, API keys on: requests generated from the OpenAPI
document (GET /openapi.json) for every operation, valid and invalid, then chains of
them along the document's links (submit, then status, results, history, cancel and
refresh on the id it answered). Every answer must be no 5xx, conform to the document
(status, media type, headers, body) and come within 5 s.

Deterministic in what it generates (a fixed seed, no example database, no shrinking)
and bounded: ATHENAQ_FUZZ_EXAMPLES sets the examples per operation and mode (CI: 60),
ATHENAQ_FUZZ_SCENARIOS the stateful scenarios (twice that); bench/fuzz.py runs it larger.
tox runs it once, over MariaDB (the `fuzz` marker keeps it out of the SQLite and
local-engine environments). The count of requests, by operation and status, is written
to the run's output and asserted (at least 1,000)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck
from hypothesis.stateful import get_state_machine_test
from schemathesis import GenerationMode

from athenaq.identity import DEFAULT_SCOPES, METRICS
from athenaq.store import Store
from tests.athena_double import AthenaDouble
from tests.conftest import LOADED_STORE_TIMEOUT, make_key
from tests.served import served, served_config

# Bounded by its examples, not by time: 35 s alone, three times that and more on a machine
# running the rest of CI beside it, past the suite's 120 s per test.
pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(600)]

# Examples per operation and generation mode, and stateful scenarios, in CI.
EXAMPLES = int(os.environ.get("ATHENAQ_FUZZ_EXAMPLES", "60"))
SCENARIOS = int(os.environ.get("ATHENAQ_FUZZ_SCENARIOS", str(EXAMPLES * 2)))
MIN_REQUESTS = 1_000
# Suites of stateful scenarios at most (each cut short by a change of the server's state).
MAX_SUITES = 20
MAX_SECONDS = 5.0
SEED = 20261206
# What JSON Schema cannot say, and the document says in words: whether a callback_url's
# host is allowed is the config's to say (webhooks.allowed_hosts, empty here), `since`
# may not be after `until`, and a cursor is the server's. A request the schema finds
# valid, refused for these, is no failure.
REFUSED_BEYOND_THE_SCHEMA = (
    "is not in webhooks.allowed_hosts",
    "webhooks are off here",
    "since: must not be after until",
    # A listing's cursor is one the server made (its `next`), not any string.
    "cursor: not a cursor of this listing",
)


@dataclass
class Tally:
    """What the run sent and met."""

    requests: int = 0
    by_operation: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    slowest: float = 0.0
    # Stateful scenarios run, and suites of them that hypothesis stopped as flaky.
    scenarios: int = 0
    suites_cut: int = 0
    # A description of each distinct failure (operation and check), and one instance.
    failures: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, case: schemathesis.Case, response: schemathesis.Response) -> None:
        with self.lock:
            self.requests += 1
            self.by_operation[case.operation.label] += 1
            self.by_status[response.status_code] += 1
            self.slowest = max(self.slowest, response.elapsed)

    @contextlib.contextmanager
    def recording(self, where: str) -> Iterator[None]:
        """Record the checks' failures instead of raising them: hypothesis would replay a
        failing example against a server whose state has moved on (and call it flaky),
        and the run would stop at the first; each distinct failure is kept once."""
        try:
            yield
        except schemathesis.errors.FailureGroup as group:
            for failure in group.exceptions:
                title = f"{where}: {failure.title}"
                if title not in self.failures:
                    self.failures[title] = str(group)
        except AssertionError as failure:
            self.failures.setdefault(f"{where}: {failure}", str(failure))

    def summary(self) -> str:
        operations = ", ".join(f"{label}: {n}" for label, n in sorted(self.by_operation.items()))
        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(self.by_status.items()))
        return (
            f"{self.requests} requests ({self.by_status[401]} of them schemathesis's probes "
            f"without a valid key, answered 401), the slowest answered in {self.slowest:.2f} s; "
            f"{self.scenarios} stateful scenarios ({self.suites_cut} suites cut short); "
            f"by operation {{{operations}}}; by status {{{statuses}}}"
        )


def _settings(examples: int) -> hypothesis.settings:
    # Seeded (hypothesis.seed, SEED): the same version makes the same first requests.
    return hypothesis.settings(
        max_examples=examples,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        stateful_step_count=6,
        # No shrinking: a failure is reported as found. Shrinking replays requests against
        # a server whose state has moved on (the queries made since), which hypothesis
        # takes for flakiness; and it would make the run's length unbounded.
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        print_blob=False,
    )


def _calls(operation: Any, mode: GenerationMode, tally: Tally, examples: int) -> Callable[[], None]:
    """A hypothesis test that sends `examples` requests of `operation`, valid or not."""
    where = f"{operation.label} ({mode.value})"

    @hypothesis.seed(SEED)
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @_settings(examples)
    def calls(case: schemathesis.Case) -> None:
        with tally.recording(where):
            case.call_and_validate()

    result: Callable[[], None] = calls
    return result


def fuzz(base_url: str, key: str, examples: int, scenarios: int) -> Tally:
    """Run schemathesis against the server at `base_url` with the API key `key`."""
    config = schemathesis.Config.from_dict(
        {
            "base-url": base_url,
            "seed": SEED,
            "auth": {"openapi": {"bearer": {"bearer": key}}},
            "request-timeout": 30,
            "checks": {
                "max_response_time": MAX_SECONDS,
                # A valid submit may meet the state of earlier ones: its Idempotency-Key
                # sent before with another body (422), beside the defaults' 409 and 429.
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "3xx", 401, 403, 404, 409, 422, 429, "5xx"]
                },
                # An invalid body over server.max_body_bytes is refused for its size (413),
                # before it is read.
                "negative_data_rejection": {
                    "expected-statuses": [
                        400,
                        401,
                        403,
                        404,
                        405,
                        406,
                        409,
                        413,
                        415,
                        422,
                        428,
                        429,
                        "5xx",
                    ]
                },
            },
        }
    )
    # The document as the server serves it; loaded from a dict, not its URL, because
    # schemathesis leaves out the operation it loads its schema from (GET /openapi.json).
    served = requests.get(f"{base_url}/openapi.json", timeout=30)
    served.raise_for_status()
    schema = schemathesis.openapi.from_dict(served.json(), config=config)
    tally = Tally()

    @schema.hook
    def after_call(context: Any, case: schemathesis.Case, response: schemathesis.Response) -> None:
        tally.count(case, response)

    @schema.hook
    def filter_failure(
        context: Any, failure: Any, case: schemathesis.Case, response: schemathesis.Response
    ) -> bool:
        return not (
            type(failure).__name__ == "RejectedPositiveData"
            and any(message in response.text for message in REFUSED_BEYOND_THE_SCHEMA)
        )

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _calls(operation, mode, tally, examples)()
            except hypothesis.errors.Unsatisfiable:
                continue  # nothing in the operation to make invalid

    class Scenarios(schema.as_state_machine()):  # type: ignore[misc]
        def validate_response(
            self, response: schemathesis.Response, case: schemathesis.Case, **kwargs: Any
        ) -> None:
            with tally.recording(f"{case.operation.label} (stateful)"):
                super().validate_response(response, case, **kwargs)

        def teardown(self) -> None:
            tally.scenarios += 1
            super().teardown()

    # Scenarios choose their next step by what the server answered: when hypothesis
    # replays a prefix whose answers have changed (the server's state moved on), it stops
    # the suite as flaky, as schemathesis's own runner does; a new suite, with the next
    # seed, runs the scenarios left.
    for suite in range(MAX_SUITES):
        left = scenarios - tally.scenarios
        if left <= 0:
            break
        settings = _settings(left)
        test = get_state_machine_test(Scenarios, settings=settings, _min_steps=2)
        try:
            hypothesis.seed(SEED + suite)(test)()
        except hypothesis.errors.Flaky:
            tally.suites_cut += 1
    return tally


async def test_generated_requests_meet_the_document(
    db_url: str,
    double: AthenaDouble,
    keys_store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A process of its own: hypothesis refuses to generate while anything else in its
    # process draws from `random` (the poller's jitter does).
    document = served_config(db_url, double.url)
    document["auth"] = {"mode": "api_keys"}
    document["database"]["timeout_seconds"] = LOADED_STORE_TIMEOUT
    # The scopes of a key made without --scope, and metrics: every operation answers.
    key = await make_key(keys_store, "fuzz", DEFAULT_SCOPES | {METRICS})
    with served(tmp_path, document) as server:
        await server.serving()
        started = time.monotonic()
        tally = await asyncio.to_thread(fuzz, server.url, key, EXAMPLES, SCENARIOS)
        took = time.monotonic() - started
    report = f"schemathesis: {tally.summary()}, in {took:.1f} s"
    # In the run's output, past pytest's capture: the count is part of the result.
    with capsys.disabled():
        print(f"\n{report}")
    assert not tally.failures, "\n\n".join([report, *tally.failures.values()])
    # Those with the key: schemathesis's probes without one all meet the same 401.
    assert tally.requests - tally.by_status[401] >= MIN_REQUESTS, report
    assert tally.slowest <= MAX_SECONDS, report

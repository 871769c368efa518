"""The Athena client's own settings, seen from the endpoint it calls."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiobotocore
import botocore
import pytest
from aiohttp import web

from athenaq.athena import Athena
from athenaq.config import AthenaConfig, S3Config


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[str, list[str]]]:
    """An endpoint answering every StartQueryExecution, keeping each one's User-Agent."""
    agents: list[str] = []

    async def start(request: web.Request) -> web.Response:
        agents.append(request.headers["User-Agent"])
        return web.json_response(
            {"QueryExecutionId": f"e-{len(agents)}"}, content_type="application/x-amz-json-1.1"
        )

    app = web.Application()
    app.router.add_post("/", start)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", agents
    finally:
        await runner.cleanup()


async def test_every_call_sends_the_same_user_agent_with_the_configured_app_id(
    recorder: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, agents = recorder
    monkeypatch.setenv("AWS_SDK_UA_APP_ID", "nightly-reports")
    config = AthenaConfig("us-east-1", "default", "primary", "s3://bucket/results/", url)
    async with Athena.open(config, S3Config(endpoint_url=None)) as athena:
        for run in (1, 2):
            await athena.start("SELECT 1", "default", "primary", f"athenaq-{'0' * 32}-{run}")
    assert len(agents) == 2
    assert agents[0] == agents[1]
    parts = agents[0].split()
    assert parts[0] == f"aiobotocore/{aiobotocore.__version__}"
    assert "app/nightly-reports" in parts
    assert parts.count(f"botocore/{botocore.__version__}") == 1

"""athenaq's Python client: `Client` for blocking code, `AsyncClient` for asyncio.

Both speak the HTTP API of docs/api.md through httpx and import nothing of the service,
so an application installs athenaq to use them without running it. docs/client.md shows
them at work.
"""

from athenaq.client.aio import AsyncClient
from athenaq.client.errors import APIError, ClientError, Unreachable, WaitTimeout
from athenaq.client.flows import DEFAULT_URL, Retries
from athenaq.client.sync import Client
from athenaq.client.types import (
    FINAL_STATES,
    Accepted,
    Column,
    History,
    ResultPage,
    State,
    Status,
    Submission,
    Transition,
    Usage,
)

__all__ = [
    "DEFAULT_URL",
    "FINAL_STATES",
    "APIError",
    "Accepted",
    "AsyncClient",
    "Client",
    "ClientError",
    "Column",
    "History",
    "ResultPage",
    "Retries",
    "State",
    "Status",
    "Submission",
    "Transition",
    "Unreachable",
    "Usage",
    "WaitTimeout",
]

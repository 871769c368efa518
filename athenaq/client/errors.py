"""The client's exceptions: one base, ClientError, for everything it raises."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from athenaq.client.types import Status


class ClientError(Exception):
    """What the client could not do; every exception it raises is one."""


class APIError(ClientError):
    """The service answered with an error (docs/api.md, "Errors").

    `status` is the HTTP status, `code` the envelope's stable word to branch on
    (`not_found`, `query_running`, `rate_limited`...), `message` its sentence for people,
    `state` the query's state when the error is about it, and `retry_after` the seconds
    the `Retry-After` header asked for, if any."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        state: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.state = state
        self.retry_after = retry_after


class Unreachable(ClientError):
    """No answer from the service: nothing listens at the URL, the connection broke, or
    no answer came in time. The message names the URL, never a key."""


class WaitTimeout(ClientError):
    """`wait` reached its deadline before the query finished; `status` is the query as
    it last stood."""

    def __init__(self, status: Status, timeout: float) -> None:
        super().__init__(
            f"query {status['id']} is still {status['state']} after {timeout:g} s of waiting"
        )
        self.status = status

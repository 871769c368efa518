"""Domain errors that carry the HTTP status and the stable code clients branch on."""

from __future__ import annotations


class ApiError(Exception):
    """An error a client sees as `{"error": {"code", "message"}, "state"?}`."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, state: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.state = state
        self.headers: dict[str, str] = {}


class BadRequest(ApiError):
    """A request that cannot be read as HTTP: its body's framing, too many parameters."""

    status = 400
    code = "bad_request"


class InvalidJson(ApiError):
    status = 400
    code = "invalid_json"


class ValidationFailed(ApiError):
    status = 400
    code = "validation_error"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers["WWW-Authenticate"] = 'Bearer realm="athenaq"'


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class StatementNotAllowed(ApiError):
    """The SQL runs a statement kind the key may not, or cannot be read to tell."""

    status = 403
    code = "statement_not_allowed"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class QueryNotFound(NotFound):
    def __init__(self, query_id: str) -> None:
        super().__init__(f"query {query_id} not found")


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class QueryRunning(ApiError):
    status = 409
    code = "query_running"

    def __init__(self, query_id: str, state: str) -> None:
        # The handlers add Retry-After: when a new answer is worth asking for.
        super().__init__(f"query {query_id} is still {state}", state=state)


class QueryCancelled(ApiError):
    status = 409
    code = "query_cancelled"

    def __init__(self, query_id: str) -> None:
        super().__init__(f"query {query_id} was cancelled", state="CANCELLED")


class QueryFailed(ApiError):
    status = 409
    code = "query_failed"

    def __init__(self, query_id: str, reason: str | None) -> None:
        super().__init__(f"query {query_id} failed: {reason or 'no reason given'}", state="FAILED")


class QueryFinished(ApiError):
    status = 409
    code = "query_finished"

    def __init__(self, query_id: str, state: str, detail: str = "") -> None:
        message = f"query {query_id} already finished ({state}); it cannot be cancelled"
        super().__init__(message + (f": {detail}" if detail else ""), state=state)


class ResultsMissing(ApiError):
    status = 410
    code = "results_missing"

    def __init__(self, query_id: str) -> None:
        super().__init__(
            f"the result file of query {query_id} is missing; refresh the query", state="SUCCEEDED"
        )


class IdempotencyKeyReused(ApiError):
    """The Idempotency-Key came with another request within its 24 hours."""

    status = 422
    code = "idempotency_key_reused"


class ResultsExpired(ApiError):
    status = 410
    code = "results_expired"

    def __init__(self, query_id: str) -> None:
        super().__init__(
            f"the results of query {query_id} were removed at the end of their retention "
            "period; refresh the query to run it again",
            state="SUCCEEDED",
        )


class Conflict(ApiError):
    """The query changed in a way the request did not expect (a lost race)."""

    status = 409
    code = "illegal_transition"


class TooManyRequests(ApiError):
    """A limit of the caller's key; `Retry-After` says when it may pass."""

    status = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.headers["Retry-After"] = str(max(1, retry_after))


class TooManyQueries(TooManyRequests):
    code = "too_many_queries"


class QuotaExceeded(TooManyRequests):
    code = "quota_exceeded"


class RateLimited(TooManyRequests):
    code = "rate_limited"


class ServiceUnavailable(ApiError):
    status = 503
    code = "unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        # Every 503 says when to try again; the conditions behind these pass within moments.
        self.headers["Retry-After"] = "1"


class Overloaded(ServiceUnavailable):
    """More requests in flight than the process takes (server.max_inflight_requests)."""

    code = "overloaded"


class StoreUnavailable(ServiceUnavailable):
    """The store (MySQL, SQLite) refused, lost or did not answer a call within its deadline."""

    code = "store_unavailable"

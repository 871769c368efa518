"""Who may call the API: a pluggable authorizer, asked on every request that needs a caller.

`auth.mode` chooses one: `none` (AllowEveryone) or `api_keys` (ApiKeys). Another can be
handed to `Service(authorizer=...)`.
"""

from __future__ import annotations

import hmac
from typing import Protocol

from tornado.httputil import HTTPServerRequest

from athenaq.errors import Unauthorized
from athenaq.identity import Caller, anonymous, key_hash
from athenaq.store import Store


class Authorizer(Protocol):
    """Decides who a request comes from.

    Returns the caller, or raises `errors.Unauthorized` (no or bad credentials, 401)."""

    async def authorize(self, request: HTTPServerRequest) -> Caller: ...


class AllowEveryone:
    """Admits every request as "anonymous", with every scope: athenaq on a laptop, or
    behind a proxy that authenticates."""

    def __init__(self, statements: frozenset[str] | None = None) -> None:
        self._caller = anonymous(statements)

    async def authorize(self, request: HTTPServerRequest) -> Caller:
        return self._caller


def bearer_token(request: HTTPServerRequest) -> str:
    """The key of `Authorization: Bearer <key>`; Unauthorized when there is none."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("an API key is needed: Authorization: Bearer <key>")
    return token


class ApiKeys:
    """Admits a request whose Bearer key the store knows and has not revoked.

    The key is looked up at every request, so a revoke on any process sharing the
    database refuses its next request everywhere."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def authorize(self, request: HTTPServerRequest) -> Caller:
        digest = key_hash(bearer_token(request))
        key = await self.store.find_key(digest)
        # The index found the row by its hash; the comparison in constant time keeps even
        # a database collation that folded case from matching a near miss.
        if key is None or not hmac.compare_digest(key.key_hash, digest):
            raise Unauthorized("the API key is not known")
        if key.revoked_at is not None:
            raise Unauthorized("the API key was revoked")
        return key.caller

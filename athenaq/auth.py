"""Who may call the API: a pluggable authorizer, asked on every request."""

from __future__ import annotations

from typing import Protocol

from tornado.httputil import HTTPServerRequest


class Authorizer(Protocol):
    """Decides who a request comes from.

    Returns the user's name, or raises `errors.Unauthorized` (no or bad
    credentials, 401) or `errors.Forbidden` (known but not allowed, 403)."""

    async def authorize(self, request: HTTPServerRequest) -> str: ...


class AllowEveryone:
    """Admits every request as "anonymous": athenaq behind a trusted network or proxy."""

    async def authorize(self, request: HTTPServerRequest) -> str:
        return "anonymous"

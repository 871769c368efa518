"""Liveness for load balancers and orchestrators."""

from __future__ import annotations

from athenaq.handlers.base import BaseHandler, allow_unauthenticated


@allow_unauthenticated
class HealthHandler(BaseHandler):
    """GET /health: 200 {"status": "ok"}."""

    async def get(self) -> None:
        self.write_json({"status": "ok"})


default_handlers = [(r"/health", HealthHandler)]

"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from athenaq.handlers.base import BaseHandler, allow_unauthenticated
from athenaq.schemas import HealthSchema, ReadinessSchema

# What a client should wait before asking /ready again.
RETRY_AFTER_SECONDS = 1
_HEALTH = HealthSchema()
_READINESS = ReadinessSchema()


@allow_unauthenticated
class HealthHandler(BaseHandler):
    """GET /health: 200 {"status": "ok"} while the process serves (liveness only)."""

    sheddable = False

    async def get(self) -> None:
        self.write_json(_HEALTH.dump({"status": "ok"}))


@allow_unauthenticated
class ReadyHandler(BaseHandler):
    """GET /ready: 200 {"status": "ready", "checks"}; 503 {"status": "unavailable",
    "checks"} naming the failing check, with Retry-After."""

    sheddable = False

    async def get(self) -> None:
        checks = await self.ctx.readiness.check()
        if all(outcome == "ok" for outcome in checks.values()):
            self.write_json(_READINESS.dump({"status": "ready", "checks": checks}))
            return
        self.set_header("Retry-After", str(RETRY_AFTER_SECONDS))
        self.write_json(_READINESS.dump({"status": "unavailable", "checks": checks}), status=503)


default_handlers = [(r"/health", HealthHandler), (r"/ready", ReadyHandler)]

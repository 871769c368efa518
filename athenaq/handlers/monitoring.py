"""GET /metrics: the process's metrics for Prometheus (handlers/exposition.py)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST

from athenaq.handlers.base import BaseHandler
from athenaq.identity import METRICS


class MetricsHandler(BaseHandler):
    """GET /metrics: 200, the Prometheus text format; 401 without a key, 403 without the
    scope `metrics` (when keys are on)."""

    required_scope = METRICS
    # Monitoring is answered under any load, as health and readiness are.
    sheddable = False

    async def get(self) -> None:
        page = await self.ctx.exposition.page()
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(page)


default_handlers = [(r"/metrics", MetricsHandler)]

"""The API's own description: its OpenAPI document."""

from __future__ import annotations

import functools
import json

from athenaq.handlers.base import BaseHandler, allow_unauthenticated
from athenaq.openapi import document


@functools.cache
def _document_text() -> str:
    # Made once per process, like the document itself: it depends on no config.
    return json.dumps(document(), ensure_ascii=False)


@allow_unauthenticated
class OpenApiHandler(BaseHandler):
    """GET /openapi.json: 200 the OpenAPI 3.1 document of this API."""

    async def get(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(_document_text())


default_handlers = [(r"/openapi.json", OpenApiHandler)]

"""Logging: loguru, one flat JSON object per line on stderr.

Tornado's and asyncio's stdlib loggers are routed through loguru, so every
line of the process has the same shape.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING, Any, TextIO

from loguru import logger

from athenaq import metrics
from athenaq.clock import isoformat

if TYPE_CHECKING:
    from loguru import Message
    from tornado.web import RequestHandler


def _json_sink(stream: TextIO | None) -> Any:
    # Made once: json.dumps given any option builds a new encoder for every line.
    encode = json.JSONEncoder(default=str, ensure_ascii=False).encode

    def sink(message: Message) -> None:
        record = message.record
        line: dict[str, Any] = {
            "timestamp": isoformat(record["time"]),
            "level": record["level"].name,
            "file": record["file"].name,
            "line": record["line"],
            "message": record["message"],
        }
        line.update(record["extra"])
        if record["exception"] is not None:
            exc_type, exc_value, _ = record["exception"]
            line["exception"] = f"{getattr(exc_type, '__name__', exc_type)}: {exc_value}"
        # Looked up at each line when not given, so a replaced sys.stderr is honoured.
        out = stream or sys.stderr
        out.write(encode(line) + "\n")
        out.flush()

    return sink


class _InterceptHandler(logging.Handler):
    """Hands stdlib log records (Tornado, asyncio) to loguru, keeping their origin."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno

        def origin(r: Any) -> None:
            r.update(
                file=type(r["file"])(record.filename, record.pathname),
                line=record.lineno,
                function=record.funcName,
                name=record.name,
            )

        logger.patch(origin).opt(exception=record.exc_info).log(
            level, record.getMessage(), logger_name=record.name
        )


def setup_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send all of the process's logs to `stream` (stderr) as JSON lines."""
    logger.remove()
    # The sink writes the record itself: the text loguru formats for it is only the
    # message, not its default line (time, level, origin), which would cost for nothing.
    logger.add(_json_sink(stream), level=level, format="{message}", backtrace=False, diagnose=False)
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.INFO, force=True)
    # One access line per request comes from log_request; Tornado's own would repeat it.
    logging.getLogger("tornado.access").disabled = True
    # Alembic says at INFO what it loads and runs; the store logs each schema step itself.
    logging.getLogger("alembic").setLevel(logging.WARNING)


# The status an aborted request is logged with: the client closed the connection before
# its request was whole, so no answer was sent (nginx's code for the same).
ABORTED_STATUS = 499


def log_request(handler: RequestHandler, *, aborted: bool = False) -> None:
    """Tornado's `log_function`: one access line per request, its level by status, and
    the request counted in the metrics.

    `aborted`: the client hung up mid-body. Tornado never finishes such a request, so
    the handler logs it itself, as status 499 with `"aborted": true`."""
    status = ABORTED_STATUS if aborted else handler.get_status()
    seconds = handler.request.request_time()
    metrics.request_done(handler, status, seconds)
    # A 503 is a part out of reach or a shed load, answered as designed (the client tries
    # again): a warning. Any other 5xx is a bug to look at.
    level = "INFO" if status < 400 else "ERROR" if status >= 500 and status != 503 else "WARNING"
    request = handler.request
    # Set by prepare() once the caller is known; never the key itself.
    caller = getattr(handler, "_current_user", None)
    logger.log(
        level,
        "request",
        method=request.method,
        path=request.path,
        status=status,
        duration_ms=round(seconds * 1000, 1),
        remote_ip=request.remote_ip,
        user=getattr(caller, "name", None),
        **({"aborted": True} if aborted else {}),
    )

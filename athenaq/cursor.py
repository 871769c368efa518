"""The listing's cursor: where a page of `GET /queries` ended, opaque to clients.

It is the URL-safe base64 (unpadded) of the JSON `[submitted_at, id, check]`: the last
query shown, by its submit time (ISO 8601, to the microsecond, as stored) and id, and
the first 16 hex digits of a SHA-256 over that position and the listing's filters. The
next page starts after that position (a keyset, not an offset), so queries submitted
meanwhile shift nothing.

The check is no signature (a fleet shares no secret for it, and needs none): a client
that forged a cursor would only page its own queries from another place. It refuses a
cursor that was altered by accident, or that is sent with other filters than the ones
it was made for.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from datetime import datetime

from athenaq.errors import ValidationFailed

# Far longer than any cursor made here (about 110 characters).
MAX_CURSOR_CHARS = 512
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _check(at: str, query_id: str, filters: Mapping[str, str]) -> str:
    material = json.dumps([at, query_id, sorted(filters.items())], separators=(",", ":"))
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def encode(submitted_at: datetime, query_id: str, filters: Mapping[str, str]) -> str:
    """The cursor of a page that ended at (submitted_at, query_id), under `filters` (each
    filter given, by name, in its canonical text)."""
    at = submitted_at.isoformat(timespec="microseconds")
    document = json.dumps([at, query_id, _check(at, query_id, filters)], separators=(",", ":"))
    return base64.urlsafe_b64encode(document.encode()).decode().rstrip("=")


def decode(cursor: str, filters: Mapping[str, str]) -> tuple[datetime, str]:
    """The position a cursor holds; ValidationFailed (naming `cursor`) when it is not one
    made here, was altered, or was made under other `filters`."""
    if len(cursor) > MAX_CURSOR_CHARS:
        raise ValidationFailed("cursor: not a cursor of this listing")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, query_id, check = json.loads(raw)
        if not (isinstance(at, str) and isinstance(query_id, str) and isinstance(check, str)):
            raise ValueError("not three strings")
        submitted_at = datetime.fromisoformat(at)
    except (binascii.Error, ValueError, TypeError):
        raise ValidationFailed("cursor: not a cursor of this listing") from None
    if submitted_at.tzinfo is not None or not _UUID.match(query_id):
        raise ValidationFailed("cursor: not a cursor of this listing")
    if check != _check(at, query_id, filters):
        raise ValidationFailed(
            "cursor: altered, or made for other filters (follow `next` as it is given)"
        )
    return submitted_at, query_id

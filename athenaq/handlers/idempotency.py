"""The Idempotency-Key header of `POST /query`: read, checked, and tied to its request."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from tornado.httputil import HTTPHeaders

from athenaq.errors import ValidationFailed
from athenaq.schemas import IDEMPOTENCY_HEADER, IDEMPOTENCY_KEY, MAX_IDEMPOTENCY_KEY_CHARS
from athenaq.states import Idempotency


def parse_idempotency_key(headers: HTTPHeaders, request: Mapping[str, Any]) -> Idempotency | None:
    """The request's Idempotency-Key with the hash of `request` (its body as the schema
    loaded it); None without the header. ValidationFailed, naming the header, for a key
    that is empty, over 255 characters, not printable ASCII, or given twice."""
    values = headers.get_list(IDEMPOTENCY_HEADER)
    if not values:
        return None
    if len(values) > 1:
        raise ValidationFailed(f"{IDEMPOTENCY_HEADER}: given more than once")
    if not IDEMPOTENCY_KEY.fullmatch(values[0]):
        raise ValidationFailed(
            f"{IDEMPOTENCY_HEADER}: must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII "
            "characters"
        )
    return Idempotency(values[0], request_hash(request))


def request_hash(request: Mapping[str, Any]) -> str:
    """SHA-256 of the request as parsed, in one canonical JSON form: two bodies that
    differ only in spacing, key order or escapes are the same request."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()

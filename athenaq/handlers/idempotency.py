"""The Idempotency-Key header of `POST /query`: read, checked, and tied to its request."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from tornado.httputil import HTTPHeaders

from athenaq.errors import ValidationFailed
from athenaq.states import Idempotency

HEADER = "Idempotency-Key"
# The header of an answer that is a key's first answer again.
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_CHARS = 255
# Printable ASCII, the space included (HTTP takes none at either end of a value).
_KEY = re.compile(rf"[\x20-\x7e]{{1,{MAX_KEY_CHARS}}}")


def parse_idempotency_key(headers: HTTPHeaders, request: Mapping[str, Any]) -> Idempotency | None:
    """The request's Idempotency-Key with the hash of `request` (its body as the schema
    loaded it); None without the header. ValidationFailed, naming the header, for a key
    that is empty, over 255 characters, not printable ASCII, or given twice."""
    values = headers.get_list(HEADER)
    if not values:
        return None
    if len(values) > 1:
        raise ValidationFailed(f"{HEADER}: given more than once")
    if not _KEY.fullmatch(values[0]):
        raise ValidationFailed(f"{HEADER}: must be 1 to {MAX_KEY_CHARS} printable ASCII characters")
    return Idempotency(values[0], request_hash(request))


def request_hash(request: Mapping[str, Any]) -> str:
    """SHA-256 of the request as parsed, in one canonical JSON form: two bodies that
    differ only in spacing, key order or escapes are the same request."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()

"""Who calls: API keys, their scopes and limits, and the caller a request acts as.

A key is `aq_` and 43 URL-safe characters (256 random bits). The store keeps only its
SHA-256: a fast hash is the right one for a secret of this entropy (a slow one guards
guessable passwords), and it lets a request find its key by an indexed lookup.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

KEY_PREFIX = "aq_"
# 32 bytes: 256 random bits.
KEY_BYTES = 32

SUBMIT = "query:submit"
READ = "query:read"
CANCEL = "query:cancel"
METRICS = "metrics"
ADMIN = "admin"
SCOPES = (SUBMIT, READ, CANCEL, METRICS, ADMIN)
# A key made without --scope.
DEFAULT_SCOPES = frozenset({SUBMIT, READ, CANCEL})

# Who caused a transition besides a key: the service acting on what Athena reported.
POLLER = "poller"
TIMEOUT = "timeout"
ANONYMOUS = "anonymous"
# A key's name is its owner name in queries and in `by`: these mean something else.
RESERVED_NAMES = frozenset({ANONYMOUS, POLLER, TIMEOUT})
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def new_key() -> str:
    """A fresh API key, to be shown once."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def key_hash(key: str) -> str:
    """The hex SHA-256 the store keeps of a key."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Caller:
    """The identity a request acts as, and what it may do.

    None in `databases`, `workgroups` or `statements` means any; None in a limit, none."""

    name: str
    scopes: frozenset[str]
    databases: frozenset[str] | None = None
    workgroups: frozenset[str] | None = None
    statements: frozenset[str] | None = None
    max_running: int | None = None
    daily_scan_bytes: int | None = None

    @property
    def sees_all(self) -> bool:
        """An admin reads and acts on every owner's queries."""
        return ADMIN in self.scopes

    def owns(self, owner: str) -> bool:
        return self.sees_all or owner == self.name


@dataclass(frozen=True)
class ApiKey:
    """A key as stored: never the key itself, only its hash."""

    caller: Caller
    key_hash: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def name(self) -> str:
        return self.caller.name


def anonymous(statements: frozenset[str] | None) -> Caller:
    """Everyone, when keys are off: every scope, no limits, the config's statement kinds."""
    return Caller(ANONYMOUS, frozenset(SCOPES), statements=statements)

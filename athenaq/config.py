"""The service's configuration: one JSON file, validated once at start."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from athenaq.names import validate_catalog, validate_database, validate_workgroup
from athenaq.statements import KNOWN_KINDS
from athenaq.states import DEFAULT_CATALOG


class ConfigError(Exception):
    """The config file cannot be used; the message names the key at fault."""


# The largest request body read (bytes): a submit's JSON, whose `query` Athena caps at
# 262,144 bytes; larger bodies answer 413.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class TlsConfig:
    """The server's certificate (its chain first) and private key, PEM files."""

    cert_file: str
    key_file: str


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # Seconds a connection may take to send a request's headers, and stay idle between
    # requests; a drip-fed connection is closed after it.
    idle_connection_timeout: float = 60.0
    # Seconds a request's body may take to arrive in full.
    body_timeout: float = 30.0
    # Open connections at once; past it a new one is answered 503 and closed.
    max_connections: int = 512
    # Requests handled at once; past it a new one is answered 503 before it is read.
    max_inflight_requests: int = 256
    # Seconds a shutdown waits for requests in flight before closing their connections.
    drain_seconds: float = 10.0
    # Origins a browser may call the API from (CORS); empty: none, no CORS headers.
    cors_origins: tuple[str, ...] = ()
    tls: TlsConfig | None = None


@dataclass(frozen=True)
class DatabaseConfig:
    url: str
    pool_size: int = 10
    # False: the server refuses a database whose schema is behind, for fleets that run
    # `athenaq migrate` once and then roll their processes.
    migrate_on_start: bool = True
    # The longest one store call of a request may take, a connection's making or a wait
    # for a free one included; past it the request answers 503 store_unavailable.
    timeout_seconds: float = 1.5


@dataclass(frozen=True)
class AthenaConfig:
    region: str
    database: str
    workgroup: str
    output_location: str
    endpoint_url: str | None
    # The longest one Athena or S3 call may take, its retries included (a result
    # object's body: the longest wait for its next bytes).
    call_timeout_seconds: float = 10.0
    # The longest a cancel waits for Athena to take its stop and confirm it; past it the
    # cancel answers 202 (requested) and the poller sends the stop again until it holds.
    cancel_wait_seconds: float = 2.0
    # Executions athenaq has running in Athena at once, across every process sharing the
    # store; beyond it queries wait QUEUED for a slot, in a fair order across owners.
    max_running: int = 20
    # The catalog of a query that names none.
    catalog: str = DEFAULT_CATALOG
    # Athena's price per terabyte scanned (statistics.cost_usd).
    price_per_tb_usd: float = 5.0


@dataclass(frozen=True)
class S3Config:
    endpoint_url: str | None


@dataclass(frozen=True)
class ResultsConfig:
    dir: str
    # How long a result that cannot be written (a full or unwritable disk) is tried
    # again, from its first failure, before its query is FAILED.
    store_retry_minutes: float = 60.0
    # A result whose first GetQueryResults page of this many rows (its header row
    # included) holds it whole is stored from that page alone; 0: always from S3.
    first_page_rows: int = 100
    # Days a result is kept after it was stored; then the service removes its files.
    # None: kept until a refresh replaces it.
    retention_days: float | None = None


@dataclass(frozen=True)
class PollerConfig:
    interval_seconds: float
    # Athena calls a tick makes at once, results stored at once, and among them large
    # results (those their first page does not hold) downloaded at once.
    max_concurrent_calls: int = 10
    max_concurrent_stores: int = 32
    max_concurrent_downloads: int = 4
    # How long a process's hold on the queries it polls lasts without renewal (renewed
    # once half spent): after that, another process takes over the queries of one that
    # died.
    lease_seconds: float = 30.0


AUTH_MODES = ("none", "api_keys")


@dataclass(frozen=True)
class AuthConfig:
    # "none": everyone is "anonymous" with every scope; "api_keys": Bearer keys.
    mode: str = "none"
    # Requests per second per key (a token bucket, burst twice that); None: no limit.
    requests_per_second: float | None = None


@dataclass(frozen=True)
class SqlConfig:
    # The statement kinds of a key made without --statements, and of "anonymous" when
    # keys are off; None: any kind, unparsed, as Athena takes it.
    default_statements: frozenset[str] | None = None


@dataclass(frozen=True)
class WebhooksConfig:
    # The hosts a submit's callback_url may name (lower case; IP addresses in their
    # compressed form); empty: no callback_url is taken.
    allowed_hosts: tuple[str, ...] = ()
    # The key of the deliveries' HMAC-SHA256 signatures; required with allowed_hosts.
    secret: str | None = field(default=None, repr=False)
    # How long a delivery is tried again, from the state it reports.
    retry_hours: float = 24.0
    # The longest one attempt may take, from connecting to the answer's status line.
    timeout_seconds: float = 10.0
    # The wait after a delivery's first failed attempt; each later failure doubles it, up
    # to an hour (webhooks.MAX_RETRY_SECONDS), with jitter.
    first_retry_seconds: float = 10.0
    # Deliveries a process sends at once.
    max_concurrent: int = 10


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    database: DatabaseConfig
    athena: AthenaConfig
    s3: S3Config
    results: ResultsConfig
    poller: PollerConfig
    auth: AuthConfig = AuthConfig()
    sql: SqlConfig = SqlConfig()
    webhooks: WebhooksConfig = WebhooksConfig()


EMBEDDED = "embedded"


def _url(schemes: tuple[str, ...], *words: str) -> Callable[[str], None]:
    def check(value: str) -> None:
        if value not in words and urlsplit(value).scheme not in schemes:
            allowed = " or ".join(
                [f"{scheme}://" for scheme in schemes] + [f'"{w}"' for w in words]
            )
            raise ValidationError(f"must be {allowed}")

    return check


class _Section(Schema):
    """A config section: unknown keys are errors; it loads into a frozen dataclass."""

    loads_into: ClassVar[type]

    class Meta:
        unknown = RAISE

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Any:
        return self.loads_into(**data)


def _origin(value: str) -> None:
    parts = urlsplit(value)
    if (
        parts.scheme not in ("http", "https")
        or not parts.netloc
        or value != f"{parts.scheme}://{parts.netloc}"
    ):
        raise ValidationError("must be an origin: http(s)://host[:port], no path or slash")


class TlsSchema(_Section):
    cert_file = fields.String(required=True, validate=validate.Length(min=1))
    key_file = fields.String(required=True, validate=validate.Length(min=1))

    @validates_schema
    def usable(self, data: dict[str, Any], **_: Any) -> None:
        """Fail at start, naming the file, rather than at the first TLS handshake."""
        for key in ("cert_file", "key_file"):
            try:
                with open(data[key], "rb"):
                    pass
            except OSError as exc:
                raise ValidationError(f"cannot read {data[key]}: {exc.strerror}", key) from None
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                data["cert_file"], data["key_file"]
            )
        except (ssl.SSLError, ValueError) as exc:
            raise ValidationError(
                f"{data['cert_file']} and {data['key_file']} are not a PEM certificate "
                f"and its private key: {exc}"
            ) from None

    loads_into = TlsConfig


class _Duration(fields.Float):
    """A duration as a JSON number (`30` or `2.5`) of `unit`, never a string or a boolean."""

    unit: ClassVar[str]

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError(f"must be a number of {self.unit}")
        result: float = super()._deserialize(value, attr, data, **kwargs)
        return result


class _Seconds(_Duration):
    unit = "seconds"


class _Minutes(_Duration):
    unit = "minutes"


class _Hours(_Duration):
    unit = "hours"


class _Days(_Duration):
    unit = "days"


class _Dollars(_Duration):
    unit = "US dollars"


class ServerSchema(_Section):
    host = fields.String(required=True, validate=validate.Length(min=1))
    port = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=65535))
    max_body_bytes = fields.Integer(
        strict=True,
        load_default=DEFAULT_MAX_BODY_BYTES,
        validate=validate.Range(min=64 * 1024, max=64 * 1024 * 1024),
    )
    idle_connection_timeout = _Seconds(
        load_default=ServerConfig.idle_connection_timeout,
        validate=validate.Range(min=0.01, max=86400),
    )
    body_timeout = _Seconds(
        load_default=ServerConfig.body_timeout, validate=validate.Range(min=0.01, max=86400)
    )
    max_connections = fields.Integer(
        strict=True,
        load_default=ServerConfig.max_connections,
        validate=validate.Range(min=1, max=1_000_000),
    )
    max_inflight_requests = fields.Integer(
        strict=True,
        load_default=ServerConfig.max_inflight_requests,
        validate=validate.Range(min=1, max=1_000_000),
    )
    drain_seconds = _Seconds(
        load_default=ServerConfig.drain_seconds, validate=validate.Range(min=0, max=3600)
    )
    cors_origins = fields.List(
        fields.String(validate=_origin), load_default=list(ServerConfig.cors_origins)
    )
    tls = fields.Nested(TlsSchema, load_default=None, allow_none=True)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Any:
        return ServerConfig(**{**data, "cors_origins": tuple(data["cors_origins"])})

    loads_into = ServerConfig


class DatabaseSchema(_Section):
    url = fields.String(required=True, validate=_url(("mysql", "sqlite")))
    # MySQL/MariaDB connections per process; SQLite always has one.
    pool_size = fields.Integer(
        load_default=DatabaseConfig.pool_size, strict=True, validate=validate.Range(min=1, max=1000)
    )
    migrate_on_start = fields.Boolean(
        load_default=DatabaseConfig.migrate_on_start, truthy={True}, falsy={False}
    )
    timeout_seconds = fields.Float(
        load_default=DatabaseConfig.timeout_seconds, validate=validate.Range(min=0.1, max=60)
    )

    loads_into = DatabaseConfig


class AthenaSchema(_Section):
    region = fields.String(required=True, validate=validate.Length(min=1))
    database = fields.String(required=True, validate=validate_database)
    workgroup = fields.String(required=True, validate=validate_workgroup)
    output_location = fields.String(required=True, validate=_url(("s3",)))
    # "embedded": the service runs the local engine (athenaq-local) in its own process.
    endpoint_url = fields.String(
        required=True, allow_none=True, validate=_url(("http", "https"), EMBEDDED)
    )
    call_timeout_seconds = fields.Float(
        load_default=AthenaConfig.call_timeout_seconds, validate=validate.Range(min=0.1, max=600)
    )
    cancel_wait_seconds = _Seconds(
        load_default=AthenaConfig.cancel_wait_seconds, validate=validate.Range(min=0.1, max=600)
    )
    max_running = fields.Integer(
        strict=True,
        load_default=AthenaConfig.max_running,
        validate=validate.Range(min=1, max=1_000_000),
    )
    catalog = fields.String(load_default=AthenaConfig.catalog, validate=validate_catalog)
    price_per_tb_usd = _Dollars(
        load_default=AthenaConfig.price_per_tb_usd,
        validate=validate.Range(min=0, max=1_000_000),
    )

    loads_into = AthenaConfig


class S3Schema(_Section):
    endpoint_url = fields.String(required=True, allow_none=True, validate=_url(("http", "https")))

    loads_into = S3Config


class ResultsSchema(_Section):
    dir = fields.String(required=True, validate=validate.Length(min=1))
    # Fractions of a minute too: tests, and operators who would rather fail fast.
    store_retry_minutes = _Minutes(
        load_default=ResultsConfig.store_retry_minutes,
        validate=validate.Range(min=0, max=7 * 24 * 60),
    )
    # GetQueryResults' MaxResults is 1 to 1000.
    first_page_rows = fields.Integer(
        strict=True,
        load_default=ResultsConfig.first_page_rows,
        validate=validate.Range(min=0, max=1000),
    )
    # Fractions of a day too (tests, and short-lived results); at most about a century.
    retention_days = _Days(
        load_default=None,
        allow_none=True,
        validate=validate.Range(min=0, min_inclusive=False, max=36_500),
    )

    loads_into = ResultsConfig


class PollerSchema(_Section):
    interval_seconds = fields.Float(required=True, validate=validate.Range(min=0.01, max=3600))
    max_concurrent_calls = fields.Integer(
        strict=True, load_default=10, validate=validate.Range(min=1, max=100)
    )
    max_concurrent_stores = fields.Integer(
        strict=True, load_default=32, validate=validate.Range(min=1, max=256)
    )
    max_concurrent_downloads = fields.Integer(
        strict=True, load_default=4, validate=validate.Range(min=1, max=64)
    )
    # Not given: 30 s, or 3 intervals when that is longer.
    lease_seconds = fields.Float(validate=validate.Range(min=0.1, max=3 * 3600))

    @validates_schema
    def lease_outlasts_ticks(self, data: dict[str, Any], **_: Any) -> None:
        # A lease that ended between two ticks of a live process would let another take
        # its queries over while it still polls them.
        interval, lease = data.get("interval_seconds"), data.get("lease_seconds")
        if interval is not None and lease is not None and lease < 3 * interval:
            raise ValidationError(
                "must be at least 3 times poller.interval_seconds", "lease_seconds"
            )

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Any:
        if "lease_seconds" not in data:
            data["lease_seconds"] = max(PollerConfig.lease_seconds, 3 * data["interval_seconds"])
        return self.loads_into(**data)

    loads_into = PollerConfig


class AuthSchema(_Section):
    mode = fields.String(
        load_default=AuthConfig.mode,
        validate=validate.OneOf(AUTH_MODES, error="must be one of: {choices}"),
    )
    requests_per_second = fields.Float(
        load_default=None, allow_none=True, validate=validate.Range(min=0.01, max=1_000_000)
    )

    loads_into = AuthConfig


class StatementKinds(fields.List[str]):
    """A list of statement kinds, loaded as a frozenset."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        return frozenset(super()._deserialize(value, attr, data, **kwargs))


class SqlSchema(_Section):
    default_statements = StatementKinds(
        fields.String(
            validate=validate.OneOf(sorted(KNOWN_KINDS), error="must be one of: {choices}")
        ),
        load_default=None,
        allow_none=True,
    )

    loads_into = SqlConfig


_HOST_NAME = re.compile(
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)


def host_key(host: str) -> str | None:
    """`host` as webhooks.allowed_hosts keeps it (lower case; an IP address compressed),
    None when it is neither a host name nor an IP address. A callback URL's host is
    compared in this form."""
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        pass
    name = host.lower()
    return name if len(name) <= 253 and _HOST_NAME.fullmatch(name) else None


class AllowedHost(fields.String):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        host = host_key(super()._deserialize(value, attr, data, **kwargs))
        if host is None:
            raise ValidationError(
                "must be a host name or an IP address, without scheme, port or path"
            )
        return host


# A signing key shorter than this is too easy to guess.
MIN_SECRET_CHARACTERS = 16


class Secret(fields.Field[str]):
    """A secret, written in the file or, as `{"env": "NAME"}`, read from the environment
    variable NAME when the config is loaded."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, dict) and set(value) == {"env"} and isinstance(value["env"], str):
            name = value["env"]
            if name not in os.environ:
                raise ValidationError(f"the environment variable {name} is not set")
            secret = os.environ[name]
        elif isinstance(value, str):
            secret = value
        else:
            raise ValidationError('must be a string or {"env": "NAME"}')
        if len(secret) < MIN_SECRET_CHARACTERS:
            raise ValidationError(f"must be at least {MIN_SECRET_CHARACTERS} characters")
        return secret


class WebhooksSchema(_Section):
    allowed_hosts = fields.List(AllowedHost(), load_default=list)
    secret = Secret(load_default=None, allow_none=True)
    retry_hours = _Hours(
        load_default=WebhooksConfig.retry_hours, validate=validate.Range(min=0, max=30 * 24)
    )
    timeout_seconds = _Seconds(
        load_default=WebhooksConfig.timeout_seconds, validate=validate.Range(min=0.1, max=600)
    )
    first_retry_seconds = _Seconds(
        load_default=WebhooksConfig.first_retry_seconds,
        validate=validate.Range(min=0.01, max=86400),
    )
    max_concurrent = fields.Integer(
        strict=True,
        load_default=WebhooksConfig.max_concurrent,
        validate=validate.Range(min=1, max=1000),
    )

    @validates_schema
    def signed(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("allowed_hosts") and data.get("secret") is None:
            raise ValidationError(
                "required when webhooks.allowed_hosts names hosts: deliveries are signed with it",
                "secret",
            )

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Any:
        hosts = tuple(dict.fromkeys(data["allowed_hosts"]))  # in order, once each
        return WebhooksConfig(**{**data, "allowed_hosts": hosts})

    loads_into = WebhooksConfig


class ConfigSchema(_Section):
    server = fields.Nested(ServerSchema, required=True)
    database = fields.Nested(DatabaseSchema, required=True)
    athena = fields.Nested(AthenaSchema, required=True)
    s3 = fields.Nested(S3Schema, required=True)
    results = fields.Nested(ResultsSchema, required=True)
    poller = fields.Nested(PollerSchema, required=True)
    auth = fields.Nested(AuthSchema, load_default=AuthConfig())
    sql = fields.Nested(SqlSchema, load_default=SqlConfig())
    webhooks = fields.Nested(WebhooksSchema, load_default=WebhooksConfig())

    loads_into = Config


def _first_error(messages: Any, path: str = "") -> str:
    """Flatten marshmallow's nested messages to `key.path: message` for the first error."""
    if isinstance(messages, dict):
        key, value = next(iter(messages.items()))
        if key == "_schema":
            return _first_error(value, path)
        return _first_error(value, f"{path}.{key}" if path else str(key))
    if isinstance(messages, list) and messages:
        return _first_error(messages[0], path)
    return f"{path or 'config'}: {messages}"


def parse_config(data: Any) -> Config:
    """Validate an already-decoded config document."""
    try:
        config: Config = ConfigSchema().load(data)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc.messages)) from None
    return config


def load_config(path: str | Path) -> Config:
    """Read and validate the config file; ConfigError names the key or the file at fault."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from None
    return parse_config(data)

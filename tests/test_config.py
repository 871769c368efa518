"""The config file's optional keys: their defaults (a v1 file still starts), their checks,
and their effect on a running service."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from athenaq.app import Service
from athenaq.config import (
    AuthConfig,
    Config,
    ConfigError,
    SqlConfig,
    WebhooksConfig,
    parse_config,
)
from tests.conftest import V1_CONFIG, Client, body, config_with


def test_a_v1_file_gets_the_defaults() -> None:
    config = parse_config(V1_CONFIG)
    assert config.server.max_body_bytes == 1024 * 1024
    assert config.server.idle_connection_timeout == 60.0
    assert config.server.body_timeout == 30.0
    assert config.server.max_connections == 512
    assert config.server.drain_seconds == 10.0
    assert config.server.cors_origins == ()
    assert config.server.tls is None
    assert config.poller.max_concurrent_calls == 10
    assert config.poller.max_concurrent_downloads == 4
    assert config.poller.max_concurrent_stores == 32
    assert config.results.store_retry_minutes == 60.0
    assert config.results.retention_days is None
    assert config.athena.cancel_wait_seconds == 2.0


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("server", "max_body_bytes", 1024),
        ("server", "max_body_bytes", "1MiB"),
        ("server", "idle_connection_timeout", 0),
        ("server", "idle_connection_timeout", "60"),
        ("server", "body_timeout", -1),
        ("server", "max_connections", 0),
        ("server", "max_connections", 10.5),
        ("server", "drain_seconds", -1),
        ("server", "drain_seconds", True),
        ("server", "cors_origins", "https://app.example"),
        ("server", "cors_origins.0", "*"),
        ("server", "cors_origins.0", "https://app.example/"),
        ("server", "cors_origins.0", "https://app.example/path"),
        ("server", "cors_origins.0", "ftp://app.example"),
        ("server", "cors", []),
        ("poller", "max_concurrent_calls", 0),
        ("poller", "max_concurrent_calls", 1.5),
        ("poller", "max_concurrent_downloads", 65),
        ("poller", "max_concurrent_stores", 0),
        ("poller", "max_concurrent_stores", 257),
        ("athena", "cancel_wait_seconds", 0),
        ("athena", "cancel_wait_seconds", "2"),
        ("results", "store_retry_minutes", -1),
        ("results", "store_retry_minutes", "60"),
        ("results", "store_retry_minutes", True),
        ("results", "store_retry_minutes", None),
        ("results", "store_retry_minutes", 7 * 24 * 60 + 1),
        ("results", "retention_days", 0),
        ("results", "retention_days", -1),
        ("results", "retention_days", "30"),
        ("results", "retention_days", True),
        ("results", "retention_days", 36_501),
    ],
)
def test_a_bad_optional_key_is_named(section: str, key: str, value: Any) -> None:
    document = (
        config_with(f"{section}.cors_origins", [value])
        if key == "cors_origins.0"
        else config_with(f"{section}.{key}", value)
    )
    with pytest.raises(ConfigError, match=rf"^{section}\.{key}: "):
        parse_config(document)


def test_the_retention_takes_days() -> None:
    config = parse_config(config_with("results.retention_days", 0.5))
    assert config.results.retention_days == 0.5
    assert parse_config(config_with("results.retention_days", None)).results.retention_days is None


def test_a_v1_file_has_keys_off_and_any_statement_kind() -> None:
    config = parse_config(V1_CONFIG)
    assert config.auth == AuthConfig(mode="none", requests_per_second=None)
    assert config.sql == SqlConfig(default_statements=None)
    keyed = parse_config(
        {
            **V1_CONFIG,
            "auth": {"mode": "api_keys", "requests_per_second": 2.5},
            "sql": {"default_statements": ["SELECT", "WITH", "SELECT"]},
        }
    )
    assert keyed.auth == AuthConfig(mode="api_keys", requests_per_second=2.5)
    assert keyed.sql.default_statements == frozenset({"SELECT", "WITH"})


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("auth", {"mode": "keys"}, "auth.mode: must be one of: none, api_keys"),
        ("auth", {"requests_per_second": 0}, "auth.requests_per_second: Must be greater"),
        ("auth", {"mode": "api_keys", "keys": []}, "auth.keys: Unknown field."),
        ("sql", {"default_statements": ["SELECT", "DROPP"]}, "sql.default_statements.1: must"),
        ("sql", {"default_statements": "SELECT"}, "sql.default_statements: Not a valid list."),
    ],
)
def test_a_bad_auth_or_sql_key_is_named(section: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({**V1_CONFIG, section: value})
    assert str(raised.value).startswith(message)


def test_a_v1_file_gets_the_athena_and_webhooks_defaults() -> None:
    config = parse_config(V1_CONFIG)
    assert (config.athena.catalog, config.athena.price_per_tb_usd) == ("AwsDataCatalog", 5.0)
    assert config.webhooks == WebhooksConfig(allowed_hosts=(), secret=None)
    assert config.webhooks.retry_hours == 24.0
    webhooks = config.webhooks
    assert (webhooks.timeout_seconds, webhooks.first_retry_seconds) == (10.0, 10.0)
    assert webhooks.max_concurrent == 10


def test_the_webhooks_and_athena_keys_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATHENAQ_TEST_WEBHOOK_SECRET", "from the environment, long enough")
    webhooks = {
        "allowed_hosts": ["Hooks.Example.COM", "10.0.0.7", "::1", "localhost"],
        "secret": {"env": "ATHENAQ_TEST_WEBHOOK_SECRET"},
        "retry_hours": 0.5,
        "timeout_seconds": 2.5,
        "first_retry_seconds": 0.25,
        "max_concurrent": 3,
    }
    athena = {**V1_CONFIG["athena"], "catalog": "lakehouse", "price_per_tb_usd": 6.25}
    config = parse_config({**V1_CONFIG, "webhooks": webhooks, "athena": athena})
    assert config.webhooks.allowed_hosts == ("hooks.example.com", "10.0.0.7", "::1", "localhost")
    assert config.webhooks.secret == "from the environment, long enough"
    assert config.webhooks.retry_hours == 0.5
    assert (config.webhooks.timeout_seconds, config.webhooks.first_retry_seconds) == (2.5, 0.25)
    assert config.webhooks.max_concurrent == 3
    assert "from the environment" not in repr(config)
    assert (config.athena.catalog, config.athena.price_per_tb_usd) == ("lakehouse", 6.25)
    written = {**webhooks, "secret": "written in the file itself"}
    assert parse_config({**V1_CONFIG, "webhooks": written}).webhooks.secret == written["secret"]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("athena.catalog", "", "athena.catalog: must be 1 to 256 characters"),
        ("athena.catalog", "c" * 257, "athena.catalog: must be 1 to 256 characters"),
        ("athena.catalog", "a\nb", "athena.catalog: must be 1 to 256 characters"),
        ("athena.database", "d" * 256, "athena.database: must be 1 to 255 characters"),
        ("athena.price_per_tb_usd", -1, "athena.price_per_tb_usd: Must be greater"),
        ("athena.price_per_tb_usd", "5", "athena.price_per_tb_usd: must be a number of US"),
        ("webhooks.allowed_hosts", "a.example", "webhooks.allowed_hosts: Not a valid list."),
        (
            "webhooks.allowed_hosts",
            ["https://a.example"],
            "webhooks.allowed_hosts.0: must be a host name or an IP address",
        ),
        (
            "webhooks.allowed_hosts",
            ["a.example:8443"],
            "webhooks.allowed_hosts.0: must be a host name or an IP address",
        ),
        (
            "webhooks.allowed_hosts",
            ["a.example"],
            "webhooks.secret: required when webhooks.allowed_hosts names hosts",
        ),
        ("webhooks.secret", "short", "webhooks.secret: must be at least 16 characters"),
        ("webhooks.secret", 12345, 'webhooks.secret: must be a string or {"env": "NAME"}'),
        ("webhooks.secret", {"file": "x"}, 'webhooks.secret: must be a string or {"env": "NAME"}'),
        (
            "webhooks.secret",
            {"env": "ATHENAQ_TEST_NO_SUCH_VARIABLE"},
            "webhooks.secret: the environment variable ATHENAQ_TEST_NO_SUCH_VARIABLE is not set",
        ),
        ("webhooks.retry_hours", -1, "webhooks.retry_hours: Must be greater"),
        ("webhooks.retry_hours", 721, "webhooks.retry_hours: Must be greater"),
        ("webhooks.retry_hours", "24", "webhooks.retry_hours: must be a number of hours"),
        ("webhooks.timeout_seconds", 0, "webhooks.timeout_seconds: Must be greater"),
        ("webhooks.timeout_seconds", "10", "webhooks.timeout_seconds: must be a number of"),
        ("webhooks.first_retry_seconds", 0, "webhooks.first_retry_seconds: Must be greater"),
        ("webhooks.max_concurrent", 0, "webhooks.max_concurrent: Must be greater"),
        ("webhooks.max_concurrent", 2.0, "webhooks.max_concurrent: Not a valid integer."),
        ("webhooks.url", "https://a.example", "webhooks.url: Unknown field."),
    ],
)
def test_a_bad_athena_or_webhooks_key_is_named(path: str, value: Any, message: str) -> None:
    document = config_with(path, value) if path.startswith("athena") else dict(V1_CONFIG)
    if path.startswith("webhooks"):
        document["webhooks"] = {path.split(".")[1]: value}
    with pytest.raises(ConfigError) as raised:
        parse_config(document)
    assert str(raised.value).startswith(message), str(raised.value)


def test_a_lease_shorter_than_three_ticks_is_refused() -> None:
    document = config_with("poller.lease_seconds", 2.9)
    with pytest.raises(ConfigError, match=r"^poller.lease_seconds: must be at least 3 times"):
        parse_config(document)  # interval_seconds is 1.0
    assert parse_config(config_with("poller.lease_seconds", 3.0)).poller.lease_seconds == 3.0
    assert parse_config(V1_CONFIG).poller.lease_seconds == 30.0
    # Not given: three intervals when that is longer than 30 s.
    assert parse_config(config_with("poller.interval_seconds", 60)).poller.lease_seconds == 180


def test_the_optional_keys_are_read() -> None:
    config = parse_config(config_with("poller.max_concurrent_downloads", 2))
    assert config.poller.max_concurrent_downloads == 2
    config = parse_config(config_with("poller.max_concurrent_stores", 8))
    assert config.poller.max_concurrent_stores == 8
    # Fractions of a minute are taken, 0 too (fail at the first write that fails).
    for minutes in (0.01, 0):
        config = parse_config(config_with("results.store_retry_minutes", minutes))
        assert config.results.store_retry_minutes == minutes
    server = {
        **V1_CONFIG["server"],
        "idle_connection_timeout": 5,
        "body_timeout": 2.5,
        "max_connections": 100,
        "drain_seconds": 0,
        "cors_origins": ["https://app.example", "http://localhost:3000"],
    }
    config = parse_config({**V1_CONFIG, "server": server})
    assert config.server.idle_connection_timeout == 5.0
    assert config.server.body_timeout == 2.5
    assert config.server.max_connections == 100
    assert config.server.drain_seconds == 0.0
    assert config.server.cors_origins == ("https://app.example", "http://localhost:3000")


async def test_the_body_limit_is_the_configured_one(
    config: Config, start_service: Callable[[Config], Awaitable[Service]]
) -> None:
    limit = 64 * 1024
    service = await start_service(
        replace(config, server=replace(config.server, max_body_bytes=limit))
    )
    client = Client(service.url)
    headers = {"Content-Type": "application/json"}
    over = json.dumps({"query": "SELECT 1 -- " + "x" * limit}).encode()
    response = await client.request("POST", "/query", raw=over, headers=headers)
    assert response.code == 413
    assert body(response)["error"] == {
        "code": "payload_too_large",
        "message": f"the body is over {limit} bytes",
    }
    under = json.dumps({"query": "SELECT 1 -- " + "x" * (limit - 100)}).encode()
    response = await client.request("POST", "/query", raw=under, headers=headers)
    assert response.code == 202, response.body

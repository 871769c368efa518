"""GET /openapi.json: the document describes what the server routes, no more and no less,
and is valid OpenAPI 3.1."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from openapi_spec_validator import OpenAPIV31SpecValidator
from tornado.routing import PathMatches, Rule

from athenaq.app import Service
from athenaq.config import Config
from athenaq.errors import ApiError
from athenaq.handlers.base import BaseHandler
from athenaq.openapi import BEARER, document, error_codes
from tests.conftest import Client, body, with_keys

_TEMPLATE = re.compile(r"\{[^}]+\}")


def _rules(service: Service) -> list[tuple[re.Pattern[str], type[BaseHandler]]]:
    assert service.app is not None
    rules = []
    for rule in service.app.wildcard_router.rules:
        assert isinstance(rule, Rule) and isinstance(rule.matcher, PathMatches)
        rules.append((rule.matcher.regex, rule.target))
    return rules


def _served(path: str) -> str:
    """A path of the document with each parameter given a value the route takes."""
    return _TEMPLATE.sub(str(uuid.uuid4()), path)


async def _document(service: Service) -> dict[str, Any]:
    response = await Client(service.url).request("GET", "/openapi.json")
    assert response.code == 200, response.body
    assert response.headers["Content-Type"].startswith("application/json")
    served: dict[str, Any] = body(response)
    return served


async def test_every_route_is_documented_and_every_documented_path_is_served(
    config: Config, start_service: Callable[..., Awaitable[Service]]
) -> None:
    service = await start_service(config)
    paths = (await _document(service))["paths"]
    rules = _rules(service)
    assert len(rules) == len(paths), (sorted(paths), [regex.pattern for regex, _ in rules])
    for regex, handler in rules:
        documented = [path for path in paths if regex.fullmatch(_served(path))]
        assert len(documented) == 1, (regex.pattern, documented)
        operations = paths[documented[0]]
        methods = sorted(method.upper() for method in operations if method != "parameters")
        assert methods == sorted(handler.allowed_methods()), (documented[0], methods)
        for method, operation in operations.items():
            where = f"{method.upper()} {documented[0]}"
            if handler.allow_unauthenticated:
                assert operation["security"] == [], where
                assert "401" not in operation["responses"], where
            else:
                scopes = [handler.required_scope] if handler.required_scope else []
                assert operation["security"] == [{BEARER: scopes}], where
                assert "401" in operation["responses"], where
    for path in paths:
        matched = [handler for regex, handler in rules if regex.fullmatch(_served(path))]
        assert len(matched) == 1, (path, matched)


async def test_the_document_is_valid_openapi_3_1_without_a_key(
    config: Config, start_service: Callable[..., Awaitable[Service]]
) -> None:
    service = await start_service(with_keys(config))
    served = await _document(service)
    assert served["openapi"] == "3.1.0"
    OpenAPIV31SpecValidator(served).validate()
    assert served == document()
    # Made once per process: every request is served the same document.
    assert document() is document()


def test_the_error_envelope_lists_every_code() -> None:
    detail = document()["components"]["schemas"]["ErrorDetail"]
    codes = detail["properties"]["code"]["enum"]
    assert codes == error_codes()
    assert {"query_running", "store_unavailable", "bad_request", ApiError.code} <= set(codes)


def test_the_downloads_and_the_bearer_scheme_are_described() -> None:
    served = document()
    results = served["paths"]["/query/{query_id}/results"]["get"]["responses"]["200"]
    assert set(results["content"]) == {"application/json", "text/csv", "application/x-ndjson"}
    assert results["headers"]["Content-Encoding"]["schema"]["enum"] == ["gzip"]
    scheme = served["components"]["securitySchemes"][BEARER]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    submit = served["paths"]["/query"]["post"]["responses"]["202"]
    assert set(submit["links"]) == {
        "getStatus",
        "getResults",
        "getHistory",
        "cancelQuery",
        "refreshQuery",
    }

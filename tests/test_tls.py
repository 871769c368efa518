"""TLS from the config: `server.tls` names a certificate and its key; the service then
speaks HTTPS only, and a file it cannot use stops the start with one line naming it."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from athenaq.app import Service
from athenaq.config import Config, ConfigError, TlsConfig, parse_config
from tests.conftest import body, config_with


def self_signed(directory: Path, name: str = "server") -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, signed by its own key: (certificate file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "athenaq test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_the_service_speaks_https_with_the_configured_certificate(
    config: Config, start_service: Callable[[Config], Awaitable[Service]], tmp_path: Path
) -> None:
    cert_file, key_file = self_signed(tmp_path)
    tls = TlsConfig(cert_file=str(cert_file), key_file=str(key_file))
    service = await start_service(replace(config, server=replace(config.server, tls=tls)))
    assert service.url.startswith("https://127.0.0.1:")
    http = AsyncHTTPClient()

    response = await http.fetch(service.url + "/health", ca_certs=str(cert_file))
    assert body(response) == {"status": "ok"}
    assert response.headers["Server"] == "athenaq"
    missing = await http.fetch(service.url + "/nope", ca_certs=str(cert_file), raise_error=False)
    assert body(missing)["error"]["code"] == "not_found"

    # The client checks the certificate: one it does not trust is refused.
    with pytest.raises(ssl.SSLError):
        await http.fetch(service.url + "/health")
    # Plain HTTP on the TLS port gets no answer a client could take for the API's.
    plain = service.url.replace("https://", "http://")
    with pytest.raises((HTTPClientError, ConnectionError)):
        await http.fetch(plain + "/health", request_timeout=10)


def test_no_tls_by_default() -> None:
    assert parse_config(config_with("server.port", 8080)).server.tls is None
    assert parse_config(config_with("server.tls", None)).server.tls is None


def test_tls_files_are_read(tmp_path: Path) -> None:
    cert_file, key_file = self_signed(tmp_path)
    tls = {"cert_file": str(cert_file), "key_file": str(key_file)}
    assert parse_config(config_with("server.tls", tls)).server.tls == TlsConfig(**tls)


def bad_tls(tmp_path: Path) -> list[tuple[Any, str]]:
    cert_file, key_file = self_signed(tmp_path)
    _, other_key = self_signed(tmp_path, "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    missing = tmp_path / "missing.pem"
    return [
        (
            {"cert_file": str(missing), "key_file": str(key_file)},
            rf"^server\.tls\.cert_file: cannot read {missing}: No such file or directory$",
        ),
        (
            {"cert_file": str(cert_file), "key_file": str(missing)},
            rf"^server\.tls\.key_file: cannot read {missing}: No such file or directory$",
        ),
        (
            {"cert_file": str(tmp_path), "key_file": str(key_file)},
            rf"^server\.tls\.cert_file: cannot read {tmp_path}: Is a directory$",
        ),
        (
            {"cert_file": str(garbage), "key_file": str(key_file)},
            rf"^server\.tls: {garbage} and {key_file} are not a PEM certificate and its "
            "private key: ",
        ),
        (
            {"cert_file": str(cert_file), "key_file": str(other_key)},
            r"^server\.tls: .* are not a PEM certificate and its private key: ",
        ),
        ({"cert_file": str(cert_file)}, r"^server\.tls\.key_file: Missing data"),
        (
            {"cert_file": str(cert_file), "key_file": str(key_file), "ca_file": "x"},
            r"^server\.tls\.ca_file: Unknown field",
        ),
        ("cert.pem", r"^server\.tls: Invalid input type"),
    ]


def test_a_tls_file_that_cannot_be_used_is_named_in_one_line(tmp_path: Path) -> None:
    for tls, message in bad_tls(tmp_path):
        with pytest.raises(ConfigError, match=message) as raised:
            parse_config(config_with("server.tls", tls))
        assert "\n" not in str(raised.value)

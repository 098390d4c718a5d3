"""sources/tls.py: the server's own TLS layer (WSGI environ keys, socket, ASGI tls extension)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from mtls_middleware.certs import parse_chain
from mtls_middleware.sources.tls import from_asgi_scope, from_wsgi_environ
from mtls_middleware.testing import Issued, TestPKI


def pems(issued: Issued) -> list[str]:
    return [c.public_bytes(serialization.Encoding.PEM).decode() for c in issued.chain]


# -- WSGI environ keys ------------------------------------------------------------------------


def test_ssl_client_cert_and_chain_keys(alice: Issued, pki: TestPKI) -> None:
    leaf, intermediate = pems(alice)
    presented = from_wsgi_environ({"SSL_CLIENT_CERT": leaf, "SSL_CLIENT_CERT_CHAIN_0": intermediate})
    assert presented is not None
    assert presented.source == "tls:environ"
    assert presented.items == (leaf.encode(), intermediate.encode())
    assert parse_chain(presented.items).certificates == (alice.cert, pki.issuing.cert)


def test_chain_keys_stop_at_the_first_gap(alice: Issued) -> None:
    leaf, intermediate = pems(alice)
    presented = from_wsgi_environ(
        {"SSL_CLIENT_CERT": leaf, "SSL_CLIENT_CERT_CHAIN_0": "", "SSL_CLIENT_CERT_CHAIN_1": intermediate}
    )
    assert presented is not None
    assert presented.items == (leaf.encode(),)


def test_chain_keys_read_one_past_the_limit(alice: Issued) -> None:
    # Eleven chain keys plus the leaf: enough for the parse stage to say chain_too_long.
    leaf, intermediate = pems(alice)
    environ = {"SSL_CLIENT_CERT": leaf}
    environ.update({f"SSL_CLIENT_CERT_CHAIN_{i}": intermediate for i in range(20)})
    presented = from_wsgi_environ(environ)
    assert presented is not None
    assert len(presented.items) == 12


def test_uwsgi_https_client_certificate(alice: Issued) -> None:
    presented = from_wsgi_environ({"HTTPS_CLIENT_CERTIFICATE": alice.chain_pem.decode()})
    assert presented is not None
    assert presented.source == "tls:environ"
    assert parse_chain(presented.items).leaf == alice.cert


def test_bytes_values_are_accepted(alice: Issued) -> None:
    presented = from_wsgi_environ({"SSL_CLIENT_CERT": alice.cert_der})
    assert presented is not None
    assert parse_chain(presented.items).leaf == alice.cert


def test_the_key_identifies_the_presented_values(alice: Issued, bob: Issued) -> None:
    a1 = from_wsgi_environ({"SSL_CLIENT_CERT": pems(alice)[0]})
    a2 = from_wsgi_environ({"SSL_CLIENT_CERT": pems(alice)[0]})
    b = from_wsgi_environ({"SSL_CLIENT_CERT": pems(bob)[0]})
    assert a1 is not None
    assert a2 is not None
    assert b is not None
    assert a1.key == a2.key
    assert hash(a1.key) == hash(a2.key)
    assert a1.key != b.key


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"SSL_CLIENT_CERT": ""},
        {"HTTPS_CLIENT_CERTIFICATE": ""},
        {"SSL_CLIENT_CERT_CHAIN_0": "x"},  # a chain without a leaf is nothing
        {"HTTP_SSL_CLIENT_CERT": "x"},  # a request header, never the server's key
        {"werkzeug.socket": object()},
        {"gunicorn.socket": "not a socket"},
    ],
    ids=["empty", "empty-leaf", "empty-uwsgi", "chain-only", "header-lookalike", "odd-socket", "str-socket"],
)
def test_nothing_presented(environ: dict[str, Any]) -> None:
    assert from_wsgi_environ(environ) is None


# -- the connection's socket ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_context(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = pki.issue_server("localhost").write(directory, "server")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_OPTIONAL  # request, do not require, like our listener
    context.load_verify_locations(cadata=pki.root_pem.decode())
    return context


@contextmanager
def handshake(
    server_context: ssl.SSLContext, client: Issued | None, directory: Path
) -> Iterator[ssl.SSLSocket]:
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    if client is not None:
        cert, key = client.write(directory, "client")
        client_context.load_cert_chain(cert, key)
    left, right = socket.socketpair()
    left.settimeout(10)
    right.settimeout(10)
    server = server_context.wrap_socket(left, server_side=True, do_handshake_on_connect=False)
    other = client_context.wrap_socket(right, do_handshake_on_connect=False)
    errors: list[BaseException] = []

    def client_side() -> None:
        try:
            other.do_handshake()
            other.recv(1)  # lets TLS 1.3 deliver the client's flight, then waits for close
        except (OSError, ssl.SSLError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=client_side, daemon=True)
    thread.start()
    try:
        server.do_handshake()
        yield server
    finally:
        server.close()
        other.close()
        thread.join(10)


@pytest.mark.parametrize("key", ["werkzeug.socket", "gunicorn.socket"])
def test_peer_certificate_of_the_socket(
    key: str, server_context: ssl.SSLContext, alice: Issued, tmp_path: Path
) -> None:
    with handshake(server_context, alice, tmp_path) as server:
        presented = from_wsgi_environ({key: server})
        assert presented is not None
        assert presented.source == "tls:socket"
        assert presented.items[0] == alice.cert_der
        assert parse_chain(presented.items).leaf == alice.cert


def test_socket_without_a_client_certificate(server_context: ssl.SSLContext, tmp_path: Path) -> None:
    with handshake(server_context, None, tmp_path) as server:
        assert from_wsgi_environ({"werkzeug.socket": server}) is None


def test_environ_keys_win_over_the_socket(
    server_context: ssl.SSLContext, alice: Issued, bob: Issued, tmp_path: Path
) -> None:
    with handshake(server_context, alice, tmp_path) as server:
        presented = from_wsgi_environ({"werkzeug.socket": server, "SSL_CLIENT_CERT": pems(bob)[0]})
        assert presented is not None
        assert presented.source == "tls:environ"
        assert parse_chain(presented.items).leaf == bob.cert


# -- the ASGI tls extension -------------------------------------------------------------------


def scope_with(extensions: Any) -> dict[str, Any]:
    scope: dict[str, Any] = {"type": "http"}
    if extensions != "absent":
        scope["extensions"] = extensions
    return scope


@pytest.mark.parametrize(
    "extensions",
    [
        "absent",
        None,
        {},
        [],
        {"tls": None},
        {"tls": {}},
        {"tls": ["x"]},
        {"tls": {"client_cert_chain": None}},
        {"tls": {"client_cert_chain": []}},
        {"tls": {"client_cert_chain": ()}},
        {"tls": {"client_cert_chain": "-----BEGIN CERTIFICATE-----"}},
        {"tls": {"client_cert_chain": b"-----BEGIN CERTIFICATE-----"}},
        {"tls": {"client_cert_chain": {"leaf": "x"}}},
        {"tls": {"client_cert_chain": [None, 1, 2.5]}},
    ],
    ids=repr,
)
def test_asgi_extension_subsets_present_nothing(extensions: Any) -> None:
    assert from_asgi_scope(scope_with(extensions)) is None


def test_asgi_pem_strings(alice: Issued, pki: TestPKI) -> None:
    presented = from_asgi_scope(scope_with({"tls": {"client_cert_chain": pems(alice)}}))
    assert presented is not None
    assert presented.source == "tls:asgi"
    assert parse_chain(presented.items).certificates == (alice.cert, pki.issuing.cert)


def test_asgi_non_strings_are_skipped(alice: Issued) -> None:
    chain = [pems(alice)[0], None, 7, pems(alice)[1]]
    presented = from_asgi_scope(scope_with({"tls": {"client_cert_chain": chain}}))
    assert presented is not None
    assert len(presented.items) == 2


def test_asgi_chain_is_cut_one_past_the_limit(alice: Issued) -> None:
    chain = pems(alice) * 20
    presented = from_asgi_scope(scope_with({"tls": {"client_cert_chain": chain}}))
    assert presented is not None
    assert len(presented.items) == 11

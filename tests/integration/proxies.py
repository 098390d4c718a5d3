"""Real haproxy, Apache httpd and Caddy on loopback, in front of the middleware under gunicorn.

Each proxy runs as a subprocess of the tests with a configuration written into a temporary
directory (nothing of the system's own configuration is read), terminates TLS on a free port of
127.0.0.1 with the test PKI's server certificate, asks the client for a certificate and forwards it
in the headers of the proxy's profile. The configuration is generated from the profile's own header
names (:func:`mtls_middleware.sources.proxies.get_profile`), so a profile that renames a header is
tested under the new name, never under a name spelled here.

How the app tells the proxy's requests from the tests' own
---------------------------------------------------------
The app believes certificate headers only from its trusted proxies, and the spoof tests send
forged headers straight to gunicorn from 127.0.0.1 (the tests' address), which must be refused as
``untrusted_proxy``. So the proxy's upstream connections must come from a peer the tests' own
requests never come from:

* haproxy (``source 127.0.0.2`` on the server line) and Apache (``ProxySourceAddress 127.0.0.2``)
  bind their upstream connections to 127.0.0.2, as nginx does with ``proxy_bind``; the app trusts
  only ``127.0.0.2``, and gunicorn listens on 127.0.0.1 only.
* Caddy 2.6 cannot choose the source address of its upstream connections (``local_address`` came
  later), and on loopback Linux picks 127.0.0.1 whatever the destination, which would make the
  tests' address the trusted one. Caddy therefore reaches gunicorn over a UNIX socket
  (``reverse_proxy unix//...``) and the app trusts only ``"unix"``, while gunicorn also listens on
  127.0.0.1 over TCP for the tests' direct (untrusted) requests. This is the deployment to
  recommend where the proxy cannot bind a source address: the socket's file permissions decide
  who may speak as the proxy, and a TCP peer, whatever its address, never can.

What each proxy does with a certificate it cannot verify is set up so that the middleware gets to
judge wherever the proxy allows it: haproxy ``verify optional`` with ``ca-ignore-err all
crt-ignore-err all`` (every certificate is forwarded with OpenSSL's numeric verdict), Caddy
``client_auth { mode request }`` (asked for, never verified: TLS still proves the key), Apache
``SSLVerifyClient optional_no_ca`` (forgives only an unknown issuer; an expired certificate or a
wrong purpose ends the handshake, as mod_ssl allows no more).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import tempfile
import textwrap
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from mtls_middleware.sources.proxies import ProxyProfile, get_profile
from mtls_middleware.sources.trust import UNIX_PEER
from mtls_middleware.testing import Issued
from tests.conftest import REQUIRE_SERVICES, require_service

from .apps import HISTORY_PATH
from .clients import TIMEOUT, HandshakeRefused, Response, curl
from .conftest import (
    LOOPBACK,
    PROXY_ADDRESS,
    ClientCert,
    Endpoint,
    Materials,
    Server,
    free_port,
    gunicorn_argv,
    start_server,
)

__all__ = [
    "VERIFIED",
    "VERIFY_TEST_HEADER",
    "Attempt",
    "ProxyFront",
    "forged_headers",
    "header_value",
    "running",
]

#: The response header through which haproxy and httpd tell the tests their own verdict.
VERIFY_TEST_HEADER = "X-Test-Proxy-Client-Verify"
#: Where Debian's apache2 package keeps its modules.
APACHE_MODULES = Path("/usr/lib/apache2/modules")
#: sockaddr_un.sun_path holds 108 bytes; a deep pytest tmp dir may not fit.
_UNIX_PATH_MAX = 100


# -- configurations ------------------------------------------------------------------------------
HAPROXY_CFG = """\
global
    log stderr format raw local0 info
defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 15s
    timeout server 15s
frontend mtls
    # verify optional + *-ignore-err all: every certificate is accepted at the handshake and
    # forwarded with OpenSSL's numeric verdict (ssl_c_verify); the middleware judges.
    bind {listen}:{port} ssl crt {crt} ca-file {root} verify optional ca-ignore-err all crt-ignore-err all
{headers}
    # For the tests: what haproxy made of the client certificate, on every answer.
    http-response set-header {test_header} %[ssl_c_verify]
    default_backend app
backend app
    # Connect upstream from another loopback address: the app trusts only that one.
    server gunicorn {upstream}:{upstream_port} source {source}
"""

APACHE_CONF = """\
ServerRoot {prefix}
ServerName localhost
PidFile {prefix}/httpd.pid
DefaultRuntimeDir {prefix}
ErrorLog {prefix}/error.log
LogLevel warn ssl:info
{user}
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule headers_module {modules}/mod_headers.so
LoadModule proxy_module {modules}/mod_proxy.so
LoadModule proxy_http_module {modules}/mod_proxy_http.so
LoadModule ssl_module {modules}/mod_ssl.so
StartServers 1
ServerLimit 1
ThreadsPerChild 16
MaxRequestWorkers 16
MinSpareThreads 1
MaxSpareThreads 16
Listen {listen}:{port}
<VirtualHost {listen}:{port}>
    SSLEngine on
    SSLCertificateFile {server_cert}
    SSLCertificateKeyFile {server_key}
    # optional_no_ca: a certificate is asked for; one whose issuer is unknown is let through
    # (SSL_CLIENT_VERIFY says so); any other failure ends the handshake.
    SSLVerifyClient optional_no_ca
    SSLCACertificateFile {root}
    SSLVerifyDepth 10
    # ExportCertData: SSL_CLIENT_CERT and SSL_CLIENT_CERT_CHAIN_n hold the PEMs.
    SSLOptions +ExportCertData
{headers}
    # For the tests: what mod_ssl made of the client certificate, on every answer.
    Header always set {test_header} "%{{SSL_CLIENT_VERIFY}}s"
    ProxyPass / http://{upstream}:{upstream_port}/
    # Connect upstream from another loopback address: the app trusts only that one.
    ProxySourceAddress {source}
</VirtualHost>
"""

CADDYFILE = """\
{{
    admin off
    auto_https off
    storage file_system {prefix}/data
    servers {{
        protocols h1 h2
    }}
}}
https://:{port} {{
    bind {listen}
    tls {server_cert} {server_key} {{
        # Asked for, not verified (TLS still proves the client holds the key): the middleware
        # judges every certificate.
        client_auth {{
            mode request
        }}
    }}
{headers}
}}
"""


def haproxy_headers(profile: ProxyProfile) -> str:
    """haproxy ``http-request set-header`` lines for ``profile``'s headers.

    ``set-header`` replaces whatever the client sent under that name; without a certificate the
    quoted values are ``""``, which the profile reads as absent. Fails the test when the profile
    has a header role this function cannot fill (as do the other two).
    """
    values = {
        "cert": "%{+Q}[ssl_c_der,base64]",
        "chain": "%{+Q}[ssl_c_chain_der,base64]",
        "verify": "%[ssl_c_verify]",
    }
    return "\n".join(
        f"    http-request set-header {header} {values[role]}"
        for role, header in _roles(profile, set(values))
    )


def apache_headers(profile: ProxyProfile) -> str:
    """mod_headers ``RequestHeader set`` lines for ``profile``'s headers.

    ``set`` replaces the client's copy; an unset variable gives ``(null)``, which the profile reads
    as absent. A numbered chain gets one line per depth the profile reads, so that no depth is
    left for a client to fill.
    """
    variables = {"cert": "SSL_CLIENT_CERT", "verify": "SSL_CLIENT_VERIFY"}
    lines: list[str] = []
    for role, header in _roles(profile, {"cert", "chain", "verify"}):
        if role != "chain":
            lines.append(f'    RequestHeader set {header} "%{{{variables[role]}}}s"')
            continue
        if not profile.chain_numbered:
            pytest.fail(f"apache: the {profile.name} profile's chain is not numbered", pytrace=False)
        # Every depth the profile reads (its header names hold them all).
        depths = [name[len(header) :] for name in profile.header_names if name.startswith(header)]
        lines += [
            f'    RequestHeader set {header}{n} "%{{SSL_CLIENT_CERT_CHAIN_{n}}}s"'
            for n in sorted(int(d) for d in depths if d.isdigit())
        ]
    return "\n".join(lines)


def caddy_headers(profile: ProxyProfile, upstream: str) -> str:
    """A Caddy ``route`` that sets ``profile``'s certificate header and proxies to ``upstream``.

    Caddy leaves a placeholder without a value (no client certificate) as its literal text, so the
    header is first removed (the client's own copy with it) and set again only when a certificate
    was presented.
    """
    placeholders = {"cert": "{http.request.tls.client.certificate_der_base64}"}
    lines = [
        "    @client_cert expression `{http.request.tls.client.certificate_der_base64} != null`",
        "    route {",
    ]
    for role, header in _roles(profile, set(placeholders)):
        lines.append(f"        request_header -{header}")
        lines.append(f"        request_header @client_cert {header} {placeholders[role]}")
    lines += [f"        reverse_proxy {upstream}", "    }"]
    return "\n".join(lines)


def _roles(profile: ProxyProfile, known: set[str]) -> list[tuple[str, str]]:
    roles = [
        (role, header)
        for role, header in (
            ("cert", profile.cert_header),
            ("chain", profile.chain_header),
            ("verify", profile.verify_header),
            ("present", profile.present_header),
            ("hash", profile.hash_header),
            ("error", profile.error_header),
        )
        if header
    ]
    unknown = [role for role, _ in roles if role not in known]
    if unknown:
        pytest.fail(
            f"the {profile.name} profile has header roles {unknown} that the {profile.name} "
            "launcher cannot fill: teach tests/integration/proxies.py",
            pytrace=False,
        )
    return roles


# -- header values as each proxy writes them (for forgeries that would pass if believed) -------
def header_value(kind: str, der: bytes) -> str:
    """One certificate as proxy ``kind`` writes it into a header.

    haproxy: ``%{+Q}[...,base64]``, the base64 DER in double quotes; Apache: the PEM of
    ``SSL_CLIENT_CERT``, its line breaks turned to spaces by mod_headers; Caddy: the base64 DER.
    """
    b64 = base64.b64encode(der).decode()
    if kind == "haproxy":
        return f'"{b64}"'
    if kind == "apache":
        lines = textwrap.wrap(b64, 64)
        return " ".join(["-----BEGIN CERTIFICATE-----", *lines, "-----END CERTIFICATE-----"]) + " "
    if kind == "caddy":
        return b64
    raise ValueError(f"no header format known for proxy {kind!r}")


#: What each proxy's verify header says for a certificate it verified.
VERIFIED = {"haproxy": "0", "apache": "SUCCESS"}


def forged_headers(front: ProxyFront, leaf: Issued) -> dict[str, str]:
    """Certificate headers naming ``leaf`` and its intermediates, in the exact format and under
    the exact names the proxy's profile reads, and a "verified" verdict.

    Sent from the proxy's own peer they are believed (see the control tests): only the trust
    gate, or the proxy overwriting them, stands between them and the app.
    """
    profile = front.profile
    headers = {profile.cert_header: header_value(front.name, leaf.cert_der)}
    if profile.verify_header:
        headers[profile.verify_header] = VERIFIED[front.name]
    if profile.chain_header and leaf.intermediates:
        ders = [c.public_bytes(serialization.Encoding.DER) for c in leaf.intermediates]
        if profile.chain_numbered:
            for n, der in enumerate(ders):
                headers[f"{profile.chain_header}{n}"] = header_value(front.name, der)
        else:
            headers[profile.chain_header] = header_value(front.name, b"".join(ders))
    return headers


# -- the running pair --------------------------------------------------------------------------
@dataclass(frozen=True)
class Attempt:
    """One request through a proxy (or straight to the app), and what the app recorded for it."""

    response: Response | None
    refused: HandshakeRefused | None
    records: list[dict[str, Any]]

    @property
    def answered(self) -> Response:
        assert self.response is not None, f"no HTTP answer: {self.refused}"
        return self.response

    @property
    def proxy_verify(self) -> str | None:
        """What the proxy said of the client certificate (its test response header)."""
        return self.answered.headers.get(VERIFY_TEST_HEADER.lower())

    @property
    def record(self) -> dict[str, Any]:
        """The one login record the request left."""
        assert len(self.records) == 1, self.records
        return self.records[0]


@dataclass(frozen=True)
class ProxyFront:
    """A real proxy (TLS, client certificates) in front of the middleware under gunicorn."""

    name: str
    profile: ProxyProfile
    proxy: Endpoint
    app: Endpoint
    #: The peer (``REMOTE_ADDR``) the app sees for the proxy's requests; "" over the UNIX socket.
    proxy_peer: str
    #: The configuration the proxy runs with, and the file its own messages go to.
    config: str
    log: Path
    #: The root that signed the proxy's server certificate (curl's --cacert).
    root: Path
    #: gunicorn's UNIX socket, when the proxy reaches the app through one.
    unix_socket: Path | None = None
    #: A host name to send as SNI (Caddy answers 421 when SNI and Host differ, as without SNI).
    sni_host: str | None = None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"

    def history(self) -> list[dict[str, Any]]:
        """The app's login history, newest first (asked over TCP, past the proxy)."""
        conn = http.client.HTTPConnection(LOOPBACK, self.app.port, timeout=TIMEOUT)
        try:
            conn.request("GET", HISTORY_PATH)
            answer = conn.getresponse()
            body = answer.read()
        finally:
            conn.close()
        assert answer.status == 200, (answer.status, body[:300])
        records: list[dict[str, Any]] = json.loads(body)
        return records

    def _recorded(self, send: Callable[[], Response]) -> Attempt:
        before = len(self.history())
        response: Response | None = None
        refused: HandshakeRefused | None = None
        try:
            response = send()
        except HandshakeRefused as exc:
            refused = exc
        after = self.history()
        return Attempt(response, refused, after[: len(after) - before])

    def through(self, client: ClientCert | None, headers: Mapping[str, str] | None = None) -> Attempt:
        """GET /whoami through the proxy with curl, presenting ``client`` (or no certificate)."""
        host = self.sni_host or LOOPBACK
        return self._recorded(
            lambda: curl(
                f"https://{host}:{self.proxy.port}/whoami",
                cacert=self.root,
                cert=client.cert if client else None,
                key=client.key if client else None,
                headers=headers,
                resolve=f"{host}:{self.proxy.port}:{LOOPBACK}" if self.sni_host else None,
            )
        )

    def direct(self, headers: Mapping[str, str]) -> Attempt:
        """GET /whoami straight to gunicorn over TCP from 127.0.0.1, which is never the proxy."""
        return self._recorded(
            lambda: curl(self.app.url("/whoami", scheme="http"), headers=headers, interface=LOOPBACK)
        )

    def as_proxy(self, headers: Mapping[str, str]) -> Attempt:
        """GET /whoami straight to gunicorn from where the proxy connects (127.0.0.2 or the socket)."""
        if self.unix_socket is not None:
            socket_path = self.unix_socket
            return self._recorded(
                lambda: curl("http://localhost/whoami", headers=headers, unix_socket=socket_path)
            )
        return self._recorded(
            lambda: curl(self.app.url("/whoami", scheme="http"), headers=headers, interface=self.proxy_peer)
        )


@contextmanager
def _app(
    materials: Materials, prefix: Path, profile: ProxyProfile, *, trusted: str, unix_socket: Path | None
) -> Iterator[Server]:
    port = free_port()
    options = ["--bind", f"unix:{unix_socket}"] if unix_socket is not None else []
    env = materials.app_env(proxy=profile.name, trusted=[trusted])
    if profile.chain_header:
        # The proxy forwards the chain the client presented: the app is given no intermediates,
        # so an accepted leaf shows that the chain headers really carried its issuer.
        env["MTLS_IT_INTERMEDIATES"] = ""
    argv = gunicorn_argv(port, *options)
    app = start_server("gunicorn (WSGI)", argv, port=port, log=prefix / "gunicorn.log", env=env)
    try:
        yield app
    finally:
        app.stop()


@contextmanager
def _socket_path(prefix: Path) -> Iterator[Path]:
    path = prefix / "app.sock"
    if len(str(path)) <= _UNIX_PATH_MAX:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="mtls-") as short:
        yield Path(short) / "app.sock"


@contextmanager
def running(kind: str, materials: Materials, prefix: Path) -> Iterator[ProxyFront]:
    """Start gunicorn and the proxy ``kind`` (``haproxy``, ``apache``, ``caddy``); stop both after.

    Skips (fails under MTLS_REQUIRE_SERVICES=1) when curl or the proxy is not installed.
    """
    require_service("curl")
    # Before gunicorn starts: a missing proxy skips without starting anything.
    _executable(kind)
    profile = get_profile(kind)
    source = f"proxy:{profile.name}"
    if kind == "caddy":
        with (
            _socket_path(prefix) as socket_path,
            _app(materials, prefix, profile, trusted=UNIX_PEER, unix_socket=socket_path) as app,
            _caddy(materials, prefix, profile, socket_path) as (server, config, log),
        ):
            yield ProxyFront(
                kind, profile,
                Endpoint(kind, server.port, source, server), Endpoint("gunicorn", app.port, source, app),
                "", config, log, materials.root,
                unix_socket=socket_path, sni_host="localhost",
            )  # fmt: skip
        return
    start = {"haproxy": _haproxy, "apache": _apache}[kind]
    with (
        _app(materials, prefix, profile, trusted=PROXY_ADDRESS, unix_socket=None) as app,
        start(materials, prefix, profile, app.port) as (server, config, log),
    ):
        yield ProxyFront(
            kind, profile,
            Endpoint(kind, server.port, source, server), Endpoint("gunicorn", app.port, source, app),
            PROXY_ADDRESS, config, log, materials.root,
        )  # fmt: skip


def _executable(kind: str) -> str:
    """The proxy's executable; skip (fail under MTLS_REQUIRE_SERVICES=1) when it is missing."""
    if kind == "haproxy":
        return require_service("haproxy", "haproxy is not installed (apt-get install haproxy)")
    if kind == "caddy":
        return require_service("caddy", "Caddy is not installed (apt-get install caddy)")
    apache = require_service("apache2", "Apache httpd is not installed (apt-get install apache2)")
    if not (APACHE_MODULES / "mod_ssl.so").is_file():
        message = f"Apache httpd's modules are not in {APACHE_MODULES} (Debian's apache2 package)"
        if REQUIRE_SERVICES:
            pytest.fail(f"MTLS_REQUIRE_SERVICES=1 but {message}", pytrace=False)
        pytest.skip(message)
    return apache


@contextmanager
def _haproxy(
    materials: Materials, prefix: Path, profile: ProxyProfile, upstream_port: int
) -> Iterator[tuple[Server, str, Path]]:
    haproxy = _executable("haproxy")
    port = free_port()
    # haproxy's "crt" wants the certificate and its key in one file.
    crt = prefix / "server-with-key.pem"
    crt.write_bytes(materials.server_cert.read_bytes() + materials.server_key.read_bytes())
    crt.chmod(0o600)
    config = HAPROXY_CFG.format(
        listen=LOOPBACK, port=port, crt=crt, root=materials.root, headers=haproxy_headers(profile),
        test_header=VERIFY_TEST_HEADER,
        upstream=LOOPBACK, upstream_port=upstream_port, source=PROXY_ADDRESS,
    )  # fmt: skip
    path = prefix / "haproxy.cfg"
    path.write_text(config)
    log = prefix / "haproxy.log"
    server = start_server("haproxy", [haproxy, "-db", "-f", str(path)], port=port, log=log, tls=True)
    try:
        yield server, config, log
    finally:
        server.stop()


@contextmanager
def _apache(
    materials: Materials, prefix: Path, profile: ProxyProfile, upstream_port: int
) -> Iterator[tuple[Server, str, Path]]:
    apache = _executable("apache")
    modules = APACHE_MODULES
    port = free_port()
    config = APACHE_CONF.format(
        prefix=prefix,
        # As root httpd hands its children to User; they need none of our files (certificates and
        # logs are opened before), and the upstream is TCP.
        user="User #65534\nGroup #65534" if os.geteuid() == 0 else "",
        modules=modules, listen=LOOPBACK, port=port,
        server_cert=materials.server_cert, server_key=materials.server_key, root=materials.root,
        headers=apache_headers(profile), test_header=VERIFY_TEST_HEADER,
        upstream=LOOPBACK, upstream_port=upstream_port, source=PROXY_ADDRESS,
    )  # fmt: skip
    path = prefix / "httpd.conf"
    path.write_text(config)
    argv = [apache, "-f", str(path), "-DFOREGROUND"]
    server = start_server("apache2", argv, port=port, log=prefix / "apache2.out", tls=True)
    try:
        yield server, config, prefix / "error.log"
    finally:
        server.stop()


@contextmanager
def _caddy(
    materials: Materials, prefix: Path, profile: ProxyProfile, socket_path: Path
) -> Iterator[tuple[Server, str, Path]]:
    caddy = _executable("caddy")
    port = free_port()
    config = CADDYFILE.format(
        prefix=prefix, port=port, listen=LOOPBACK,
        server_cert=materials.server_cert, server_key=materials.server_key,
        headers=caddy_headers(profile, f"unix/{socket_path}"),
    )  # fmt: skip
    path = prefix / "Caddyfile"
    path.write_text(config)
    env = dict(os.environ)
    # Caddy keeps its state under HOME / XDG dirs: keep it in the temporary directory.
    env.update(HOME=str(prefix), XDG_DATA_HOME=str(prefix / "data"), XDG_CONFIG_HOME=str(prefix / "config"))
    argv = [caddy, "run", "--config", str(path), "--adapter", "caddyfile"]
    server = start_server("caddy", argv, port=port, log=prefix / "caddy.log", env=env, tls=True)
    try:
        yield server, config, prefix / "caddy.log"
    finally:
        server.stop()

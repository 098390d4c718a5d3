"""Header values for every profile, built exactly as each proxy's documentation specifies.

Imported as a plain module (``import profile_cases``): the rootdir conftest puts ``tests/`` on
``sys.path``, and ``tests/sources`` is added by the test module that imports this one. Every
certificate is made at test time; nothing is checked in.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtls_middleware.testing import Issued


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def b64(cert: x509.Certificate) -> str:
    return base64.b64encode(der(cert)).decode()


def sf(cert: x509.Certificate) -> str:
    """An RFC 8941 Byte Sequence: base64 between colons."""
    return f":{b64(cert)}:"


def chain_pem(issued: Issued) -> str:
    return "".join(pem(c) for c in issued.chain)


# -- one builder per profile ---------------------------------------------------------------------


def nginx(issued: Issued) -> dict[str, str]:
    # https://nginx.org/en/docs/http/ngx_http_ssl_module.html#var_ssl_client_escaped_cert:
    # "returns the client certificate in the PEM format (urlencoded)".
    return {"X-SSL-Client-Cert": quote(pem(issued.cert)), "X-SSL-Client-Verify": "SUCCESS"}


def apache(issued: Issued) -> dict[str, str]:
    # https://httpd.apache.org/docs/2.4/mod/mod_ssl.html#envvars: SSL_CLIENT_CERT and
    # SSL_CLIENT_CERT_CHAIN_n are PEM; mod_headers' %{VAR}s puts the PEM's line breaks in a
    # header as spaces (https://httpd.apache.org/docs/2.4/mod/mod_headers.html#requestheader).
    headers = {
        "X-SSL-Client-Cert": pem(issued.cert).replace("\n", " "),
        "X-SSL-Client-Verify": "SUCCESS",
    }
    for index, cert in enumerate(issued.intermediates):
        headers[f"X-SSL-Client-Cert-Chain-{index}"] = pem(cert).replace("\n", " ")
    headers[f"X-SSL-Client-Cert-Chain-{len(issued.intermediates)}"] = "(null)"
    return headers


def envoy(issued: Issued) -> dict[str, str]:
    # https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers
    # #x-forwarded-client-cert: "By=...;Hash=<SHA 256 hex>;Cert=\"<URL encoded PEM>\";Chain=...;
    # Subject=\"...\";URI=...;DNS=..." (the Subject value is always double-quoted).
    subject = issued.cert.subject.rfc4514_string().replace('"', '\\"')
    element = (
        "By=spiffe://cluster.local/ns/default/sa/app;"
        f"Hash={hashlib.sha256(der(issued.cert)).hexdigest()};"
        f'Cert="{quote(pem(issued.cert), safe="")}";'
        f'Chain="{quote(chain_pem(issued), safe="")}";'
        f'Subject="{subject}";URI=spiffe://cluster.local/ns/default/sa/client;'
        "DNS=client.example;DNS=client2.example"
    )
    return {"X-Forwarded-Client-Cert": element}


def aws_alb(issued: Issued) -> dict[str, str]:
    # https://docs.aws.amazon.com/elasticloadbalancing/latest/application/mutual-authentication.html
    # (HTTP headers, verify mode): "X-Amzn-Mtls-Clientcert-Leaf: URL-encoded PEM format of the
    # leaf certificate, with +=/ as safe characters"; the other headers are informational.
    cert = issued.cert
    return {
        "X-Amzn-Mtls-Clientcert-Serial-Number": format(cert.serial_number, "X"),
        "X-Amzn-Mtls-Clientcert-Issuer": cert.issuer.rfc4514_string(),
        "X-Amzn-Mtls-Clientcert-Subject": cert.subject.rfc4514_string(),
        "X-Amzn-Mtls-Clientcert-Validity": "NotBefore=2025-01-01T00:00:00Z;NotAfter=2035-01-01T00:00:00Z",
        "X-Amzn-Mtls-Clientcert-Leaf": quote(pem(cert), safe="+=/"),
    }


def aws_alb_passthrough(issued: Issued) -> dict[str, str]:
    # Same page, passthrough mode: "X-Amzn-Mtls-Clientcert: URL-encoded PEM format of the entire
    # client certificate chain presented in the handshake, with +=/ as safe characters".
    return {"X-Amzn-Mtls-Clientcert": quote(chain_pem(issued), safe="+=/")}


def traefik(issued: Issued) -> dict[str, str]:
    # https://doc.traefik.io/traefik/middlewares/http/passtlsclientcert/ (pem: true): the
    # certificates' PEM bodies without markers or line breaks (base64 DER), joined with ",".
    return {"X-Forwarded-Tls-Client-Cert": ",".join(b64(c) for c in issued.chain)}


def traefik_escaped(issued: Issued) -> dict[str, str]:
    # https://doc.traefik.io/traefik/v2.3/middlewares/passtlsclientcert/: "the escaped pem"
    # (Go's url.QueryEscape of the same value).
    return {"X-Forwarded-Tls-Client-Cert": quote(",".join(b64(c) for c in issued.chain), safe="")}


def haproxy(issued: Issued) -> dict[str, str]:
    # https://docs.haproxy.org/2.8/configuration.html: %{+Q}[ssl_c_der,base64] (quoted base64 of
    # the DER leaf), ssl_c_chain_der (the intermediates' DER, concatenated), ssl_c_verify (0 = ok).
    chain = b"".join(der(c) for c in issued.intermediates)
    return {
        "X-SSL-Client-Cert": f'"{b64(issued.cert)}"',
        "X-SSL-Client-Chain": f'"{base64.b64encode(chain).decode()}"',
        "X-SSL-Client-Verify": "0",
    }


def caddy(issued: Issued) -> dict[str, str]:
    # https://caddyserver.com/docs/modules/http: {http.request.tls.client.certificate_der_base64}
    # "The client certificate in DER format, base64-encoded".
    return {"X-Client-Cert": b64(issued.cert)}


def cloudflare(issued: Issued) -> dict[str, str]:
    # https://developers.cloudflare.com/ruleset-engine/rules-language/fields/reference/
    # cf.tls_client_auth.cert_rfc9440/ (":MIIB...:") and .../cert_chain_rfc9440/ (":MII..=:, :MII..=:",
    # the leaf excluded); cert_verified as to_string(): "true".
    return {
        "Client-Cert": sf(issued.cert),
        "Client-Cert-Chain": ", ".join(sf(c) for c in issued.intermediates),
        "Cf-Client-Cert-Verified": "true",
    }


def gcp(issued: Issued) -> dict[str, str]:
    # https://cloud.google.com/load-balancing/docs/https/custom-headers (mTLS variables):
    # {client_cert_leaf} and {client_cert_chain} RFC 9440 encoded, {client_cert_present} and
    # {client_cert_chain_verified} true/false, {client_cert_sha256_fingerprint} base64 SHA-256.
    digest = base64.b64encode(hashlib.sha256(der(issued.cert)).digest()).decode()
    return {
        "Client-Cert": sf(issued.cert),
        "Client-Cert-Chain": ",".join(sf(c) for c in issued.intermediates),
        "X-Client-Cert-Present": "true",
        "X-Client-Cert-Chain-Verified": "true",
        "X-Client-Cert-Error": "",
        "X-Client-Cert-Hash": digest,
    }


def azure(issued: Issued) -> dict[str, str]:
    # https://learn.microsoft.com/azure/app-service/app-service-web-configure-tls-mutual-auth:
    # "X-ARR-ClientCert": the certificate, base64-encoded (DER).
    return {"X-ARR-ClientCert": b64(issued.cert)}


def kong(issued: Issued) -> dict[str, str]:
    # https://docs.konghq.com/hub/kong-inc/tls-metadata-headers/: client_cert_header_name
    # (default X-Client-Cert), "the PEM format URL encoded client certificate".
    return {"X-Client-Cert": quote(pem(issued.cert), safe="")}


def rfc9440(issued: Issued) -> dict[str, str]:
    # https://www.rfc-editor.org/rfc/rfc9440 Appendix A: Client-Cert and Client-Cert-Chain.
    return {
        "Client-Cert": sf(issued.cert),
        "Client-Cert-Chain": ", ".join(sf(c) for c in issued.intermediates),
    }


@dataclass(frozen=True)
class ProfileCase:
    name: str  # the profile
    build: Callable[[Issued], dict[str, str]]
    carries_chain: bool  # the headers carry the intermediates
    cert_header: str
    failed_verify: str | None = None  # a verify value that means "the proxy refused"
    verify_header: str | None = None

    def __str__(self) -> str:
        return self.name


CASES = [
    ProfileCase("nginx", nginx, False, "X-SSL-Client-Cert", "FAILED:certificate revoked", "X-SSL-Client-Verify"),
    ProfileCase("apache", apache, True, "X-SSL-Client-Cert", "FAILED:certificate has expired", "X-SSL-Client-Verify"),
    ProfileCase("envoy", envoy, True, "X-Forwarded-Client-Cert"),
    ProfileCase("aws-alb", aws_alb, False, "X-Amzn-Mtls-Clientcert-Leaf"),
    ProfileCase("aws-alb-passthrough", aws_alb_passthrough, True, "X-Amzn-Mtls-Clientcert"),
    ProfileCase("traefik", traefik, True, "X-Forwarded-Tls-Client-Cert"),
    ProfileCase("haproxy", haproxy, True, "X-SSL-Client-Cert", "10", "X-SSL-Client-Verify"),
    ProfileCase("caddy", caddy, False, "X-Client-Cert"),
    ProfileCase("cloudflare", cloudflare, True, "Client-Cert", "false", "Cf-Client-Cert-Verified"),
    ProfileCase("gcp", gcp, True, "Client-Cert", "false", "X-Client-Cert-Chain-Verified"),
    ProfileCase("azure", azure, False, "X-ARR-ClientCert"),
    ProfileCase("kong", kong, False, "X-Client-Cert"),
    ProfileCase("rfc9440", rfc9440, True, "Client-Cert"),
]

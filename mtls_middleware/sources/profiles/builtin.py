"""The built-in header profiles, one per proxy, each beside the documentation it follows."""

from __future__ import annotations

from .decoders import (
    apache_verdict,
    b64_der,
    boolean_verdict,
    envoy_xfcc,
    haproxy_verdict,
    openssl_verdict,
    openssl_verdict_joined,
    pem_with_spaces,
    quoted_b64_der,
    quoted_concatenated_der,
    sf_byte_sequence,
    sf_byte_sequence_list,
    traefik_certs,
    url_escaped_pem,
)
from .profile import ProxyProfile

__all__ = ["BUILTIN"]

# https://nginx.org/en/docs/http/ngx_http_ssl_module.html#var_ssl_client_escaped_cert
NGINX = ProxyProfile(
    name="nginx",
    cert_header="X-SSL-Client-Cert",
    verify_header="X-SSL-Client-Verify",
    decode=url_escaped_pem,
    read_verify=openssl_verdict,
    verify_joined=openssl_verdict_joined,
    config=(
        "proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert;\n"
        "proxy_set_header X-SSL-Client-Verify $ssl_client_verify;"
    ),
    reference="https://nginx.org/en/docs/http/ngx_http_ssl_module.html#variables",
    notes="Leaf only: name the intermediates in MTLSConfig(intermediates=...). "
    "optional_no_ca's issuer-unknown FAILED is not a verdict.",
)

# https://httpd.apache.org/docs/2.4/mod/mod_ssl.html#envvars (SSL_CLIENT_CERT, _CHAIN_n, _VERIFY)
# https://httpd.apache.org/docs/2.4/mod/mod_headers.html#requestheader (%{VAR}s; an unset variable
# gives "(null)"; the line breaks of a PEM value reach the header as spaces).
APACHE = ProxyProfile(
    name="apache",
    cert_header="X-SSL-Client-Cert",
    chain_header="X-SSL-Client-Cert-Chain-",
    chain_numbered=True,
    verify_header="X-SSL-Client-Verify",
    decode=pem_with_spaces,
    read_verify=apache_verdict,
    verify_joined=openssl_verdict_joined,
    absent=frozenset({"(null)"}),
    # Every depth the profile reads is set, so a client cannot add a chain header of its own.
    config=(
        "SSLOptions +ExportCertData\n"
        'RequestHeader set X-SSL-Client-Cert "%{SSL_CLIENT_CERT}s"\n'
        + "".join(
            f'RequestHeader set X-SSL-Client-Cert-Chain-{n} "%{{SSL_CLIENT_CERT_CHAIN_{n}}}s"\n'
            for n in range(11)
        )
        + 'RequestHeader set X-SSL-Client-Verify "%{SSL_CLIENT_VERIFY}s"'
    ),
    reference="https://httpd.apache.org/docs/2.4/mod/mod_ssl.html#envvars",
    notes="Set every chain depth, -0 to -10: a depth left out is a header the client can send. "
    "GENEROUS (optional_no_ca) and issuer-unknown FAILED are not verdicts; FAILED:<other> is.",
)

# https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers#x-forwarded-client-cert
ENVOY = ProxyProfile(
    name="envoy",
    cert_header="X-Forwarded-Client-Cert",
    decode=envoy_xfcc,
    config=(
        "forward_client_cert_details: APPEND_FORWARD   # or SANITIZE_SET\n"
        "set_current_client_cert_details: {cert: true, chain: true}"
    ),
    reference="https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/"
    "headers#x-forwarded-client-cert",
    notes="Several elements = several hops: the LAST one (appended by the nearest, trusted, hop) "
    "is used. Chain (leaf first) is preferred over Cert; Hash must match the leaf.",
)

# https://docs.aws.amazon.com/elasticloadbalancing/latest/application/mutual-authentication.html
# (HTTP headers): verify mode sends X-Amzn-Mtls-Clientcert-Leaf, "URL-encoded PEM format of the
# leaf certificate, with +=/ as safe characters"; passthrough sends X-Amzn-Mtls-Clientcert, the
# whole chain, URL-encoded PEM.
AWS_ALB = ProxyProfile(
    name="aws-alb",
    cert_header="X-Amzn-Mtls-Clientcert-Leaf",
    decode=url_escaped_pem,
    config="Listener mutual authentication: mode verify (trust store attached)",
    reference="https://docs.aws.amazon.com/elasticloadbalancing/latest/application/"
    "mutual-authentication.html",
    notes="Verify mode: leaf only (name the intermediates); ALB has already verified, the "
    "middleware validates again. A '+' stays a '+'.",
)
AWS_ALB_PASSTHROUGH = ProxyProfile(
    name="aws-alb-passthrough",
    cert_header="X-Amzn-Mtls-Clientcert",
    decode=url_escaped_pem,
    config="Listener mutual authentication: mode passthrough",
    reference=AWS_ALB.reference,
    notes="Passthrough mode: the whole chain, unverified by ALB; the middleware validates it.",
)

# https://doc.traefik.io/traefik/middlewares/http/passtlsclientcert/
TRAEFIK = ProxyProfile(
    name="traefik",
    cert_header="X-Forwarded-Tls-Client-Cert",
    decode=traefik_certs,
    config="http.middlewares.<name>.passTLSClientCert.pem: true",
    reference="https://doc.traefik.io/traefik/middlewares/http/passtlsclientcert/",
    notes="Base64 DER certificates joined by ',' (leaf first); the older URL-escaped form too. "
    "X-Forwarded-Tls-Client-Cert-Info is informational and ignored.",
)

# https://docs.haproxy.org/2.8/configuration.html#7.3.4-ssl_c_der (ssl_c_der, ssl_c_chain_der,
# ssl_c_verify) and #8.2.6 (custom log format, %{+Q} quoting).
HAPROXY = ProxyProfile(
    name="haproxy",
    cert_header="X-SSL-Client-Cert",
    chain_header="X-SSL-Client-Chain",
    verify_header="X-SSL-Client-Verify",
    decode=quoted_b64_der,
    chain_decode=quoted_concatenated_der,
    read_verify=haproxy_verdict,
    absent=frozenset({'""', "-", '"-"'}),
    config=(
        "http-request set-header X-SSL-Client-Cert %{+Q}[ssl_c_der,base64]\n"
        "http-request set-header X-SSL-Client-Chain %{+Q}[ssl_c_chain_der,base64]\n"
        "http-request set-header X-SSL-Client-Verify %[ssl_c_verify]"
    ),
    reference="https://docs.haproxy.org/2.8/configuration.html#7.3.4-ssl_c_chain_der",
    notes="Verify is OpenSSL's numeric code: 0 success; 2, 18-21 (issuer not found) no verdict; "
    "others failed. ssl_c_chain_der needs HAProxy 2.2+.",
)

# https://caddyserver.com/docs/caddyfile/directives/reverse_proxy#headers and
# https://caddyserver.com/docs/modules/http (placeholder
# {http.request.tls.client.certificate_der_base64}: the leaf, DER, base64).
CADDY = ProxyProfile(
    name="caddy",
    cert_header="X-Client-Cert",
    decode=b64_der,
    # Without a client certificate Caddy sends the placeholder's own text: a plain header_up
    # would turn "no certificate" into a malformed one. Tested with Caddy 2.6.
    config="tls server.pem server.key { client_auth { mode request } }\n"
    "@client_cert expression `{http.request.tls.client.certificate_der_base64} != null`\n"
    "route {\n"
    "    request_header -X-Client-Cert\n"
    "    request_header @client_cert X-Client-Cert {http.request.tls.client.certificate_der_base64}\n"
    "    reverse_proxy ...\n"
    "}",
    absent=frozenset({"{http.request.tls.client.certificate_der_base64}"}),
    reference="https://caddyserver.com/docs/modules/http#docs",
    notes="Leaf only (Caddy has no chain placeholder): name the intermediates. No verify header. "
    "client_auth mode request lets every certificate through to the middleware, which then names "
    "the precise reason (require_and_verify would end bad handshakes inside Caddy).",
)

# https://developers.cloudflare.com/ssl/client-certificates/forward-a-client-certificate/ and the
# fields cf.tls_client_auth.cert_rfc9440, cert_chain_rfc9440, cert_verified.
CLOUDFLARE = ProxyProfile(
    name="cloudflare",
    cert_header="Client-Cert",
    chain_header="Client-Cert-Chain",
    verify_header="Cf-Client-Cert-Verified",
    decode=sf_byte_sequence,
    chain_decode=sf_byte_sequence_list,
    read_verify=boolean_verdict,
    config=(
        "Request Header Transform Rule (when true): remove Client-Cert, Client-Cert-Chain, "
        "Cf-Client-Cert-Verified\n"
        "Rule (when cf.tls_client_auth.cert_presented): set dynamic "
        "Client-Cert = cf.tls_client_auth.cert_rfc9440, "
        "Client-Cert-Chain = cf.tls_client_auth.cert_chain_rfc9440, "
        "Cf-Client-Cert-Verified = to_string(cf.tls_client_auth.cert_verified)"
    ),
    reference="https://developers.cloudflare.com/ssl/client-certificates/"
    "forward-a-client-certificate/",
    notes="RFC 9440 fields; Cloudflare fills them whatever the validation result, so the "
    "verified flag is forwarded: 'false' is proxy_verification_failed.",
)

# https://cloud.google.com/load-balancing/docs/https/custom-headers#mtls-variables and
# https://cloud.google.com/load-balancing/docs/mtls (client_cert_leaf / client_cert_chain are
# RFC 9440 encoded; client_cert_sha256_fingerprint; client_cert_present; _chain_verified; _error).
GCP = ProxyProfile(
    name="gcp",
    cert_header="Client-Cert",
    chain_header="Client-Cert-Chain",
    verify_header="X-Client-Cert-Chain-Verified",
    present_header="X-Client-Cert-Present",
    hash_header="X-Client-Cert-Hash",
    error_header="X-Client-Cert-Error",
    decode=sf_byte_sequence,
    chain_decode=sf_byte_sequence_list,
    read_verify=boolean_verdict,
    config=(
        "customRequestHeaders:\n"
        "- 'Client-Cert:{client_cert_leaf}'\n"
        "- 'Client-Cert-Chain:{client_cert_chain}'\n"
        "- 'X-Client-Cert-Present:{client_cert_present}'\n"
        "- 'X-Client-Cert-Chain-Verified:{client_cert_chain_verified}'\n"
        "- 'X-Client-Cert-Error:{client_cert_error}'\n"
        "- 'X-Client-Cert-Hash:{client_cert_sha256_fingerprint}'"
    ),
    reference="https://cloud.google.com/load-balancing/docs/https/custom-headers",
    notes="Present=false is no_certificate; Chain-Verified=false is proxy_verification_failed "
    "(the Error header goes to the history); the Hash must match the leaf.",
)

# https://learn.microsoft.com/azure/app-service/app-service-web-configure-tls-mutual-auth
# ("X-ARR-ClientCert": the client certificate, base64-encoded DER).
AZURE = ProxyProfile(
    name="azure",
    cert_header="X-ARR-ClientCert",
    decode=b64_der,
    config="App Service: clientCertEnabled=true, clientCertMode=Required (or Optional)",
    reference="https://learn.microsoft.com/azure/app-service/app-service-web-configure-tls-mutual-auth",
    notes="Leaf only; App Service does not validate the certificate: the middleware does.",
)

# https://docs.konghq.com/hub/kong-inc/tls-metadata-headers/ (client_cert_header_name, default
# X-Client-Cert: "the PEM format URL encoded client certificate").
KONG = ProxyProfile(
    name="kong",
    cert_header="X-Client-Cert",
    decode=url_escaped_pem,
    config="plugins: [{name: mtls-auth, ...}, {name: tls-metadata-headers, "
    "config: {inject_client_cert_details: true}}]",
    reference="https://docs.konghq.com/hub/kong-inc/tls-metadata-headers/",
    notes="Leaf only: name the intermediates. The plugin runs after mtls-auth has verified.",
)

# https://www.rfc-editor.org/rfc/rfc9440 (Client-Cert: a Byte Sequence; Client-Cert-Chain: a
# List of Byte Sequences; RFC 8941 syntax).
RFC9440 = ProxyProfile(
    name="rfc9440",
    cert_header="Client-Cert",
    chain_header="Client-Cert-Chain",
    decode=sf_byte_sequence,
    chain_decode=sf_byte_sequence_list,
    config="Client-Cert: :<base64 DER>:\nClient-Cert-Chain: :<base64 DER>:, :<base64 DER>:",
    reference="https://www.rfc-editor.org/rfc/rfc9440",
    notes="Strict structured-field parsing; no verify header.",
)

BUILTIN = (
    NGINX,
    APACHE,
    ENVOY,
    AWS_ALB,
    AWS_ALB_PASSTHROUGH,
    TRAEFIK,
    HAPROXY,
    CADDY,
    CLOUDFLARE,
    GCP,
    AZURE,
    KONG,
    RFC9440,
)

"""A small test PKI for exercising client-certificate authentication.

Used by this project's own tests and demo, and offered to users for testing their apps::

    pki = TestPKI()
    alice = pki.issue_client("alice")
    alice.cert_pem      # the leaf, PEM
    alice.chain_pem     # leaf + intermediates, PEM
    alice.key_pem       # its private key, PEM (PKCS#8, unencrypted)
    pki.root_pem        # the trust anchor to configure

Test clients carry no TLS information, so two helpers put a client certificate where a TLS server
would, for the middleware to find it like a real one::

    # WSGI: werkzeug/Flask test client, Django Client/RequestFactory
    client.get("/", environ_base=client_certificate_environ(alice))      # werkzeug, Flask
    django.test.Client(**client_certificate_environ(alice))              # Django

    # ASGI: Starlette/FastAPI TestClient, httpx.ASGITransport; Django AsyncClient
    TestClient(with_client_certificate(app, alice))
    django.test.AsyncClient(**client_certificate_scope(alice))

Everything is generated in memory at call time; nothing here is meant for production keys.
Every knob of :func:`make_certificate` exists so that tests can build the odd certificates real
clients present (no SAN, no AKI, v1 roots, dual EKU, short RSA keys, SHA-1 signatures ...).
"""

from __future__ import annotations

import datetime as dt
import errno
import ipaddress
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

__all__ = [
    "CLIENT_AUTH",
    "SERVER_AUTH",
    "ChainLike",
    "Issued",
    "KeyType",
    "PrivateKey",
    "RevokedSpec",
    "TestPKI",
    "client_certificate_environ",
    "client_certificate_scope",
    "crl_bytes",
    "generate_key",
    "issue_crl_signer",
    "make_certificate",
    "make_crl",
    "name",
    "with_client_certificate",
]

CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH

KeyType = Literal["ec", "rsa2048", "rsa1024", "rsa3072", "ed25519", "p384"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

_KEY_CACHE: dict[tuple[KeyType, int], PrivateKey] = {}


def generate_key(kind: KeyType = "ec", *, reuse: int | None = None) -> PrivateKey:
    """Generate a private key. ``reuse=N`` returns the N-th cached key of that kind (fast tests)."""
    if reuse is not None and (kind, reuse) in _KEY_CACHE:
        return _KEY_CACHE[(kind, reuse)]
    key: PrivateKey
    if kind == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    elif kind == "p384":
        key = ec.generate_private_key(ec.SECP384R1())
    elif kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        bits = int(kind.removeprefix("rsa"))
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if reuse is not None:
        _KEY_CACHE[(kind, reuse)] = key
    return key


def name(common_name: str, org: str | None = "mtls_middleware test") -> x509.Name:
    """A distinguished name ``O=org, CN=common_name``."""
    attrs = []
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


_DEFAULT = object()


def make_certificate(
    *,
    subject: x509.Name,
    key: PrivateKey,
    issuer: x509.Certificate | None = None,
    issuer_key: PrivateKey | None = None,
    ca: bool = False,
    path_length: int | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    eku: Sequence[x509.ObjectIdentifier] | None = (CLIENT_AUTH,),
    eku_critical: bool = False,
    key_usage: bool | None = True,
    basic_constraints: bool | None = True,
    basic_constraints_critical: bool = True,
    ski: bool = True,
    aki: bool = True,
    san_emails: Iterable[str] = (),
    san_dns: Iterable[str] = (),
    san_ips: Iterable[str] = (),
    san_uris: Iterable[str] = (),
    san_upns: Iterable[str] = (),
    san_critical: bool = False,
    ocsp_url: str | None = None,
    crl_url: str | None = None,
    extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    hash_algorithm: hashes.HashAlgorithm | object | None = _DEFAULT,
    serial: int | None = None,
) -> x509.Certificate:
    """Build and sign one certificate; self-signed when ``issuer`` is None.

    For a CA the defaults give what RFC 5280 asks of a conforming CA (critical basicConstraints,
    keyCertSign|cRLSign key usage, SKI, AKI) and no EKU unless one is passed; for an end entity,
    digitalSignature key usage and the Client Authentication EKU.
    """
    now = _now()
    not_before = not_before or now - dt.timedelta(hours=1)
    not_after = not_after or now + dt.timedelta(days=30)
    signer_key = issuer_key if issuer is not None else key
    if signer_key is None:
        raise ValueError("issuer_key is required with issuer")
    issuer_name = issuer.subject if issuer is not None else subject
    public_key = key.public_key()

    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if basic_constraints:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None),
            critical=basic_constraints_critical,
        )
    if key_usage:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if eku and not (ca and eku == (CLIENT_AUTH,)):
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=eku_critical)
    if ski:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
    if aki and issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer.public_key()  # type: ignore[arg-type]
            ),
            critical=False,
        )
    general_names: list[x509.GeneralName] = [x509.RFC822Name(e) for e in san_emails]
    general_names += [x509.DNSName(d) for d in san_dns]
    general_names += [x509.IPAddress(ipaddress.ip_address(i)) for i in san_ips]
    general_names += [x509.UniformResourceIdentifier(u) for u in san_uris]
    general_names += [
        x509.OtherName(
            x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"),
            # UTF8String, DER: tag 0x0c, short length (UPNs in tests stay under 128 bytes).
            b"\x0c" + bytes([len(u.encode())]) + u.encode(),
        )
        for u in san_upns
    ]
    if general_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(general_names), critical=san_critical
        )
    if ocsp_url:
        builder = builder.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP,
                        x509.UniformResourceIdentifier(ocsp_url),
                    )
                ]
            ),
            critical=False,
        )
    if crl_url:
        builder = builder.add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        full_name=[x509.UniformResourceIdentifier(crl_url)],
                        relative_name=None,
                        reasons=None,
                        crl_issuer=None,
                    )
                ]
            ),
            critical=False,
        )
    for ext, critical in extra_extensions:
        builder = builder.add_extension(ext, critical=critical)

    algorithm: hashes.HashAlgorithm | None
    if hash_algorithm is _DEFAULT:
        algorithm = None if isinstance(signer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    else:
        algorithm = hash_algorithm  # type: ignore[assignment]
    return builder.sign(signer_key, algorithm)  # type: ignore[arg-type]


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_new_file(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to a new file ``path`` created with ``mode`` (less the umask), replacing a
    regular file already there; never follows a symbolic link.

    The file is created exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``) after removing an old one,
    so a private key is never readable with a looser mode, not even between create and chmod, and
    a link planted in a shared directory (symbolic or hard) never receives it.

    Raises:
        FileExistsError: ``path`` is a symbolic link, or one appeared while writing.
        OSError: the file cannot be written.
    """
    if path.is_symlink():
        raise FileExistsError(errno.EEXIST, "refusing to write through a symbolic link", str(path))
    path.unlink(missing_ok=True)  # a hard link or a looser mode stays with the old file
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


@dataclass(frozen=True)
class Issued:
    """A certificate, its private key, and the intermediates that lead to the root."""

    cert: x509.Certificate
    key: PrivateKey
    intermediates: tuple[x509.Certificate, ...] = ()

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """The leaf followed by its intermediates (the root excluded), as a client presents it."""
        return (self.cert, *self.intermediates)

    @property
    def cert_pem(self) -> bytes:
        return _pem(self.cert)

    @property
    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def chain_pem(self) -> bytes:
        return b"".join(_pem(c) for c in self.chain)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the DER, lowercase hex: the identity key of the store."""
        return self.cert.fingerprint(hashes.SHA256()).hex()

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write ``stem.pem`` (leaf + intermediates) and ``stem.key``; return both paths.

        The key file is created with mode 0o600 from the start (never readable by others, not
        even for a moment); a file already there is replaced, not written through.

        Raises:
            FileExistsError: ``stem.pem`` or ``stem.key`` is a symbolic link (which someone with
                write access to ``directory`` may have planted to capture the key).
        """
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
        _write_new_file(cert_path, self.chain_pem, mode=0o644)
        _write_new_file(key_path, self.key_pem, mode=0o600)
        return cert_path, key_path


@dataclass
class TestPKI:
    """A root CA and one issuing (intermediate) CA under it, with helpers to issue more.

    ``key_type`` is used for the CAs; leaves default to P-256 keys, which are fast to make.
    """

    __test__ = False  # not a pytest test class despite its name

    org: str = "mtls_middleware test"
    key_type: KeyType = "ec"
    root: Issued = field(init=False)
    issuing: Issued = field(init=False)

    def __post_init__(self) -> None:
        root_key = generate_key(self.key_type)
        now = _now()
        root_cert = make_certificate(
            subject=name(f"{self.org} Root CA", self.org),
            key=root_key,
            ca=True,
            eku=None,
            not_before=now - dt.timedelta(days=1),
            not_after=now + dt.timedelta(days=3650),
        )
        self.root = Issued(root_cert, root_key)
        self.issuing = self.issue_ca(f"{self.org} Issuing CA")

    @property
    def root_pem(self) -> bytes:
        return self.root.cert_pem

    def issue_ca(
        self, common_name: str, *, parent: Issued | None = None, **options: object
    ) -> Issued:
        """Issue an intermediate CA under ``parent`` (the root by default)."""
        parent = parent or self.root
        key = generate_key(self.key_type)
        options.setdefault("eku", None)
        options.setdefault("path_length", None)
        cert = make_certificate(
            subject=name(common_name, self.org),
            key=key,
            issuer=parent.cert,
            issuer_key=parent.key,
            ca=True,
            **options,  # type: ignore[arg-type]
        )
        return Issued(cert, key, (*((parent.cert,) if parent is not self.root else ()),
                                  *parent.intermediates))

    def issue_client(
        self,
        common_name: str,
        *,
        issuer: Issued | None = None,
        key_type: KeyType = "ec",
        key: PrivateKey | None = None,
        **options: object,
    ) -> Issued:
        """Issue a client (end-entity) certificate; ``options`` go to :func:`make_certificate`."""
        issuer = issuer or self.issuing
        key = key or generate_key(key_type)
        cert = make_certificate(
            subject=name(common_name, self.org),
            key=key,
            issuer=issuer.cert,
            issuer_key=issuer.key,
            **options,  # type: ignore[arg-type]
        )
        chain = () if issuer is self.root else (issuer.cert, *issuer.intermediates)
        return Issued(cert, key, chain)

    def issue_server(self, common_name: str = "localhost", **options: Any) -> Issued:
        """A TLS server certificate for ``localhost`` / 127.0.0.1 / ::1 under the issuing CA."""
        options.setdefault("eku", (SERVER_AUTH,))
        options.setdefault("san_dns", (common_name,))
        options.setdefault("san_ips", ("127.0.0.1", "::1"))
        return self.issue_client(common_name, **options)

    def write(self, directory: Path) -> Path:
        """Write the root as ``root.pem`` into ``directory``; return its path.

        Raises:
            FileExistsError: ``root.pem`` is a symbolic link (never written through).
        """
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "root.pem"
        _write_new_file(path, self.root_pem, mode=0o644)
        return path


# -- CRLs -----------------------------------------------------------------------------------------
RevokedSpec = tuple[int, dt.datetime | None, x509.ReasonFlags | None]


def make_crl(
    issuer: Issued,
    revoked: Iterable[RevokedSpec | int] = (),
    *,
    this_update: dt.datetime | None = None,
    next_update: dt.datetime | None = None,
    signer_key: PrivateKey | None = None,
    issuer_name: x509.Name | None = None,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    entry_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    hash_algorithm: hashes.HashAlgorithm | object | None = _DEFAULT,
) -> x509.CertificateRevocationList:
    """A CRL of ``issuer`` listing ``revoked`` serials.

    ``revoked`` holds serials or ``(serial, revocation time or None, reason or None)`` tuples.
    Defaults: thisUpdate an hour ago, nextUpdate in a day,
    signed by ``issuer.key`` with ``issuer.cert``'s subject as the CRL issuer. ``signer_key``
    signs with another key (a separate CRL key, or a forgery); ``issuer_name`` names another
    issuer; ``extensions`` are added to the CRL and ``entry_extensions`` to every entry.
    """
    now = _now()
    this_update = this_update or now - dt.timedelta(hours=1)
    next_update = next_update or now + dt.timedelta(days=1)
    entries = []
    for item in revoked:
        serial, when, reason = (item, None, None) if isinstance(item, int) else item
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(
            when or this_update - dt.timedelta(minutes=5)
        )
        if reason is not None:
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        for ext, critical in entry_extensions:
            entry = entry.add_extension(ext, critical=critical)
        entries.append(entry.build())
    # All entries at once: add_revoked_certificate copies the list each time (quadratic).
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=issuer_name if issuer_name is not None else issuer.cert.subject,
        last_update=this_update,
        next_update=next_update,
        revoked_certificates=entries,
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    key = signer_key or issuer.key
    algorithm: hashes.HashAlgorithm | None
    if hash_algorithm is _DEFAULT:
        algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    else:
        algorithm = hash_algorithm  # type: ignore[assignment]
    return builder.sign(key, algorithm)  # type: ignore[arg-type]


def crl_bytes(crl: x509.CertificateRevocationList, *, pem: bool = False) -> bytes:
    """The DER (or PEM) encoding of ``crl``."""
    return crl.public_bytes(serialization.Encoding.PEM if pem else serialization.Encoding.DER)


def issue_crl_signer(
    pki: TestPKI, ca: Issued, *, parent: Issued | None = None, crl_sign: bool = True, **options: Any
) -> Issued:
    """A separate CRL-signing certificate for ``ca``: same subject, its own key, keyUsage cRLSign
    only (digitalSignature only with ``crl_sign=False``), issued by ``parent`` (default: the root,
    which issued ``pki.issuing``)."""
    parent = parent or pki.root
    key = generate_key(pki.key_type)
    options.setdefault("eku", None)
    options.setdefault("key_usage", False)
    extra = list(options.pop("extra_extensions", ()))
    extra.append(
        (
            x509.KeyUsage(
                digital_signature=not crl_sign,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=crl_sign,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
    )
    cert = make_certificate(
        subject=ca.cert.subject,
        key=key,
        issuer=parent.cert,
        issuer_key=parent.key,
        ca=False,
        extra_extensions=extra,
        **options,
    )
    return Issued(cert, key, (parent.cert,) if parent is not pki.root else ())


# -- Client certificates for test clients ---------------------------------------------------------
#: What the test-client helpers accept as a presented chain (leaf first): an :class:`Issued` (its
#: leaf and intermediates), PEM (one or more certificates, bytes or str), one certificate, or a
#: sequence of certificates.
ChainLike: TypeAlias = "Issued | bytes | str | x509.Certificate | Sequence[x509.Certificate]"

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_ASGIApp = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


def _chain_pems(chain: ChainLike) -> list[str]:
    """The chain as PEM strings, leaf first."""
    certs: Sequence[x509.Certificate]
    if isinstance(chain, Issued):
        certs = chain.chain
    elif isinstance(chain, x509.Certificate):
        certs = (chain,)
    elif isinstance(chain, (bytes, str)):
        data = chain.encode("ascii") if isinstance(chain, str) else chain
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise ValueError(f"chain: not PEM certificates ({exc})") from None
    else:
        certs = tuple(chain)
        for cert in certs:
            if not isinstance(cert, x509.Certificate):
                raise TypeError(f"chain: expected x509.Certificate items, got {type(cert).__name__}")
    if not certs:
        raise ValueError("chain: no certificate given")
    return [_pem(c).decode("ascii") for c in certs]


def client_certificate_environ(chain: ChainLike) -> dict[str, str]:
    """WSGI environ entries presenting ``chain`` as a TLS server would (leaf first).

    ``SSL_CLIENT_CERT`` holds the leaf and ``SSL_CLIENT_CERT_CHAIN_0``, ``_1`` ... the certificates
    after it, as PEM strings: the keys mod_wsgi, werkzeug's dev server and our own listener set,
    which the middleware reads as ``source="tls:environ"``. Pass them as werkzeug/Flask
    ``client.get(..., environ_base=...)`` (or ``environ_overrides``), or as Django
    ``Client(**environ)`` / ``RequestFactory(**environ)`` defaults.

    Raises:
        ValueError: ``chain`` holds no certificate, or text that is not PEM.
        TypeError: a sequence item is not an ``x509.Certificate``.
    """
    leaf, *rest = _chain_pems(chain)
    environ = {"SSL_CLIENT_CERT": leaf}
    environ.update({f"SSL_CLIENT_CERT_CHAIN_{i}": pem for i, pem in enumerate(rest)})
    return environ


def client_certificate_scope(chain: ChainLike) -> dict[str, Any]:
    """ASGI scope entries presenting ``chain`` as a TLS-terminating ASGI server would (leaf first).

    ``{"extensions": {"tls": {...}}}`` as the ASGI TLS extension specifies: ``client_cert_chain``
    (PEM strings, leaf first), ``client_cert_name`` (the leaf's RFC 4514 subject), TLS 1.3. The
    middleware reads it as ``source="tls:asgi"``. Merge it into a scope you build yourself; to
    present a certificate to a whole ASGI app (Django's ``get_asgi_application()`` included, driven
    by ``httpx.ASGITransport``), use :func:`with_client_certificate`. Django's ``AsyncClient`` is
    no way in: it sends every default as a request header (Django 5.2.19, as tested).

    Raises:
        ValueError: ``chain`` holds no certificate, or text that is not PEM.
        TypeError: a sequence item is not an ``x509.Certificate``.
    """
    pems = _chain_pems(chain)
    subject = x509.load_pem_x509_certificate(pems[0].encode("ascii")).subject.rfc4514_string()
    tls = {
        "server_cert": None,
        "client_cert_chain": pems,
        "client_cert_name": subject,
        "client_cert_error": None,
        "tls_version": 0x0304,
        "cipher_suite": None,
    }
    return {"extensions": {"tls": tls}}


def with_client_certificate(app: Any, chain: ChainLike) -> Any:
    """``app`` (ASGI) wrapped so that every HTTP and WebSocket connection presents ``chain``.

    Puts :func:`client_certificate_scope`'s ``tls`` extension into a copy of each connection's
    scope, the way a TLS-terminating ASGI server would; other extensions the test client set are
    kept. For Starlette/FastAPI ``TestClient(with_client_certificate(app, alice))`` or
    ``httpx.AsyncClient(transport=httpx.ASGITransport(app=with_client_certificate(app, alice)))``.
    Lifespan events pass through untouched.

    Raises:
        ValueError: ``chain`` holds no certificate, or text that is not PEM.
        TypeError: a sequence item is not an ``x509.Certificate``.
    """
    tls = client_certificate_scope(chain)["extensions"]["tls"]
    inner: _ASGIApp = app

    async def presenting(scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope.get("type") in ("http", "websocket"):
            scope = dict(scope)
            # A fresh list per connection: an app that changes it cannot affect the next one.
            scope["extensions"] = {
                **(scope.get("extensions") or {}),
                "tls": {**tls, "client_cert_chain": list(tls["client_cert_chain"])},
            }
        await inner(scope, receive, send)

    return presenting

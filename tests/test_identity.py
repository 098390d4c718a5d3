"""identity.py: the Identity of an accepted request and the mappers that find its user."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from werkzeug.test import Client

from mtls_middleware import (
    ENVIRON_KEY,
    FingerprintMapper,
    Identity,
    IdentityMapper,
    MemoryStore,
    MTLSConfig,
    SanEmailMapper,
    SubjectMapper,
    UpnMapper,
)
from mtls_middleware.testing import Issued, TestPKI
from mtls_middleware.wsgi import MTLSMiddleware

UPN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")


def users(*user_ids: str) -> MemoryStore:
    store = MemoryStore()
    for user_id in user_ids:
        store.add_user(user_id, org="corp")
    return store


def with_san(pki: TestPKI, *names: x509.GeneralName, cn: str = "san test") -> x509.Certificate:
    extension = (x509.SubjectAlternativeName(list(names)), False)
    return pki.issue_client(cn, extra_extensions=[extension]).cert


def upn(value: bytes, oid: x509.ObjectIdentifier = UPN_OID) -> x509.OtherName:
    return x509.OtherName(oid, value)


def utf8(text: str) -> bytes:
    """A DER UTF8String, with the (minimal) long length form when needed."""
    body = text.encode()
    if len(body) < 0x80:
        return b"\x0c" + bytes([len(body)]) + body
    length = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return b"\x0c" + bytes([0x80 | len(length)]) + length + body


def mapped(mapper: IdentityMapper, cert: x509.Certificate, store: MemoryStore) -> str | None:
    from mtls_middleware.certs import fingerprint

    principal = mapper.map(cert, fingerprint(cert), store)
    return principal.user_id if principal else None


def test_mappers_satisfy_the_protocol() -> None:
    for mapper in (FingerprintMapper(), SanEmailMapper(), UpnMapper(), SubjectMapper()):
        assert isinstance(mapper, IdentityMapper)


# -- fingerprint (the default) ------------------------------------------------------------------


def test_fingerprint_mapper(store: MemoryStore, alice: Issued, bob: Issued) -> None:
    assert mapped(FingerprintMapper(), alice.cert, store) == "alice"
    assert mapped(FingerprintMapper(), bob.cert, store) is None


def test_fingerprint_mapper_ignores_names(pki: TestPKI, store: MemoryStore) -> None:
    # Same subject and SAN as alice, another certificate: not alice.
    twin = pki.issue_client("alice", san_emails=("alice@example.org",))
    assert mapped(FingerprintMapper(), twin.cert, store) is None


# -- SAN e-mail -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("emails", "user"),
    [
        pytest.param(("carol@example.org",), "carol@example.org", id="exact"),
        pytest.param(("Carol@Example.ORG",), "carol@example.org", id="lower-cased"),
        pytest.param(
            ("nobody@example.org", "carol@example.org"), "carol@example.org", id="second-address-matches"
        ),
        pytest.param(("nobody@example.org",), None, id="unknown-address"),
        pytest.param((), None, id="no-email-in-san"),
    ],
)
def test_san_email_mapper(pki: TestPKI, emails: tuple[str, ...], user: str | None) -> None:
    store = users("carol@example.org")
    cert = pki.issue_client("carol", san_emails=emails, san_dns=("carol.example.org",)).cert
    assert mapped(SanEmailMapper(), cert, store) == user


def test_san_email_mapper_without_san(pki: TestPKI) -> None:
    store = users("carol@example.org")
    cert = pki.issue_client("carol@example.org").cert  # the address only in the CN
    assert mapped(SanEmailMapper(), cert, store) is None


# -- UPN otherName ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "user"),
    [
        pytest.param([upn(utf8("dave@corp.example"))], "dave@corp.example", id="upn"),
        pytest.param(
            [upn(utf8("x@corp.example"), x509.ObjectIdentifier("1.2.3.4")), upn(utf8("dave@corp.example"))],
            "dave@corp.example",
            id="other-othername-skipped",
        ),
        pytest.param(
            [upn(utf8("dave@corp.example"), x509.ObjectIdentifier("1.2.3.4"))],
            None,
            id="other-othername-ignored",
        ),
        pytest.param([upn(utf8("ghost@corp.example"))], None, id="unknown-upn"),
        pytest.param([upn(b"\x16\x11dave@corp.example")], None, id="ia5string-not-utf8string"),
        pytest.param([upn(b"\x0c\x11" + b"\xff" * 17)], None, id="invalid-utf8"),
        pytest.param([x509.RFC822Name("dave@corp.example")], None, id="email-is-not-a-upn"),
    ],
)
def test_upn_mapper(pki: TestPKI, names: list[x509.GeneralName], user: str | None) -> None:
    store = users("dave@corp.example")
    assert mapped(UpnMapper(), with_san(pki, *names), store) == user


@pytest.mark.parametrize("size", [127, 128, 255, 256, 300], ids=lambda n: f"{n}-bytes")
def test_upn_mapper_long_form_length(pki: TestPKI, size: int) -> None:
    long_upn = "d" * (size - len("@corp.example")) + "@corp.example"
    assert len(long_upn) == size
    store = users(long_upn)
    assert mapped(UpnMapper(), with_san(pki, upn(utf8(long_upn))), store) == long_upn


def test_upn_from_the_testing_helper(pki: TestPKI) -> None:
    store = users("erin@corp.example")
    cert = pki.issue_client("erin", san_upns=("erin@corp.example",)).cert
    assert mapped(UpnMapper(), cert, store) == "erin@corp.example"


def test_upn_mapper_without_san(pki: TestPKI) -> None:
    assert mapped(UpnMapper(), pki.issue_client("nosan").cert, users("nosan")) is None


# -- subject ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attribute", "user_ids", "user"),
    [
        pytest.param(NameOID.COMMON_NAME, ("frank",), "frank", id="cn-default"),
        pytest.param(NameOID.COMMON_NAME, ("Frank",), None, id="cn-is-case-sensitive"),
        pytest.param(
            NameOID.ORGANIZATION_NAME, ("mtls_middleware test",), "mtls_middleware test", id="organization"
        ),
        pytest.param(
            None,
            ("CN=frank,O=mtls_middleware test",),
            "CN=frank,O=mtls_middleware test",
            id="whole-rfc4514-subject",
        ),
        pytest.param(None, ("frank",), None, id="whole-subject-not-the-cn"),
        pytest.param(NameOID.EMAIL_ADDRESS, ("frank",), None, id="attribute-absent"),
    ],
)
def test_subject_mapper(
    pki: TestPKI, attribute: x509.ObjectIdentifier | None, user_ids: tuple[str, ...], user: str | None
) -> None:
    cert = pki.issue_client("frank").cert
    assert mapped(SubjectMapper(attribute), cert, users(*user_ids)) == user


def test_subject_mapper_defaults_to_the_cn(pki: TestPKI) -> None:
    assert SubjectMapper().attribute == NameOID.COMMON_NAME
    assert mapped(SubjectMapper(), pki.issue_client("gina").cert, users("gina")) == "gina"


# -- through the middleware -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mapper", "user_id"),
    [
        pytest.param(SanEmailMapper(), "henry@example.org", id="san-email"),
        pytest.param(UpnMapper(), "henry@corp.example", id="upn"),
        pytest.param(SubjectMapper(), "henry", id="subject-cn"),
    ],
)
def test_mapper_through_the_middleware(pki: TestPKI, mapper: IdentityMapper, user_id: str) -> None:
    henry = pki.issue_client("henry", san_emails=("henry@example.org",), san_upns=("henry@corp.example",))
    store = users(user_id)  # no certificate registered: the mapper alone finds the user
    config = MTLSConfig(trust_roots=[pki.root.cert], store=store, revocation="off", identity_mapper=mapper)
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ[ENVIRON_KEY])
        start_response("200 OK", [])
        return [b""]

    leaf, intermediate = (c.public_bytes(serialization.Encoding.PEM).decode() for c in henry.chain)
    response = Client(MTLSMiddleware(app, config)).get(
        "/", environ_overrides={"SSL_CLIENT_CERT": leaf, "SSL_CLIENT_CERT_CHAIN_0": intermediate}
    )
    assert response.status_code == 200
    assert seen[0].user_id == user_id
    assert seen[0].org == "corp"


# -- Identity ---------------------------------------------------------------------------------


def test_identity_is_frozen_and_has_permissions(pki: TestPKI, alice: Issued) -> None:
    identity = Identity(
        user_id="alice",
        org="acme",
        fingerprint=alice.fingerprint,
        subject="CN=alice",
        issuer="CN=ca",
        serial="1",
        not_before=alice.cert.not_valid_before_utc,
        not_after=alice.cert.not_valid_after_utc,
        certificate=alice.cert,
        chain=(alice.cert, pki.root.cert),
        source="tls:environ",
        permissions=frozenset({"admin"}),
    )
    assert identity.has_permission("admin") is True
    assert identity.has_permission("root") is False
    assert identity.revocation == "off"
    with pytest.raises(dataclasses.FrozenInstanceError):
        identity.user_id = "mallory"  # type: ignore[misc]
    assert "BEGIN CERTIFICATE" not in repr(identity)


def test_environ_key() -> None:
    assert ENVIRON_KEY == "mtls_middleware.identity"


# -- require_certificate_login: apps with other login methods ---------------------------------


def _identity_for(store: MemoryStore, pki: TestPKI, alice: Issued) -> Identity:
    inner: list[Identity] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        inner.append(environ[ENVIRON_KEY])
        start_response("200 OK", [])
        return [b""]

    config = MTLSConfig(
        trust_roots=[pki.root.cert], intermediates=[pki.issuing.cert], store=store, revocation="off"
    )
    pem = alice.cert.public_bytes(serialization.Encoding.PEM).decode()
    Client(MTLSMiddleware(app, config)).get("/", environ_overrides={"SSL_CLIENT_CERT": pem})
    return inner[0]


@pytest.mark.parametrize(
    ("permissions", "with_certificate", "user", "refused"),
    [
        pytest.param(("enforce_mtls",), False, "alice", True, id="enforced-without-certificate"),
        pytest.param(("enforce_mtls",), True, "alice", False, id="enforced-with-own-certificate"),
        pytest.param(("enforce_mtls",), True, "carol", True, id="enforced-with-someone-elses-certificate"),
        pytest.param((), False, "alice", False, id="not-enforced"),
        pytest.param(("api_only",), False, "alice", False, id="other-permission"),
        pytest.param(("enforce_mtls",), False, "nobody", False, id="unknown-user"),
    ],
)
def test_require_certificate_login(
    pki: TestPKI, alice: Issued, permissions: tuple[str, ...], with_certificate: bool, user: str, refused: bool
) -> None:
    from mtls_middleware import NoCertificateError, Reason
    from mtls_middleware.identity import require_certificate_login

    store = MemoryStore()
    store.add_user("alice", org="acme", permissions=permissions)
    store.add_user("carol", org="acme", permissions=permissions)
    store.upload_certificate(alice.chain_pem, user_id="alice")
    identity = _identity_for(store, pki, alice) if with_certificate else None
    if refused:
        with pytest.raises(NoCertificateError) as caught:
            require_certificate_login(store, user, identity)
        assert caught.value.reason is Reason.NO_CERTIFICATE
    else:
        require_certificate_login(store, user, identity)

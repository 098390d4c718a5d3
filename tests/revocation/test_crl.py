"""revocation/crl.py: CRLs fetched over HTTP from a loopback server, or read from files."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mtls_middleware.errors import ConfigurationError, Reason
from mtls_middleware.revocation import crl as crl_module
from mtls_middleware.revocation.base import SourceFailure, StatusAnswer
from mtls_middleware.revocation.crl import CRLSource, IndexedCRL, load_crl
from mtls_middleware.revocation.fetch import Fetcher
from mtls_middleware.testing import Issued, TestPKI, crl_bytes, generate_key, issue_crl_signer, make_crl, name
from tests.revocation.crl_server import CRLServer, closed_port_url

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
REVOKED_AT = NOW - dt.timedelta(days=2)
PATH = "/issuing.crl"
UNKNOWN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.55555.1")


def _status(
    source: CRLSource,
    leaf: Issued,
    issuer: Issued,
    *,
    above: tuple[x509.Certificate, ...] = (),
    now: dt.datetime = NOW,
) -> StatusAnswer:
    return source.status(leaf.cert, issuer.cert, deadline=time.monotonic() + 5, now=now, above=above)


@dataclass
class Case:
    """One CRL scenario: the CRL served, how the server answers, how the source is set up."""

    crl: dict[str, Any] = field(default_factory=dict)  # make_crl options; "revoke_leaf" lists the leaf
    route: dict[str, Any] = field(default_factory=dict)  # CRLServer.set options
    source: dict[str, Any] = field(default_factory=dict)  # CRLSource options
    body: Callable[[bytes], bytes] | None = None  # transforms the served DER
    where: str = "cdp"  # cdp (the leaf names the URL), url (configured), file (local), down (closed port)
    expect: str = "good"  # good, revoked, failed


#: A partitioned CRL (issuingDistributionPoint, critical) that covers only keyCompromise.
ONLY_KEY_COMPROMISE = [
    (
        x509.IssuingDistributionPoint(
            None, None, False, False, frozenset({x509.ReasonFlags.key_compromise}), False, False
        ),
        True,
    )
]

CASES = [
    pytest.param(Case(), id="good"),
    pytest.param(Case(crl={"revoke_leaf": True}, expect="revoked"), id="revoked"),
    pytest.param(Case(crl={"next_update": NOW - dt.timedelta(minutes=30)}, expect="failed"), id="stale"),
    pytest.param(
        Case(crl={"this_update": NOW + dt.timedelta(hours=2)}, expect="failed"), id="this-update-future"
    ),
    pytest.param(Case(crl={"forge": True}, expect="failed"), id="forged-signature"),
    pytest.param(Case(crl={"issuer_name": name("Someone Else")}, expect="failed"), id="wrong-issuer"),
    pytest.param(
        Case(
            crl={"extensions": [(x509.UnrecognizedExtension(UNKNOWN_OID, b"\x05\x00"), True)]},
            expect="failed",
        ),
        id="unknown-critical-crl-extension",
    ),
    pytest.param(
        Case(crl={"extensions": [(x509.UnrecognizedExtension(UNKNOWN_OID, b"\x05\x00"), False)]}),
        id="unknown-noncritical-crl-extension",
    ),
    pytest.param(
        Case(
            crl={
                "revoke_other": True,
                "entry_extensions": [(x509.UnrecognizedExtension(UNKNOWN_OID, b"\x05\x00"), True)],
            },
            expect="failed",
        ),
        id="unknown-critical-entry-extension",
    ),
    pytest.param(
        Case(crl={"extensions": [(x509.DeltaCRLIndicator(1), True)]}, expect="failed"), id="delta-crl"
    ),
    pytest.param(
        Case(
            crl={
                "extensions": [
                    (x509.IssuingDistributionPoint(None, None, False, True, None, False, False), True)
                ]
            },
            expect="failed",
        ),
        id="idp-only-ca-certs",
    ),
    pytest.param(
        Case(
            crl={
                "extensions": ONLY_KEY_COMPROMISE
            },
            expect="failed",
        ),
        id="idp-only-some-reasons-not-listed",
    ),
    pytest.param(
        Case(
            crl={
                "revoke_leaf": True,
                "extensions": ONLY_KEY_COMPROMISE,
            },
            expect="revoked",
        ),
        id="idp-only-some-reasons-listed",
    ),
    pytest.param(Case(source={"max_bytes": 100}, expect="failed"), id="oversize"),
    pytest.param(Case(route={"status": 500}, expect="failed"), id="http-500"),
    pytest.param(Case(body=lambda der: b"\x30\x82garbage" + der[:20], expect="failed"), id="garbage-body"),
    pytest.param(Case(where="down", expect="failed"), id="server-down"),
    pytest.param(
        Case(route={"delay": 2.0}, source={"timeout": 0.3}, expect="failed"), id="slow-past-timeout"
    ),
    pytest.param(Case(body=lambda der: crl_bytes(x509.load_der_x509_crl(der), pem=True)), id="pem"),
    pytest.param(Case(crl={"revoke_leaf": True}, where="file", expect="revoked"), id="local-file-revoked"),
    pytest.param(Case(where="file"), id="local-file-good"),
    pytest.param(Case(where="url"), id="configured-url"),
]


@pytest.mark.parametrize("case", CASES)
def test_crl_scenarios(case: Case, pki: TestPKI, server: CRLServer, tmp_path: Path) -> None:
    url = server.url(PATH) if case.where != "down" else closed_port_url()
    leaf = pki.issue_client("crl-case", crl_url=url if case.where in ("cdp", "down") else None)
    options = dict(case.crl)
    revoked: list[Any] = []
    if options.pop("revoke_leaf", False):
        revoked.append((leaf.cert.serial_number, REVOKED_AT, x509.ReasonFlags.key_compromise))
    if options.pop("revoke_other", False):
        revoked.append(12345)
    if options.pop("forge", False):
        options["signer_key"] = generate_key()
    der = crl_bytes(make_crl(pki.issuing, revoked, **options))
    body = case.body(der) if case.body else der
    server.set(PATH, body, **case.route)
    source_options = dict(case.source)
    fetcher = Fetcher(timeout=source_options.pop("timeout", 2.0))
    if case.where == "file":
        path = tmp_path / "issuing.crl"
        path.write_bytes(body)
        source_options["files"] = (str(path),)
    if case.where == "url":
        source_options["urls"] = (url,)
    source = CRLSource(fetcher, **source_options)
    try:
        if case.expect == "failed":
            with pytest.raises(SourceFailure):
                _status(source, leaf, pki.issuing)
            return
        answer = _status(source, leaf, pki.issuing)
    finally:
        source.close()
    assert answer.method == "crl"
    assert answer.status == case.expect
    if case.expect == "revoked":
        assert answer.reason == "keyCompromise"
        assert answer.revoked_at == REVOKED_AT
    crl = load_crl(body)
    assert crl.next_update_utc is not None
    assert answer.expires == crl.next_update_utc.timestamp()


def test_locations_cdp_urls_configured_and_matching_files(
    pki: TestPKI, other_pki: TestPKI, tmp_path: Path
) -> None:
    mine, theirs = tmp_path / "mine.crl", tmp_path / "theirs.pem"
    mine.write_bytes(crl_bytes(make_crl(pki.issuing)))
    theirs.write_bytes(crl_bytes(make_crl(other_pki.issuing), pem=True))
    leaf = pki.issue_client("where", crl_url="http://crl.example/ca.crl")
    ldap = x509.DistributionPoint(
        [x509.UniformResourceIdentifier("ldap://dir.example/cn=ca")], None, None, None
    )
    ldap_leaf = pki.issue_client("ldap", extra_extensions=[(x509.CRLDistributionPoints([ldap]), False)])
    source = CRLSource(Fetcher(), files=(str(mine), str(theirs)), urls=("http://extra.example/all.crl",))
    assert source.locations(leaf.cert, pki.issuing.cert) == (
        str(mine),
        "http://crl.example/ca.crl",
        "http://extra.example/all.crl",
    )
    assert source.locations(ldap_leaf.cert, pki.issuing.cert) == (str(mine), "http://extra.example/all.crl")


@pytest.mark.parametrize(
    "content",
    [pytest.param(b"not a crl", id="garbage"), pytest.param(None, id="missing")],
)
def test_bad_local_file_is_a_configuration_error(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bad.crl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigurationError) as info:
        CRLSource(Fetcher(), files=(str(path),))
    assert info.value.reason is Reason.CONFIGURATION_ERROR


def test_index_answers_without_touching_the_parsed_crl(pki: TestPKI) -> None:
    serials = [1000 + 7 * i for i in range(2000)]
    serials += [0x80, 0xFF00, 2**159 - 1]  # a high bit that needs a sign octet; 20 octets
    crl = make_crl(pki.issuing, [(s, REVOKED_AT, x509.ReasonFlags.superseded) for s in serials])
    indexed = IndexedCRL(crl_bytes(crl), signer=pki.issuing.cert.public_key())
    assert len(indexed) == len(serials)
    assert all(s in indexed for s in serials)
    hit = indexed.lookup(1000 + 7 * 5)
    assert hit is not None
    assert hit.reason == "superseded"
    assert hit.revoked_at == REVOKED_AT

    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"lookup used the parsed CRL ({name}): a linear scan")

    indexed.crl = Untouchable()  # type: ignore[assignment]
    assert indexed.lookup(1001) is None
    assert indexed.lookup(10**30) is None
    assert indexed.lookup(1000 + 7 * 5) == hit  # decoded once, then served from the index


@pytest.mark.parametrize(
    ("when", "reason", "critical_reason"),
    [
        pytest.param(REVOKED_AT, x509.ReasonFlags.key_compromise, False, id="utctime-keycompromise"),
        pytest.param(REVOKED_AT, None, False, id="no-reason"),
        pytest.param(REVOKED_AT, x509.ReasonFlags.certificate_hold, True, id="critical-reason"),
        pytest.param(
            dt.datetime(2051, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc), x509.ReasonFlags.superseded, False,
            id="generalizedtime-after-2049",
        ),
        pytest.param(
            dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc), x509.ReasonFlags.unspecified, False,
            id="utctime-last-century",
        ),
    ],
)
def test_a_hit_is_decoded_from_the_entry_without_a_linear_scan(
    pki: TestPKI, when: dt.datetime, reason: x509.ReasonFlags | None, critical_reason: bool
) -> None:
    entry_extensions = [(x509.InvalidityDate(when), False)]  # another extension before the reason
    serials = [(1000 + i, when, None) for i in range(50)]
    crl = make_crl(pki.issuing, [*serials, (77777, when, None)], entry_extensions=entry_extensions)
    if reason is not None or critical_reason:
        builder = x509.RevokedCertificateBuilder().serial_number(77777).revocation_date(when)
        builder = builder.add_extension(x509.InvalidityDate(when), critical=False)
        if reason is not None:
            builder = builder.add_extension(x509.CRLReason(reason), critical=critical_reason)
        crl = (
            x509.CertificateRevocationListBuilder(
                issuer_name=pki.issuing.cert.subject,
                last_update=crl.last_update_utc,
                next_update=crl.next_update_utc,
                revoked_certificates=[*(e for e in crl if e.serial_number != 77777), builder.build()],
            )
            .sign(pki.issuing.key, None if pki.key_type == "ed25519" else hashes.SHA256())  # type: ignore[arg-type]
        )
    indexed = IndexedCRL(crl_bytes(crl))
    assert sum(e.serial_number == 77777 for e in crl) == 1
    library = crl.get_revoked_certificate_by_serial_number(77777)
    assert library is not None

    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the hit used the parsed CRL ({name}): a linear scan")

    indexed.crl = Untouchable()  # type: ignore[assignment]
    hit = indexed.lookup(77777)
    assert hit is not None
    assert hit.revoked_at == library.revocation_date_utc == when
    assert hit.reason == (reason.value if reason is not None else None)


def test_indexed_crl_refuses_a_wrong_signer(pki: TestPKI) -> None:
    with pytest.raises(ValueError, match="signature"):
        IndexedCRL(crl_bytes(make_crl(pki.issuing)), signer=pki.root.cert.public_key())


def test_fifty_concurrent_requests_for_a_new_crl_cause_one_fetch(pki: TestPKI, server: CRLServer) -> None:
    url = server.set(PATH, crl_bytes(make_crl(pki.issuing)), delay=0.3)
    leaf = pki.issue_client("many", crl_url=url)
    source = CRLSource(Fetcher(timeout=5))
    barrier = threading.Barrier(50)
    answers: list[str] = []

    def ask() -> None:
        barrier.wait()
        answers.append(_status(source, leaf, pki.issuing).status)

    threads = [threading.Thread(target=ask) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert answers == ["good"] * 50
    assert server.count(PATH) == 1


def test_cached_until_next_update(pki: TestPKI, server: CRLServer) -> None:
    url = server.set(PATH, crl_bytes(make_crl(pki.issuing)))
    leaf = pki.issue_client("cached", crl_url=url)
    source = CRLSource(Fetcher())
    first, second = _status(source, leaf, pki.issuing), _status(source, leaf, pki.issuing)
    assert (first.cached, second.cached) == (False, True)
    assert server.count(PATH) == 1


def test_refresh_ahead_of_expiry_runs_in_the_background(pki: TestPKI, server: CRLServer) -> None:
    # 9 of 10 minutes of life gone: inside the last tenth, so a lookup starts a refresh. Relative
    # to the wall clock of this test, not of the module's import: the cache compares nextUpdate
    # with the real time, and a long suite run would otherwise find this CRL already expired.
    now = dt.datetime.now(dt.timezone.utc)
    old = make_crl(
        pki.issuing, this_update=now - dt.timedelta(minutes=9), next_update=now + dt.timedelta(minutes=1)
    )
    gate = threading.Event()
    url = server.set(PATH, crl_bytes(old))
    leaf = pki.issue_client("refresh", crl_url=url)
    source = CRLSource(Fetcher(timeout=5))
    try:
        assert _status(source, leaf, pki.issuing, now=now).cached is False
        new = make_crl(pki.issuing, [leaf.cert.serial_number], this_update=now)
        server.set(PATH, crl_bytes(new), gate=gate)  # the refresh waits at the server until we open
        answer = _status(source, leaf, pki.issuing, now=now)
        # Answered from the current CRL while the refresh is still held at the server.
        assert (answer.status, answer.cached) == ("good", True)
        assert source.refreshes_running() == 1
        gate.set()
        for _ in range(100):
            if source.refreshes_running() == 0:
                break
            time.sleep(0.05)
        assert server.count(PATH) == 2
        assert _status(source, leaf, pki.issuing, now=now).status == "revoked"
    finally:
        gate.set()
        source.close()


def test_local_file_is_reread_when_it_changes(
    pki: TestPKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(crl_module, "_FILE_CHECK_INTERVAL", 0.0)
    leaf = pki.issue_client("file")
    path = tmp_path / "ca.crl"
    path.write_bytes(crl_bytes(make_crl(pki.issuing)))
    source = CRLSource(Fetcher(), files=(str(path),))
    assert _status(source, leaf, pki.issuing).status == "good"
    path.write_bytes(crl_bytes(make_crl(pki.issuing, [leaf.cert.serial_number]), pem=True))
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))
    assert _status(source, leaf, pki.issuing).status == "revoked"


# -- a CRL signed by a separate key of the same CA ------------------------------------------------
@pytest.fixture(scope="module")
def separate(pki: TestPKI) -> tuple[Issued, Issued]:
    """A CA certificate under the root and its CRL-signing certificate (same name, own key)."""
    ca = pki.issue_ca("Separate Keys CA")
    return ca, issue_crl_signer(pki, ca)


@pytest.mark.parametrize(
    ("signer_revoked", "crl_sign", "expect"),
    [
        pytest.param(False, True, "good", id="separate-key-good"),
        pytest.param(True, True, "failed", id="separate-key-signer-revoked"),
        pytest.param(False, False, "failed", id="separate-key-without-crlsign"),
    ],
)
def test_crl_signed_by_a_separate_key(
    pki: TestPKI,
    separate: tuple[Issued, Issued],
    tmp_path: Path,
    signer_revoked: bool,
    crl_sign: bool,
    expect: str,
) -> None:
    ca, signer = separate
    if not crl_sign:
        signer = issue_crl_signer(pki, ca, crl_sign=False)
    leaf = pki.issue_client("separate", issuer=ca)
    ca_crl = tmp_path / "ca.crl"
    ca_crl.write_bytes(crl_bytes(make_crl(ca, signer_key=signer.key)))
    root_crl = tmp_path / "root.crl"
    root_crl.write_bytes(crl_bytes(make_crl(pki.root, [signer.cert.serial_number] if signer_revoked else [])))
    source = CRLSource(Fetcher(), files=(str(ca_crl), str(root_crl)), signers=(signer.cert,))
    above = (pki.root.cert,)
    if expect == "failed":
        with pytest.raises(SourceFailure):
            _status(source, leaf, ca, above=above)
    else:
        assert _status(source, leaf, ca, above=above).status == "good"


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param({"next_update": NOW + dt.timedelta(days=365)}, id="forged-long-lived"),
        pytest.param(
            {"this_update": NOW + dt.timedelta(days=30), "next_update": NOW + dt.timedelta(days=365)},
            id="forged-from-the-future",
        ),
    ],
)
def test_a_refused_crl_is_not_cached_in_place_of_the_real_one(
    pki: TestPKI, server: CRLServer, forged: dict[str, Any]
) -> None:
    # One forged answer on the plain-HTTP path must not pin "unavailable" until its own nextUpdate,
    # nor (by a later thisUpdate) keep the authentic CRL from replacing it.
    url = server.set(PATH, crl_bytes(make_crl(pki.issuing, signer_key=generate_key(), **forged)))
    leaf = pki.issue_client("poisoned", crl_url=url)
    source = CRLSource(Fetcher())
    with pytest.raises(SourceFailure):
        _status(source, leaf, pki.issuing)
    assert source.cached(url) is None
    server.set(PATH, crl_bytes(make_crl(pki.issuing)))
    assert _status(source, leaf, pki.issuing).status == "good"
    assert _status(source, leaf, pki.issuing).cached is True


# -- revocation_max_age --------------------------------------------------------------------------
HOUR = dt.timedelta(hours=1)


def test_a_cached_crl_is_fetched_again_once_max_age_has_passed(pki: TestPKI, server: CRLServer) -> None:
    # nextUpdate a week away, max_age an hour: the copy must not be held (and refused) past the hour.
    now = dt.datetime.now(dt.timezone.utc)
    first = make_crl(pki.issuing, this_update=now - HOUR / 2, next_update=now + 7 * 24 * HOUR)
    url = server.set(PATH, crl_bytes(first))
    leaf = pki.issue_client("max age refetch", crl_url=url)
    source = CRLSource(Fetcher(timeout=5), max_age=HOUR.total_seconds())
    try:
        assert _status(source, leaf, pki.issuing, now=now).cached is False
        server.set(PATH, crl_bytes(make_crl(pki.issuing, [leaf.cert.serial_number], this_update=now)))
        later = now + 3 * HOUR / 4  # the first copy is 75 minutes old, the new one 45
        answer = _status(source, leaf, pki.issuing, now=later)
        assert (answer.status, answer.cached) == ("revoked", False)
        assert server.count(PATH) == 2
    finally:
        source.close()


def test_refresh_ahead_in_the_last_tenth_of_max_age(pki: TestPKI, server: CRLServer) -> None:
    # 57 of the 60 minutes max_age allows are gone, though nextUpdate is a week away.
    now = dt.datetime.now(dt.timezone.utc)
    old = make_crl(pki.issuing, this_update=now - dt.timedelta(minutes=57), next_update=now + 7 * 24 * HOUR)
    url = server.set(PATH, crl_bytes(old))
    leaf = pki.issue_client("max age refresh", crl_url=url)
    source = CRLSource(Fetcher(timeout=5), max_age=HOUR.total_seconds())
    try:
        assert _status(source, leaf, pki.issuing, now=now).cached is False
        server.set(PATH, crl_bytes(make_crl(pki.issuing, this_update=now)))
        assert _status(source, leaf, pki.issuing, now=now).cached is True  # and a refresh starts
        for _ in range(200):
            if source.refreshes_running() == 0 and server.count(PATH) == 2:
                break
            time.sleep(0.02)
        assert server.count(PATH) == 2
        held = source.cached(url)
        assert held is not None
        assert held.this_update == now.replace(microsecond=0)
    finally:
        source.close()


@pytest.mark.parametrize("revoked", [pytest.param(False, id="good"), pytest.param(True, id="revoked")])
def test_an_answer_from_a_crl_expires_no_later_than_max_age(
    pki: TestPKI, server: CRLServer, revoked: bool
) -> None:
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    leaf = pki.issue_client(f"max age expiry {revoked}", crl_url=server.url(PATH))
    serials = [leaf.cert.serial_number] if revoked else []
    server.set(PATH, crl_bytes(make_crl(pki.issuing, serials, this_update=now, next_update=now + 7 * 24 * HOUR)))
    answer = _status(CRLSource(Fetcher(), max_age=HOUR.total_seconds()), leaf, pki.issuing, now=now)
    assert answer.status == ("revoked" if revoked else "good")
    assert answer.expires == (now + HOUR).timestamp()

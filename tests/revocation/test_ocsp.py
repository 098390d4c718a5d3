"""OCSPSource against a real `openssl ocsp` responder and against a responder of ours for faults."""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID

from mtls_middleware.errors import ConfigurationError
from mtls_middleware.revocation.base import SourceFailure, StatusSource
from mtls_middleware.revocation.fetch import Fetcher
from mtls_middleware.revocation.ocsp import OCSPFailure, OCSPSource
from mtls_middleware.testing import Issued, TestPKI
from tests.conftest import REQUIRE_SERVICES, require_service

from .ocsp_server import OCSPTestResponder, make_responder_certificate
from .openssl_ocsp import IndexEntry, NamespaceUnavailable, OpenSSLOCSPResponder

#: Short enough that the "slow" fault costs little; long enough for a loaded CI machine.
TIMEOUT = 1.0


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def deadline(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def failure(source: OCSPSource, cert: x509.Certificate, issuer: x509.Certificate) -> OCSPFailure:
    """The failure ``source.status`` raises now (it must raise one; an OCSPFailure is a SourceFailure)."""
    with pytest.raises(OCSPFailure) as info:
        source.status(cert, issuer, deadline=deadline(), now=utcnow())
    assert isinstance(info.value, SourceFailure)
    return info.value


@pytest.fixture
def fetcher() -> Fetcher:
    return Fetcher(timeout=TIMEOUT)


@pytest.fixture
def responder(pki: TestPKI) -> Iterator[OCSPTestResponder]:
    with OCSPTestResponder(pki.issuing) as r:
        yield r


@pytest.fixture
def leaf(pki: TestPKI, responder: OCSPTestResponder) -> Issued:
    """A new client certificate whose AIA names ``responder``."""
    return pki.issue_client("ocsp leaf", ocsp_url=responder.url)


# --- a real responder: openssl ocsp -------------------------------------------------------------

REVOKED_AT = (utcnow() - dt.timedelta(hours=3)).replace(microsecond=0)


@pytest.fixture(scope="module")
def openssl_certs(pki: TestPKI) -> dict[str, Issued]:
    """Certificates known to the openssl responder as good and revoked, and one it never saw."""
    return {name: pki.issue_client(f"openssl {name}") for name in ("good", "revoked", "unknown")}


@pytest.fixture(scope="module", params=["delegated", "issuer"])
def openssl_responder(
    request: pytest.FixtureRequest,
    pki: TestPKI,
    openssl_certs: dict[str, Issued],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OpenSSLOCSPResponder]:
    """`openssl ocsp` signing with a delegated responder certificate, or with the CA itself."""
    openssl = require_service("openssl")
    unshare = require_service("unshare", "unshare (util-linux) is needed to keep openssl ocsp on loopback")
    signer = (
        make_responder_certificate(pki.issuing, "openssl OCSP responder")
        if request.param == "delegated"
        else None
    )
    entries = [
        IndexEntry.for_certificate(openssl_certs["good"].cert),
        IndexEntry.for_certificate(
            openssl_certs["revoked"].cert, revoked_at=REVOKED_AT, reason="keyCompromise"
        ),
    ]
    responder = OpenSSLOCSPResponder(
        ca=pki.issuing,
        signer=signer,
        entries=entries,
        directory=tmp_path_factory.mktemp(f"openssl-ocsp-{request.param}"),
        nmin=5,
        openssl=openssl,
        unshare=unshare,
    )
    try:
        responder.start()
    except NamespaceUnavailable as exc:
        message = f"openssl ocsp binds every interface; no network namespace to confine it: {exc}"
        if REQUIRE_SERVICES:
            pytest.fail(f"MTLS_REQUIRE_SERVICES=1 but {message}", pytrace=False)
        pytest.skip(message)
    yield responder
    responder.stop()


@pytest.mark.services
@pytest.mark.parametrize(
    ("which", "status", "reason"),
    [
        pytest.param("good", "good", None, id="good"),
        pytest.param("revoked", "revoked", "keyCompromise", id="revoked"),
        pytest.param("unknown", "unknown", None, id="unknown"),
    ],
)
def test_openssl_responder_statuses(
    openssl_responder: OpenSSLOCSPResponder,
    openssl_certs: dict[str, Issued],
    pki: TestPKI,
    fetcher: Fetcher,
    which: str,
    status: str,
    reason: str | None,
) -> None:
    source = OCSPSource(fetcher, responder=openssl_responder.url)
    now = utcnow()
    answer = source.status(openssl_certs[which].cert, pki.issuing.cert, deadline=deadline(), now=now)
    assert (answer.status, answer.method, answer.source) == (status, "ocsp", openssl_responder.url)
    assert answer.reason == reason
    assert answer.revoked_at == (REVOKED_AT if status == "revoked" else None)
    # -nmin 5: nextUpdate five minutes after thisUpdate, and the answer may be reused until then.
    assert answer.next_update is not None
    assert answer.this_update is not None
    assert answer.next_update - answer.this_update == dt.timedelta(minutes=5)
    assert answer.expires == answer.next_update.timestamp()
    assert answer.cached is False


@pytest.mark.services
@pytest.mark.parametrize(
    ("nonce", "method"),
    [
        pytest.param(False, "GET", id="small-request-uses-GET"),
        pytest.param(True, "POST", id="nonce-forces-POST"),
    ],
)
def test_openssl_responder_get_and_post(
    openssl_responder: OpenSSLOCSPResponder,
    openssl_certs: dict[str, Issued],
    pki: TestPKI,
    fetcher: Fetcher,
    nonce: bool,
    method: str,
) -> None:
    before = len(openssl_responder.request_lines())
    source = OCSPSource(fetcher, responder=openssl_responder.url, nonce=nonce)
    answer = source.status(openssl_certs["good"].cert, pki.issuing.cert, deadline=deadline(), now=utcnow())
    assert answer.status == "good"  # with a nonce: openssl echoed it, or this would be a failure
    lines = openssl_responder.request_lines()[before:]
    assert [line.split()[0] for line in lines] == [method]


@pytest.mark.services
def test_openssl_responder_listens_on_loopback_only(openssl_responder: OpenSSLOCSPResponder) -> None:
    # openssl itself lives in another network namespace: its [::]:port is not one of ours.
    assert os.readlink(f"/proc/{openssl_responder.openssl_pid}/ns/net") != os.readlink("/proc/self/ns/net")
    # What we reach it by is a socket on 127.0.0.1 in our namespace, and no wildcard listener of
    # openssl's appears here.
    listeners = _listening_sockets()
    assert ("0100007F", openssl_responder.port) in listeners  # 127.0.0.1, as /proc/net/tcp writes it
    assert not [addr for addr, port in listeners if port == 8080 and addr.strip("0") == ""]


def _listening_sockets() -> set[tuple[str, int]]:
    found = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                addr, port = fields[1].split(":")
                found.add((addr, int(port, 16)))
    return found


# --- our responder: answers ---------------------------------------------------------------------


def test_good_from_the_aia_responder_by_get(
    responder: OCSPTestResponder, leaf: Issued, pki: TestPKI, fetcher: Fetcher
) -> None:
    source = OCSPSource(fetcher)
    assert isinstance(source, StatusSource)
    assert source.locations(leaf.cert, pki.issuing.cert) == (responder.url,)
    answer = source.status(leaf.cert, pki.issuing.cert, deadline=deadline(), now=utcnow())
    assert (answer.status, answer.source, answer.cached) == ("good", responder.url, False)
    assert responder.methods == ["GET"]


def test_revoked_carries_reason_and_time(
    responder: OCSPTestResponder, leaf: Issued, pki: TestPKI, fetcher: Fetcher
) -> None:
    when = (utcnow() - dt.timedelta(days=1)).replace(microsecond=0)
    responder.set_status(
        leaf.cert.serial_number, "revoked", revoked_at=when, reason=x509.ReasonFlags.superseded
    )
    answer = OCSPSource(fetcher).status(leaf.cert, pki.issuing.cert, deadline=deadline(), now=utcnow())
    assert (answer.status, answer.revoked_at, answer.reason) == ("revoked", when, "superseded")


def test_unknown_is_an_answer(
    responder: OCSPTestResponder, leaf: Issued, pki: TestPKI, fetcher: Fetcher
) -> None:
    responder.set_status(leaf.cert.serial_number, "unknown")
    answer = OCSPSource(fetcher).status(leaf.cert, pki.issuing.cert, deadline=deadline(), now=utcnow())
    assert answer.status == "unknown"


@pytest.mark.parametrize(
    ("by_key", "include_signer"),
    [
        pytest.param(False, True, id="by-name"),
        pytest.param(True, True, id="by-key"),
    ],
)
def test_delegated_responder_accepted(
    pki: TestPKI, fetcher: Fetcher, by_key: bool, include_signer: bool
) -> None:
    delegate = make_responder_certificate(pki.issuing)
    with OCSPTestResponder(pki.issuing, signer=delegate, by_key=by_key, include_signer=include_signer) as r:
        leaf = pki.issue_client("delegated", ocsp_url=r.url)
        answer = OCSPSource(fetcher).status(leaf.cert, pki.issuing.cert, deadline=deadline(), now=utcnow())
    assert answer.status == "good"


def test_delegated_responder_must_be_in_the_response(pki: TestPKI, fetcher: Fetcher) -> None:
    delegate = make_responder_certificate(pki.issuing)
    with OCSPTestResponder(pki.issuing, signer=delegate, include_signer=False) as r:
        leaf = pki.issue_client("delegated", ocsp_url=r.url)
        assert failure(OCSPSource(fetcher), leaf.cert, pki.issuing.cert).kind == "unauthorized-signer"


@pytest.mark.parametrize("by_key", [pytest.param(False, id="by-name"), pytest.param(True, id="by-key")])
@pytest.mark.parametrize(
    "include_signer", [pytest.param(True, id="included"), pytest.param(False, id="not-included")]
)
def test_pinned_responder_accepted_though_not_issued_by_the_issuer(
    pki: TestPKI, other_pki: TestPKI, fetcher: Fetcher, by_key: bool, include_signer: bool
) -> None:
    pinned = make_responder_certificate(other_pki.issuing, "pinned responder")
    with OCSPTestResponder(pki.issuing, signer=pinned, by_key=by_key, include_signer=include_signer) as r:
        leaf = pki.issue_client("pinned", ocsp_url=r.url)
        answer = OCSPSource(fetcher, pinned=[pinned.cert]).status(
            leaf.cert, pki.issuing.cert, deadline=deadline(), now=utcnow()
        )
        assert answer.status == "good"
        # The same response without the pin: a responder the issuer never delegated to.
        assert failure(OCSPSource(fetcher), leaf.cert, pki.issuing.cert).kind == "unauthorized-signer"


@pytest.mark.parametrize(
    ("fault", "options"),
    [
        pytest.param("sha256-certid", {}, id="certid-hashed-with-sha256"),
        pytest.param("future", {"clock_skew": 7200}, id="thisUpdate-ahead-within-skew"),
        pytest.param("stale", {"clock_skew": 7200}, id="nextUpdate-past-within-skew"),
        pytest.param("old", {}, id="old-thisUpdate-without-max-age"),
    ],
)
def test_tolerated_responses(
    responder: OCSPTestResponder,
    leaf: Issued,
    pki: TestPKI,
    fetcher: Fetcher,
    fault: str,
    options: dict[str, float],
) -> None:
    responder.fault = fault
    answer = OCSPSource(fetcher, **options).status(
        leaf.cert, pki.issuing.cert, deadline=deadline(), now=utcnow()
    )  # type: ignore[arg-type]
    assert answer.status == "good"


@pytest.mark.parametrize(
    ("nonce", "method"),
    [pytest.param(False, "GET", id="no-nonce-GET"), pytest.param(True, "POST", id="nonce-POST")],
)
def test_nonce_forces_post_and_is_checked(
    responder: OCSPTestResponder, leaf: Issued, pki: TestPKI, fetcher: Fetcher, nonce: bool, method: str
) -> None:
    answer = OCSPSource(fetcher, nonce=nonce).status(
        leaf.cert, pki.issuing.cert, deadline=deadline(), now=utcnow()
    )
    assert answer.status == "good"
    assert responder.methods == [method]


# --- our responder: faults ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "options", "kind"),
    [
        pytest.param("slow", {}, "timeout", id="slow-past-the-timeout"),
        pytest.param("http-500", {}, "http", id="http-500"),
        pytest.param("garbage", {}, "malformed", id="garbage-body"),
        pytest.param("oversize", {"max_bytes": 4096}, "too-large", id="oversize-body"),
        pytest.param("try-later", {}, "status", id="responseStatus-tryLater"),
        pytest.param("wrong-key", {}, "signature", id="signed-by-a-wrong-key"),
        pytest.param("dsa", {}, "signature", id="unsupported-signature-algorithm"),
        pytest.param("delegate-no-eku", {}, "unauthorized-signer", id="delegate-without-ocsp-signing-eku"),
        pytest.param("delegate-other-ca", {}, "unauthorized-signer", id="delegate-issued-by-another-ca"),
        pytest.param("delegate-expired", {}, "unauthorized-signer", id="delegate-expired"),
        pytest.param("stale", {}, "stale", id="nextUpdate-past"),
        pytest.param("old", {"max_age": 3600}, "stale", id="thisUpdate-older-than-max-age"),
        pytest.param("future", {}, "future", id="thisUpdate-in-the-future"),
        pytest.param("nonce-mismatch", {"nonce": True}, "nonce", id="nonce-mismatch"),
        pytest.param("nonce-missing", {"nonce": True}, "nonce", id="nonce-not-echoed"),
        pytest.param("wrong-serial", {}, "certid", id="answer-for-another-serial"),
        pytest.param("wrong-issuer-name", {}, "certid", id="answer-for-another-issuer-name"),
        pytest.param("wrong-issuer-key", {}, "certid", id="answer-for-another-issuer-key"),
    ],
)
def test_faults_are_source_failures(
    responder: OCSPTestResponder,
    leaf: Issued,
    pki: TestPKI,
    fetcher: Fetcher,
    fault: str,
    options: dict[str, object],
    kind: str,
) -> None:
    responder.fault = fault
    source = OCSPSource(fetcher, **options)  # type: ignore[arg-type]
    error = failure(source, leaf.cert, pki.issuing.cert)
    assert error.kind == kind, error.detail
    assert error.source == responder.url
    assert responder.requests == 1


def test_responder_down(responder: OCSPTestResponder, leaf: Issued, pki: TestPKI, fetcher: Fetcher) -> None:
    responder.stop()
    assert failure(OCSPSource(fetcher), leaf.cert, pki.issuing.cert).kind == "unreachable"


def test_no_responder_at_all(pki: TestPKI, fetcher: Fetcher) -> None:
    plain = pki.issue_client("no aia")
    source = OCSPSource(fetcher)
    assert source.locations(plain.cert, pki.issuing.cert) == ()
    assert failure(source, plain.cert, pki.issuing.cert).kind == "no-responder"


def test_deadline_already_passed(
    responder: OCSPTestResponder, leaf: Issued, pki: TestPKI, fetcher: Fetcher
) -> None:
    with pytest.raises(OCSPFailure) as info:
        OCSPSource(fetcher).status(leaf.cert, pki.issuing.cert, deadline=time.monotonic() - 1, now=utcnow())
    assert info.value.kind == "timeout"
    assert responder.requests == 0


def _two_responders(pki: TestPKI, first: str, second: str) -> Issued:
    aia = x509.AuthorityInformationAccess(
        [
            x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(url))
            for url in ("ldap://ldap.example/ocsp", first, second)
        ]
    )
    return pki.issue_client("two responders", extra_extensions=[(aia, False)])


def test_locations_are_tried_in_order_until_one_answers(
    responder: OCSPTestResponder, pki: TestPKI, fetcher: Fetcher
) -> None:
    down = f"http://127.0.0.1:{_closed_port()}/"
    leaf = _two_responders(pki, down, responder.url)
    source = OCSPSource(fetcher)
    assert source.locations(leaf.cert, pki.issuing.cert) == (down, responder.url)  # ldap: skipped
    answer = source.status(leaf.cert, pki.issuing.cert, deadline=deadline(), now=utcnow())
    assert (answer.status, answer.source) == ("good", responder.url)


def test_every_location_failing_is_one_failure(
    responder: OCSPTestResponder, pki: TestPKI, fetcher: Fetcher
) -> None:
    down = f"http://127.0.0.1:{_closed_port()}/"
    leaf = _two_responders(pki, down, responder.url)
    responder.fault = "wrong-key"
    error = failure(OCSPSource(fetcher), leaf.cert, pki.issuing.cert)
    assert error.kind == "multiple"
    assert [f.kind for f in error.failures] == ["unreachable", "signature"]
    assert down in error.detail
    assert responder.url in error.detail


def test_override_replaces_the_aia(responder: OCSPTestResponder, pki: TestPKI, fetcher: Fetcher) -> None:
    leaf = pki.issue_client("aia elsewhere", ocsp_url=f"http://127.0.0.1:{_closed_port()}/")
    source = OCSPSource(fetcher, responder=responder.url)
    assert source.locations(leaf.cert, pki.issuing.cert) == (responder.url,)
    assert source.status(leaf.cert, pki.issuing.cert, deadline=deadline(), now=utcnow()).status == "good"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- cache and single flight --------------------------------------------------------------------


def test_cache_hit_until_next_update_then_refetch(
    responder: OCSPTestResponder, leaf: Issued, pki: TestPKI, fetcher: Fetcher
) -> None:
    source = OCSPSource(fetcher, clock_skew=0)
    now = utcnow()
    first = source.status(leaf.cert, pki.issuing.cert, deadline=deadline(), now=now)
    assert first.next_update is not None
    assert first.expires == first.next_update.timestamp()
    assert (first.cached, responder.requests) == (False, 1)

    again = source.status(leaf.cert, pki.issuing.cert, deadline=deadline(), now=now + dt.timedelta(minutes=1))
    assert (again.cached, again.elapsed, again.status, responder.requests) == (True, 0.0, "good", 1)

    # Past nextUpdate the cached answer is spent: the responder (whose clock we move along) is asked.
    later = first.next_update + dt.timedelta(seconds=1)
    responder.clock_offset = later - now
    refreshed = source.status(leaf.cert, pki.issuing.cert, deadline=deadline(), now=later)
    assert (refreshed.cached, responder.requests) == (False, 2)


def test_answer_without_next_update_is_not_cached(
    responder: OCSPTestResponder, leaf: Issued, pki: TestPKI, fetcher: Fetcher
) -> None:
    responder.fault = "no-next-update"
    source = OCSPSource(fetcher)
    now = utcnow()
    first = source.status(leaf.cert, pki.issuing.cert, deadline=deadline(), now=now)
    assert (first.status, first.next_update, first.expires) == ("good", None, now.timestamp())
    assert source.status(leaf.cert, pki.issuing.cert, deadline=deadline(), now=now).cached is False
    assert responder.requests == 2


def test_max_age_bounds_the_cache(
    responder: OCSPTestResponder, leaf: Issued, pki: TestPKI, fetcher: Fetcher
) -> None:
    answer = OCSPSource(fetcher, max_age=60).status(
        leaf.cert, pki.issuing.cert, deadline=deadline(), now=utcnow()
    )
    assert answer.this_update is not None
    assert answer.expires == answer.this_update.timestamp() + 60


def test_failures_are_not_cached(
    responder: OCSPTestResponder, leaf: Issued, pki: TestPKI, fetcher: Fetcher
) -> None:
    source = OCSPSource(fetcher)
    responder.fault = "http-500"
    failure(source, leaf.cert, pki.issuing.cert)
    responder.fault = None
    assert source.status(leaf.cert, pki.issuing.cert, deadline=deadline(), now=utcnow()).status == "good"
    assert responder.requests == 2


def test_cache_disabled(responder: OCSPTestResponder, leaf: Issued, pki: TestPKI, fetcher: Fetcher) -> None:
    source = OCSPSource(fetcher, cache_size=0)
    for _ in range(2):
        assert source.status(leaf.cert, pki.issuing.cert, deadline=deadline(), now=utcnow()).cached is False
    assert responder.requests == 2


def test_fifty_concurrent_checks_make_one_fetch(
    responder: OCSPTestResponder, leaf: Issued, pki: TestPKI, fetcher: Fetcher
) -> None:
    responder.delay = 0.3  # every caller arrives while the one fetch is still in flight
    source = OCSPSource(fetcher)
    start = threading.Barrier(50)
    answers: list[str] = []
    errors: list[BaseException] = []

    def check() -> None:
        start.wait()
        try:
            answers.append(
                source.status(leaf.cert, pki.issuing.cert, deadline=deadline(), now=utcnow()).status
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=check) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert errors == []
    assert answers == ["good"] * 50
    assert responder.requests == 1


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"responder": "ldap://ocsp.example/"}, id="non-http-responder"),
        pytest.param({"responder": "http://"}, id="responder-without-host"),
        pytest.param({"max_bytes": 0}, id="zero-size-cap"),
        pytest.param({"clock_skew": -1}, id="negative-skew"),
        pytest.param({"max_age": 0}, id="zero-max-age"),
        pytest.param({"cache_size": -1}, id="negative-cache"),
        pytest.param({"pinned": [b"-----BEGIN CERTIFICATE-----"]}, id="pinned-not-a-certificate"),
    ],
)
def test_bad_configuration(fetcher: Fetcher, options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        OCSPSource(fetcher, **options)  # type: ignore[arg-type]


def test_a_waiter_gives_up_at_its_own_deadline(
    responder: OCSPTestResponder, leaf: Issued, pki: TestPKI, fetcher: Fetcher
) -> None:
    responder.delay = 1.0
    source = OCSPSource(Fetcher(timeout=5))
    leader: list[str] = []
    thread = threading.Thread(
        target=lambda: leader.append(
            source.status(leaf.cert, pki.issuing.cert, deadline=deadline(), now=utcnow()).status
        )
    )
    thread.start()
    give_up = time.monotonic() + 5
    while responder.requests == 0 and time.monotonic() < give_up:  # until the leader's fetch is in flight
        time.sleep(0.01)
    with pytest.raises(OCSPFailure) as info:
        source.status(leaf.cert, pki.issuing.cert, deadline=deadline(0.2), now=utcnow())
    assert info.value.kind == "timeout"
    thread.join(timeout=10)
    assert leader == ["good"]
    assert responder.requests == 1  # the waiter asked no responder of its own

"""revocation/checker.py: the policy over OCSP and CRL sources, per mode and scope."""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from mtls_middleware.errors import ConfigurationError, Reason, RevocationError
from mtls_middleware.revocation import (
    RevocationChecker,
    RevocationOutcome,
    RevocationPolicy,
    SourceFailure,
    StatusAnswer,
)
from mtls_middleware.revocation.base import Method
from mtls_middleware.testing import Issued, TestPKI, crl_bytes, generate_key, make_crl
from tests.revocation.crl_server import CRLServer, closed_port_url

PATH = "/issuing.crl"


def _chain(leaf: Issued, pki: TestPKI) -> tuple[x509.Certificate, ...]:
    return (leaf.cert, pki.issuing.cert, pki.root.cert)


def _checker(mode: str = "require", **options: Any) -> RevocationChecker:
    options.setdefault("ocsp", False)
    return RevocationChecker(RevocationPolicy(mode=mode, **options))  # type: ignore[arg-type]


def _verdict(checker: RevocationChecker, chain: tuple[x509.Certificate, ...]) -> str:
    """The reason code of a refusal, or the outcome's summary."""
    try:
        return checker.check(chain).summary
    except RevocationError as exc:
        return exc.reason.value
    finally:
        checker.close()


# -- faults x modes -------------------------------------------------------------------------------
FAULTS: dict[str, Callable[[TestPKI, Issued], dict[str, Any]]] = {
    "good": lambda pki, leaf: {"crl": make_crl(pki.issuing)},
    "revoked": lambda pki, leaf: {"crl": make_crl(pki.issuing, [leaf.cert.serial_number])},
    "stale": lambda pki, leaf: {
        "crl": make_crl(pki.issuing, next_update=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1))
    },
    "forged": lambda pki, leaf: {"crl": make_crl(pki.issuing, signer_key=generate_key())},
    "http-500": lambda pki, leaf: {"crl": make_crl(pki.issuing), "status": 500},
}
EXPECTED = {
    # fault:          require                    soft-fail                                   off
    "good": ("crl:good", "crl:good", "off"),
    "revoked": ("certificate_revoked", "certificate_revoked", "off"),
    "stale": ("revocation_unavailable", "soft-fail:revocation_unavailable", "off"),
    "forged": ("revocation_unavailable", "soft-fail:revocation_unavailable", "off"),
    "http-500": ("revocation_unavailable", "soft-fail:revocation_unavailable", "off"),
    "server-down": ("revocation_unavailable", "soft-fail:revocation_unavailable", "off"),
    "no-source": ("no_revocation_source", "soft-fail:no_revocation_source", "off"),
}


@pytest.mark.parametrize(
    ("fault", "mode", "expected"),
    [
        pytest.param(fault, mode, EXPECTED[fault][i], id=f"{fault}-{mode}")
        for fault in EXPECTED
        for i, mode in enumerate(("require", "soft-fail", "off"))
    ],
)
def test_verdict_per_fault_and_mode(
    pki: TestPKI, server: CRLServer, fault: str, mode: str, expected: str
) -> None:
    if fault == "no-source":
        leaf = pki.issue_client("nothing")
    elif fault == "server-down":
        leaf = pki.issue_client("down", crl_url=closed_port_url())
    else:
        leaf = pki.issue_client(fault, crl_url=server.url(PATH))
        setup = FAULTS[fault](pki, leaf)
        server.set(PATH, crl_bytes(setup["crl"]), status=setup.get("status", 200))
    checker = _checker(mode, scope="leaf")  # the leaf is what these faults are about
    assert _verdict(checker, _chain(leaf, pki)) == expected


def test_soft_fail_outcome_expires_soon(pki: TestPKI) -> None:
    leaf = pki.issue_client("soft", crl_url=closed_port_url())
    outcome = _checker("soft-fail", scope="leaf").check(_chain(leaf, pki))
    assert outcome.summary == "soft-fail:revocation_unavailable"
    assert outcome.expires <= time.time() + 61
    assert [(c.method, c.status) for c in outcome.checks] == [("crl", "failed")]


# -- scope ----------------------------------------------------------------------------------------
@pytest.fixture
def revoked_intermediate(
    pki: TestPKI, tmp_path: Path
) -> tuple[tuple[x509.Certificate, ...], tuple[str, ...]]:
    """A chain whose intermediate the root's CRL lists as revoked; the leaf itself is good."""
    ca = pki.issue_ca("Revoked Sub CA")
    leaf = pki.issue_client("under-revoked", issuer=ca)
    root_crl, ca_crl = tmp_path / "root.crl", tmp_path / "ca.crl"
    root_crl.write_bytes(
        crl_bytes(make_crl(pki.root, [(ca.cert.serial_number, None, x509.ReasonFlags.ca_compromise)]))
    )
    ca_crl.write_bytes(crl_bytes(make_crl(ca)))
    return (leaf.cert, ca.cert, pki.root.cert), (str(root_crl), str(ca_crl))


@pytest.mark.parametrize(
    ("scope", "expected"),
    [pytest.param("chain", "certificate_revoked", id="chain"), pytest.param("leaf", "crl:good", id="leaf")],
)
def test_revoked_intermediate_per_scope(
    revoked_intermediate: tuple[tuple[x509.Certificate, ...], tuple[str, ...]], scope: str, expected: str
) -> None:
    chain, files = revoked_intermediate
    assert _verdict(_checker(scope=scope, crl_files=files), chain) == expected


def test_revoked_detail_names_certificate_method_time_and_reason(
    revoked_intermediate: tuple[tuple[x509.Certificate, ...], tuple[str, ...]],
) -> None:
    chain, files = revoked_intermediate
    with pytest.raises(RevocationError) as info:
        _checker(crl_files=files).check(chain)
    error = info.value
    assert error.reason is Reason.CERTIFICATE_REVOKED
    assert (error.context["index"], error.context["method"]) == (1, "crl")
    assert error.context["revocation_reason"] == "cACompromise"
    assert error.context["source"] == files[0]


def test_chain_scope_checks_every_certificate_but_the_anchor(
    revoked_intermediate: tuple[tuple[x509.Certificate, ...], tuple[str, ...]], pki: TestPKI, tmp_path: Path
) -> None:
    chain, files = revoked_intermediate
    good_root = tmp_path / "good-root.crl"
    good_root.write_bytes(crl_bytes(make_crl(pki.root)))
    outcome = _checker(crl_files=(str(good_root), files[1])).check(chain)
    assert outcome.summary == "crl:good,crl:good"
    assert [c.status for c in outcome.checks] == ["good", "good"]
    assert math.isfinite(outcome.expires)
    assert "crl good" in outcome.describe()


# -- order: OCSP first, the CRL as fallback --------------------------------------------------------
class StubOCSP:
    """Stands in for the OCSP source (another module): answers a fixed status or fails."""

    method: Method = "ocsp"

    def __init__(self, status: str | None) -> None:
        self.answer = status
        self.calls = 0

    def locations(self, cert: x509.Certificate, issuer: x509.Certificate) -> tuple[str, ...]:
        return ("http://ocsp.test/",)

    def status(
        self,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        *,
        deadline: float,
        now: dt.datetime,
        above: Sequence[x509.Certificate] = (),
        where: tuple[str, ...] | None = None,
    ) -> StatusAnswer:
        self.calls += 1
        if self.answer is None:
            raise SourceFailure("http://ocsp.test/", "responder down")
        return StatusAnswer(
            status=self.answer, method="ocsp", source="http://ocsp.test/", expires=time.time() + 600
        )  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ocsp_status", "expected", "crl_fetches"),
    [
        pytest.param("good", "ocsp:good", 0, id="ocsp-good-crl-not-asked"),
        pytest.param("revoked", "certificate_revoked", 0, id="ocsp-revoked"),
        pytest.param("unknown", "crl:good", 1, id="ocsp-unknown-falls-back-to-crl"),
        pytest.param(None, "crl:good", 1, id="ocsp-failed-falls-back-to-crl"),
    ],
)
def test_ocsp_first_then_crl(
    pki: TestPKI, server: CRLServer, ocsp_status: str | None, expected: str, crl_fetches: int
) -> None:
    leaf = pki.issue_client("order", crl_url=server.set(PATH, crl_bytes(make_crl(pki.issuing))))
    stub = StubOCSP(ocsp_status)
    checker = RevocationChecker(RevocationPolicy(scope="leaf"), ocsp=stub)
    assert _verdict(checker, _chain(leaf, pki)) == expected
    assert stub.calls == 1
    assert server.count(PATH) == crl_fetches


def test_ocsp_off_in_policy_ignores_the_ocsp_source(pki: TestPKI, server: CRLServer) -> None:
    leaf = pki.issue_client("no-ocsp", crl_url=server.set(PATH, crl_bytes(make_crl(pki.issuing))))
    stub = StubOCSP("revoked")
    checker = RevocationChecker(RevocationPolicy(scope="leaf", ocsp=False), ocsp=stub)
    assert _verdict(checker, _chain(leaf, pki)) == "crl:good"
    assert stub.calls == 0


# -- deadline -------------------------------------------------------------------------------------
def test_deadline_bounds_all_sources(pki: TestPKI, server: CRLServer) -> None:
    cdp = server.set("/slow-a.crl", crl_bytes(make_crl(pki.issuing)), delay=5.0)
    extra = server.set("/slow-b.crl", crl_bytes(make_crl(pki.issuing)), delay=5.0)
    leaf = pki.issue_client("slow", crl_url=cdp)
    checker = _checker(scope="leaf", crl_urls=(extra,), timeout=0.5, deadline=0.8)
    with pytest.raises(RevocationError) as info:
        checker.check(_chain(leaf, pki))
    checker.close()
    assert info.value.reason is Reason.REVOCATION_UNAVAILABLE
    assert cdp in info.value.detail
    assert extra in info.value.detail


# -- policy validation ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"mode": "maybe"}, id="mode"),
        pytest.param({"scope": "root"}, id="scope"),
        pytest.param({"timeout": 0}, id="timeout-zero"),
        pytest.param({"deadline": -1}, id="deadline-negative"),
        pytest.param({"timeout": 5.0, "deadline": 1.0}, id="timeout-over-deadline"),
        pytest.param({"clock_skew": -1}, id="skew-negative"),
        pytest.param({"max_age": 0}, id="max-age-zero"),
        pytest.param({"max_crl_bytes": 0}, id="max-crl-bytes"),
        pytest.param({"max_ocsp_bytes": True}, id="max-ocsp-bytes-bool"),
        pytest.param({"crl_urls": ("ldap://dir/ca",)}, id="crl-url-scheme"),
        pytest.param({"crl_urls": "http://x/ca.crl"}, id="crl-urls-a-string"),
        pytest.param({"ocsp_responder": "ftp://x"}, id="responder-scheme"),
        pytest.param({"crl_signers": ("not a cert",)}, id="crl-signers-type"),
    ],
)
def test_policy_refuses_bad_values(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        RevocationPolicy(**options)
    assert info.value.reason is Reason.CONFIGURATION_ERROR


def test_bad_crl_file_fails_at_construction(tmp_path: Path) -> None:
    path = tmp_path / "broken.crl"
    path.write_bytes(b"-----BEGIN X509 CRL-----\nnot base64 at all!\n-----END X509 CRL-----\n")
    with pytest.raises(ConfigurationError):
        RevocationChecker(RevocationPolicy(crl_files=(str(path),)))


def test_default_sources(pki: TestPKI) -> None:
    checker = RevocationChecker(RevocationPolicy())
    assert checker.ocsp_source is not None
    assert checker.ocsp_source.method == "ocsp"
    assert checker.crl_source is not None
    assert checker.crl_source.method == "crl"
    checker.close()


def test_off_asks_nothing(pki: TestPKI) -> None:
    outcome = _checker("off").check(_chain(pki.issue_client("off"), pki))
    assert outcome == RevocationOutcome("off")

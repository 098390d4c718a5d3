"""``mtls-admin demo``: the whole pipeline end to end on loopback, in a few seconds.

What it builds, in a temporary directory (or ``--dir``):

- a PKI: a root CA and an issuing CA, each with a *delegated* OCSP responder certificate; every
  certificate names the demo's OCSP responder in its Authority Information Access and its CA's CRL
  in its CRL Distribution Points;
- an OCSP responder (RFC 6960 over HTTP) and a CRL server, both on 127.0.0.1, serving that PKI:
  one client certificate is revoked at the responder (and on its CA's CRL);
- a SQLite store with an organisation, users and their certificates (one user deactivated);
- :mod:`mtls_middleware.server`, the pyOpenSSL TLS listener, on port 8443 (or a free port when
  8443 is taken) in front of a small WSGI app wrapped in
  :class:`~mtls_middleware.wsgi.MTLSMiddleware` with ``revocation="require"`` (OCSP first, the CRL
  when OCSP fails).

Then it makes real mTLS requests with Python's :mod:`ssl` client, one per case (a registered
certificate, whose identity the app echoes; an unregistered one; an expired one; a revoked one;
one without the Client Authentication EKU; one whose user is deactivated; one from an unknown CA;
none at all), prints each outcome and then the login history, and stops everything it started.
The exit status is 0 when every case got the outcome it should (and the history recorded it so),
1 otherwise, so that CI can run it.

The same from Python::

    with Demo(port=0) as demo:
        report = demo.run()
    assert report.ok
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import http.client
import json
import shutil
import signal
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, Final

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..config import MTLSConfig
from ..errors import Reason
from ..history import ACCEPTED, LoginRecord
from ..identity import ENVIRON_KEY
from ..server import TLSServer, make_server
from ..stores import Store, open_store
from ..testing import Issued, TestPKI, generate_key, make_certificate, make_crl, name
from ..wsgi import MTLSMiddleware
from ._responders import CRLServer, OCSPResponder
from ._shapes import login_json
from .cli import _printable, _short, _table

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["DEFAULT_PORT", "CaseResult", "Demo", "DemoReport", "demo_app", "run_demo"]

#: The port tried first; when it is taken the OS picks a free one.
DEFAULT_PORT: Final = 8443

_ORG = "acme"
_CA_ORG = "mtls_middleware demo"
_REQUEST_TIMEOUT = 10.0


def demo_app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    """The protected example app: it only ever sees accepted requests, and echoes the identity."""
    identity = environ[ENVIRON_KEY]
    body = json.dumps(
        {
            "user_id": identity.user_id,
            "org": identity.org,
            "fingerprint": identity.fingerprint,
            "subject": identity.subject,
            "revocation": identity.revocation,
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


@dataclass(frozen=True)
class _Case:
    key: str  # stable id (JSON, tests)
    label: str  # what the line says
    expected: str  # "accepted" or a reason code
    issued: Issued | None  # None: no client certificate at all
    user_id: str | None = None  # the identity an accepted request must carry
    method: str | None = None  # the revocation method the history must show ("ocsp", "crl")


@dataclass(frozen=True)
class CaseResult:
    """What one request got, against what it should have got.

    ``outcome`` is ``"accepted"``, the reason code of the refusal, or ``"no-answer"`` (the request
    failed below HTTP; ``detail`` says how). ``revocation`` is the login record's revocation field
    (``"ocsp:good,ocsp:good"``, ``"ocsp:revoked"`` ...), ``recorded`` whether a login record of
    this request was found.
    """

    key: str
    label: str
    expected: str
    status: int | None
    outcome: str
    user_id: str | None
    fingerprint: str | None
    revocation: str | None
    recorded: bool
    ok: bool
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "case": self.key,
            "label": self.label,
            "expected": self.expected,
            "status": self.status,
            "outcome": self.outcome,
            "user_id": self.user_id,
            "fingerprint": self.fingerprint,
            "revocation": self.revocation,
            "recorded": self.recorded,
            "ok": self.ok,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class DemoReport:
    """The outcome of :meth:`Demo.run`: every case, and the login history of the run (oldest first)."""

    url: str
    port: int
    requested_port: int
    directory: str | None  # where the files are kept; None when they are removed at exit
    ocsp_url: str
    ocsp_up: bool
    crl_url: str
    cases: tuple[CaseResult, ...]
    history: tuple[LoginRecord, ...]

    @property
    def ok(self) -> bool:
        """Every case got the outcome it should have."""
        return all(c.ok for c in self.cases)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "url": self.url,
            "port": self.port,
            "requested_port": self.requested_port,
            "directory": self.directory,
            "ocsp_responder": self.ocsp_url,
            "ocsp_responder_up": self.ocsp_up,
            "crl_server": self.crl_url,
            "cases": [c.to_json() for c in self.cases],
            "history": [login_json(r) for r in self.history],
        }

    def render(self) -> str:
        """The human report: the set-up, one line per case, then the login history as a table."""
        lines = [f"TLS listener  {self.url}  (client certificates requested, judged by MTLSMiddleware)"]
        if self.requested_port not in (0, self.port):
            lines.append(f"              port {self.requested_port} was taken; the OS picked {self.port}")
        state = "" if self.ocsp_up else "  (stopped: revocation falls back to the CRLs)"
        lines.append(f"OCSP          {self.ocsp_url}{state}")
        lines.append(f"CRLs          {self.crl_url}")
        lines.append('revocation    "require": OCSP first, the CRL when OCSP fails; fail closed')
        if self.directory is not None:
            lines.append(f"files         {self.directory}")
        lines.append("")
        rows = []
        for c in self.cases:
            if c.outcome == ACCEPTED:
                said = f"accepted: user {c.user_id}, revocation {c.revocation or '-'}"
            elif c.outcome == Reason.CERTIFICATE_REVOKED.value and c.revocation:
                said = f"{c.outcome} ({c.revocation.split(':', 1)[0]})"
            else:
                said = c.outcome
            if not c.ok:
                said += f"    << UNEXPECTED: expected {c.expected}{f'; {c.detail}' if c.detail else ''}"
            rows.append((c.label, "-" if c.status is None else str(c.status), said))
        lines.append(_table(("CASE", "HTTP", "OUTCOME"), rows, "no cases"))
        lines.append("")
        lines.append("Login history of this run (oldest first):")
        history = [
            (
                _clock(r.time),
                r.outcome,
                r.user_id,
                _short(r.fingerprint),
                r.revocation,
                _common_name(r.subject),
            )
            for r in self.history
        ]
        headers = ("TIME (UTC)", "OUTCOME", "USER", "FINGERPRINT", "REVOCATION", "SUBJECT CN")
        lines.append(_table(headers, history, "(empty)"))
        lines.append("")
        good = sum(c.ok for c in self.cases)
        verdict = "as expected" if self.ok else "as expected: FAILED"
        lines.append(f"{good} of {len(self.cases)} cases {verdict}")
        return "\n".join(lines)


def _clock(when: float) -> str:
    moment = dt.datetime.fromtimestamp(when, dt.timezone.utc)
    return moment.strftime("%H:%M:%S.%f")[:-3]


def _common_name(subject: str | None) -> str | None:
    if not subject:
        return subject
    for part in subject.split(","):
        if part.startswith("CN="):
            return part[3:]
    return subject


class Demo:
    """The demo's PKI, revocation services, store and TLS listener; see the module docstring.

    Use it as a context manager: entering builds and starts everything, :meth:`run` makes the
    requests, leaving stops every thread and socket and removes the temporary directory (also
    when an exception, e.g. KeyboardInterrupt, leaves the block).

    Args:
        port: the listener's port; when it is taken (and not 0) the OS picks a free one.
        directory: keep the demo's files (keys, certificates, CRLs, the SQLite store) there,
            created if missing (mode 0o700: it holds private keys; an existing one is left as
            it is); None: a temporary directory removed at exit.
        ocsp: False stops the OCSP responder before the requests, so that every status comes
            from the CRLs (the fallback).

    Raises:
        OSError: the directory cannot be created, or no port can be bound.
    """

    def __init__(
        self, *, port: int = DEFAULT_PORT, directory: str | Path | None = None, ocsp: bool = True
    ) -> None:
        self.requested_port = port
        self.keep_files = directory is not None
        self._directory = Path(directory) if directory is not None else None
        self.ocsp_up = ocsp
        self._stack = contextlib.ExitStack()
        self._cases: list[_Case] = []
        self.directory: Path
        self.server: TLSServer
        self.responder: OCSPResponder
        self.crl_server: CRLServer
        self.store: Store

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> Demo:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the listener, the responders and the store; remove the temporary directory."""
        self._stack.close()

    def _start(self) -> None:
        stack = self._stack
        if self._directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="mtls-demo-"))
            # The keys live only as long as the demo.
            stack.callback(shutil.rmtree, self.directory, ignore_errors=True)
        else:
            self.directory = self._directory
            # Private keys go in there: a directory made for them is the user's alone (an existing
            # one keeps the mode its owner chose).
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

        self.responder = OCSPResponder()
        self.crl_server = CRLServer()
        for service in (self.responder, self.crl_server):
            service.start()
            stack.callback(service.stop)

        pki, cases = self._pki()
        self._cases = cases
        root_pem = pki.write(self.directory)
        server_cert, server_key = pki.issue_server("localhost").write(self.directory, "server")
        for case in cases:
            if case.issued is not None:
                case.issued.write(self.directory, case.key)

        self.store = store = open_store(f"sqlite:///{self.directory / 'mtls.db'}")
        stack.callback(store.close)
        store.set_org(_ORG, cert_auth=True)
        for case in cases:
            if case.user_id is not None and case.issued is not None:
                store.add_user(case.user_id, org=_ORG)
                store.upload_certificate(case.issued.chain_pem, user_id=case.user_id, label=case.key)
            if case.expected == Reason.USER_INACTIVE.value:
                store.set_user_active(str(case.user_id), False)

        # Only the root is configured: the listener hands over the chain the client sent, and
        # every status comes from the URLs in the certificates themselves.
        config = MTLSConfig(trust_roots=root_pem, store=store, revocation="require", revocation_timeout=2.0)
        app = MTLSMiddleware(demo_app, config)
        stack.callback(app.authenticator.close)

        self.server = self._listen(app, server_cert, server_key, root_pem)
        thread = threading.Thread(target=self.server.serve_forever, name="mtls-demo listener", daemon=True)
        thread.start()
        stack.callback(thread.join)
        stack.callback(self.server.shutdown)
        if not self.ocsp_up:
            self.responder.stop()

    def _listen(self, app: MTLSMiddleware, cert: Path, key: Path, roots: Path) -> TLSServer:
        def bind(port: int) -> TLSServer:
            return make_server(
                app, certfile=cert, keyfile=key, trust_roots=roots, port=port, shutdown_timeout=2.0
            )

        port = self.requested_port
        try:
            try:
                return bind(port)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or port == 0:
                    raise
            port = 0
            return bind(port)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from None

    def _pki(self) -> tuple[TestPKI, list[_Case]]:
        responder, crls = self.responder, self.crl_server
        pki = TestPKI(org=_CA_ORG)
        # An issuing CA that names where its own status is published (the root's responder and
        # CRL), so that revocation="require" can check the whole chain, not only the leaf.
        pki.issuing = pki.issue_ca(
            f"{_CA_ORG} Issuing CA", ocsp_url=responder.url, crl_url=crls.url("root.crl")
        )
        responder.add_issuer(pki.root, _delegated_responder(pki.root, "root"))
        responder.add_issuer(pki.issuing, _delegated_responder(pki.issuing, "issuing CA"))
        responder.set_status(pki.root, pki.issuing.cert.serial_number, "good")

        urls: dict[str, Any] = {"ocsp_url": responder.url, "crl_url": crls.url("issuing.crl")}
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)

        def client(common_name: str, **options: Any) -> Issued:
            email = f"{common_name}@{_ORG}.example"
            issued = pki.issue_client(common_name, san_emails=(email,), **urls, **options)
            responder.set_status(pki.issuing, issued.cert.serial_number, "good")
            return issued

        method = "ocsp" if self.ocsp_up else "crl"
        frank = client("frank")
        revoked_at = now - dt.timedelta(hours=1)
        responder.set_status(
            pki.issuing,
            frank.cert.serial_number,
            "revoked",
            revoked_at=revoked_at,
            reason=x509.ReasonFlags.key_compromise,
        )
        crls.publish("root.crl", make_crl(pki.root))
        crls.publish(
            "issuing.crl",
            make_crl(pki.issuing, [(frank.cert.serial_number, revoked_at, x509.ReasonFlags.key_compromise)]),
        )
        stranger = TestPKI(org="Unknown Corp")
        where = "at the OCSP responder" if self.ocsp_up else "on the CRL"
        cases = [
            _Case("registered", "alice: registered", ACCEPTED, client("alice"), "alice", method),
            _Case(
                "unregistered", "bob: valid, not registered", Reason.UNKNOWN_CERTIFICATE.value, client("bob")
            ),
            _Case(
                "expired",
                "erin: expired yesterday",
                Reason.CERTIFICATE_EXPIRED.value,
                client("erin", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)),
            ),
            _Case(
                "revoked",
                f"frank: revoked {where}",
                Reason.CERTIFICATE_REVOKED.value,
                frank,
                "frank",
                method,
            ),
            _Case(
                "no-client-auth-eku",
                "dave: e-mail protection EKU only",
                Reason.MISSING_CLIENT_AUTH_EKU.value,
                client("dave", eku=(ExtendedKeyUsageOID.EMAIL_PROTECTION,)),
            ),
            _Case(
                "user-inactive",
                "carol: user deactivated",
                Reason.USER_INACTIVE.value,
                client("carol"),
                "carol",
            ),
            _Case(
                "unknown-ca",
                "mallory: issued by an unknown CA",
                Reason.UNTRUSTED_ISSUER.value,
                stranger.issue_client("mallory"),
            ),
            _Case("no-certificate", "(no client certificate)", Reason.NO_CERTIFICATE.value, None),
        ]
        return pki, cases

    # -- the requests -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.server_port}/"

    def files(self, case: str = "registered") -> tuple[Path, Path]:
        """The certificate chain and key files of a case (``registered``: alice)."""
        return self.directory / f"{case}.pem", self.directory / f"{case}.key"

    def curl_command(self, case: str = "registered") -> str:
        """A curl command line making the request of ``case`` by hand."""
        cert, key = self.files(case)
        return f"curl --cacert {self.directory / 'root.pem'} --cert {cert} --key {key} {self.url}"

    def request(self, case: str, certificate: bool = True) -> tuple[int | None, bytes, str]:
        """One HTTPS request with ``case``'s certificate (none when not ``certificate``):
        (status, body, why there is no status)."""
        context = ssl.create_default_context(cafile=str(self.directory / "root.pem"))
        if certificate:
            cert, key = self.files(case)
            context.load_cert_chain(str(cert), str(key))
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.server.server_port, context=context, timeout=_REQUEST_TIMEOUT
        )
        try:
            conn.request("GET", "/", headers={"Connection": "close"})
            response = conn.getresponse()
            return response.status, response.read(), ""
        except (OSError, http.client.HTTPException) as exc:
            return None, b"", f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()

    def run(self) -> DemoReport:
        """Make one request per case; judge each against its expected outcome and the history."""
        started = time.time()
        answers = [(case, *self.request(case.key, case.issued is not None)) for case in self._cases]
        recent = self.store.login_history(since=_utc(started), limit=10 * len(self._cases))
        history = list(reversed(recent))
        results = [self._judge(case, status, body, why, history) for case, status, body, why in answers]
        return DemoReport(
            url=self.url,
            port=self.server.server_port,
            requested_port=self.requested_port,
            directory=str(self.directory) if self.keep_files else None,
            ocsp_url=self.responder.url,
            ocsp_up=self.ocsp_up,
            crl_url=self.crl_server.base_url + "/",
            cases=tuple(results),
            history=tuple(history),
        )

    @staticmethod
    def _judge(
        case: _Case, status: int | None, body: bytes, why: str, history: Iterable[LoginRecord]
    ) -> CaseResult:
        fp = case.issued.fingerprint if case.issued is not None else None
        record = next(
            (r for r in history if r.fingerprint == fp and (fp is not None or r.outcome == case.expected)),
            None,
        )
        revocation = record.revocation if record is not None else None
        user_id: str | None = None
        problems: list[str] = []
        if status is None:
            outcome = "no-answer"
            problems.append(why)
        else:
            try:
                data = json.loads(body)
            except ValueError:
                data = None
            if not isinstance(data, dict):
                outcome = "unexpected-body"
                problems.append(f"HTTP {status}: {_printable(body[:80].decode('utf-8', 'replace'))}")
            elif status == 200:
                outcome, user_id = ACCEPTED, data.get("user_id")
            else:
                outcome = str(data.get("error"))
        if outcome == case.expected:
            if outcome != ACCEPTED and status != Reason(outcome).status:
                problems.append(f"HTTP {status}, not {Reason(outcome).status}")
            if user_id != case.user_id and outcome == ACCEPTED:
                problems.append(f"identity {user_id!r}, not {case.user_id!r}")
            if record is None:
                problems.append("no login record")
            elif record.outcome != case.expected:
                problems.append(f"the login record says {record.outcome}")
            if case.method is not None and not (revocation or "").startswith(f"{case.method}:"):
                problems.append(f"revocation {revocation!r}, not by {case.method}")
        return CaseResult(
            key=case.key,
            label=case.label,
            expected=case.expected,
            status=status,
            outcome=outcome,
            user_id=user_id if user_id is not None else (record.user_id if record is not None else None),
            fingerprint=fp,
            revocation=revocation,
            recorded=record is not None,
            ok=outcome == case.expected and not problems,
            detail="; ".join(problems),
        )

    # -- keep running -------------------------------------------------------------------------

    def wait(self, stop: threading.Event | None = None) -> None:
        """Block until ``stop`` is set (or forever); KeyboardInterrupt ends the wait as well."""
        stop = stop or threading.Event()
        while not stop.wait(0.5):
            pass


def _utc(when: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(when, dt.timezone.utc)


def _delegated_responder(ca: Issued, role: str) -> Issued:
    """An OCSP responder certificate ``ca`` delegates to: id-kp-OCSPSigning, id-pkix-ocsp-nocheck."""
    key = generate_key("ec")
    cert = make_certificate(
        subject=name(f"{_CA_ORG} OCSP responder ({role})", _CA_ORG),
        key=key,
        issuer=ca.cert,
        issuer_key=ca.key,
        eku=(ExtendedKeyUsageOID.OCSP_SIGNING,),
        extra_extensions=[(x509.OCSPNoCheck(), False)],
    )
    return Issued(cert, key)


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """SIGTERM ends the demo as Ctrl-C does (cleanly); a second signal during clean-up is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_demo(
    *,
    port: int = DEFAULT_PORT,
    directory: str | Path | None = None,
    json_output: bool = False,
    keep_running: bool = False,
    ocsp: bool = True,
    out: IO[str] | None = None,
) -> int:
    """Run the demo and print its report (``json_output``: one JSON document); return the exit
    status: 0 when every case got its expected outcome, 1 otherwise, 130 when interrupted.

    ``keep_running`` leaves the listener up after the report, with a curl command to try by hand,
    until Ctrl-C or SIGTERM (the exit status is then the report's).
    """
    stream = out if out is not None else sys.stdout
    try:
        with _interruptible(), Demo(port=port, directory=directory, ocsp=ocsp) as demo:
            report = demo.run()
            if json_output:
                print(json.dumps(report.to_json(), indent=2), file=stream, flush=True)
            else:
                print(report.render(), file=stream, flush=True)
            if keep_running:
                hint = f"listening on {demo.url} until Ctrl-C; try:\n  {demo.curl_command()}"
                print(hint, file=sys.stderr if json_output else stream, flush=True)
                with contextlib.suppress(KeyboardInterrupt):
                    demo.wait()
    except KeyboardInterrupt:
        print("interrupted; everything stopped", file=sys.stderr, flush=True)
        return 130
    return 0 if report.ok else 1

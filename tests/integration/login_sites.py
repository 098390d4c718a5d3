"""What the browser login tests of the examples share: the two listeners of a site, and whether a
TLS server asks for a client certificate."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from mtls_middleware.testing import Issued

from .conftest import LOOPBACK


@dataclass(frozen=True)
class LoginSite:
    """An example with a browser login: the site at ``https://localhost:site_port``, its
    certificate login listener at ``https://localhost:login_port``."""

    site_port: int
    login_port: int
    demo: Path

    @property
    def site(self) -> str:
        return f"https://localhost:{self.site_port}"

    @property
    def login_origin(self) -> str:
        return f"https://localhost:{self.login_port}"

    def root(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.demo / "root.pem").read_bytes())

    def client(self, name: str) -> Issued:
        chain = x509.load_pem_x509_certificates((self.demo / f"{name}.pem").read_bytes())
        key = load_pem_private_key((self.demo / f"{name}.key").read_bytes(), password=None)
        return Issued(chain[0], key, tuple(chain[1:]))  # type: ignore[arg-type]


def requests_a_certificate(port: int) -> bool:
    """Whether the TLS server on ``port`` sends a CertificateRequest (openssl s_client's view)."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"{LOOPBACK}:{port}", "-servername", "localhost"],
        input="", capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert "Server certificate" in output, output
    return "Acceptable client certificate CA names" in output

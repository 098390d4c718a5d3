"""``mtls-admin``: judge certificate chains (and, in later versions, manage the store).

Exit status: 0 done / accepted, 1 refused (the reason code is printed), 2 usage error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509

from ..certs import fingerprint, parse_chain
from ..config import _load_certificates
from ..errors import ConfigurationError, MTLSError
from ..validation import ValidationPolicy, Validator

__all__ = ["main"]

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


class _UsageError(Exception):
    """A usage problem that argparse cannot see (a bad file, an unsupported option value)."""


def _parse_time(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time such as 2026-01-01T00:00:00Z"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtls-admin", description="mtls_middleware administration")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    # Accepted after the command too; SUPPRESS keeps it from resetting a --json given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser(
        "check",
        parents=[common],
        help="judge a client certificate chain as the middleware would",
        description="Validate CHAIN.pem (leaf first, then intermediates) against ROOTS.pem.",
    )
    check.add_argument("chain", metavar="CHAIN.pem", type=Path)
    check.add_argument("--trust", metavar="ROOTS.pem", type=Path, required=True)
    check.add_argument(
        "--intermediates", metavar="CAS.pem", type=Path, help="extra intermediate CAs"
    )
    check.add_argument("--crl", metavar="CRL", type=Path, action="append", default=[])
    check.add_argument(
        "--revocation", choices=("require", "soft-fail", "off"), default="require"
    )
    check.add_argument("--eku", choices=("required", "if-present"), default="required")
    check.add_argument("--allow-dual-purpose-eku", action="store_true")
    check.add_argument(
        "--at", type=_parse_time, metavar="TIME", help="judge at this instant (ISO 8601)"
    )
    return parser


def _describe(cert: x509.Certificate) -> dict[str, Any]:
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "fingerprint": fingerprint(cert),
    }


def _check(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    if args.revocation != "off" or args.crl:
        raise _UsageError(
            "revocation checking (OCSP/CRL) is not available in this version; "
            "pass --revocation off (and no --crl) to judge the chain without it"
        )
    try:
        data = args.chain.read_bytes()
    except OSError as exc:
        raise _UsageError(f"cannot read {args.chain}: {exc.strerror}") from None
    roots = _load_certificates(args.trust, "--trust")
    extra = _load_certificates(args.intermediates, "--intermediates") if args.intermediates else ()
    validator = Validator(
        ValidationPolicy(
            roots=roots,
            intermediates=extra,
            eku=args.eku,
            allow_dual_purpose_eku=args.allow_dual_purpose_eku,
        )
    )
    try:
        chain = parse_chain([data])
        path = validator.validate(chain.leaf, chain.intermediates, at=args.at)
    except MTLSError as exc:
        return EXIT_REFUSED, {
            "outcome": "refused",
            "reason": exc.reason.value,
            "status": exc.status,
            "detail": exc.detail,
        }
    return EXIT_OK, {
        "outcome": "accepted",
        "revocation": "off",
        "leaf": _describe(path.chain[0]),
        "path": [c.subject.rfc4514_string() for c in path.chain],
    }


def _print_human(result: dict[str, Any]) -> None:
    if result["outcome"] == "accepted":
        leaf = result["leaf"]
        print(f"accepted: {leaf['subject']}")
        print(f"  fingerprint  {leaf['fingerprint']}")
        print(f"  issuer       {leaf['issuer']}")
        print(f"  valid        {leaf['not_before']} .. {leaf['not_after']}")
        print(f"  path         {' <- '.join(reversed(result['path']))}")
        print(f"  revocation   {result['revocation']} (not checked)")
    else:
        print(f"refused: {result['reason']}")
        print(f"  {result['detail']}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mtls-admin``; return its exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        status, result = _check(args)
    except (_UsageError, ConfigurationError) as exc:
        message = exc.detail if isinstance(exc, ConfigurationError) else str(exc)
        if args.json:
            print(json.dumps({"outcome": "error", "error": "usage", "message": message}))
        else:
            print(f"mtls-admin: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_human(result)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

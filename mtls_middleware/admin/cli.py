"""``mtls-admin``: judge certificate chains and manage the store (users, organisations,
certificates, login history).

Exit status: 0 done / accepted, 1 refused (the reason code is printed), 2 usage error.
Every store command opens the store named by ``--db`` (or ``MTLS_DB``; default
``sqlite:///mtls.db``), does one thing, and closes the store again (which flushes the history).
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import os
import re
import sqlite3
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from ..certs import fingerprint, parse_chain
from ..config import _load_certificates
from ..errors import ConfigurationError, ManagementError, MTLSError, Reason
from ..history import ACCEPTED
from ..revocation.checker import RevocationChecker, RevocationPolicy
from ..stores import open_store
from ..stores.base import (
    KNOWN_PERMISSIONS,
    BatchRefused,
    Store,
)
from ..validation import ValidationPolicy, Validator
from ._shapes import cert_json, iso, login_json, org_json, user_json
from .csvio import CsvFormatError, CsvRow, export_csv, parse_import, refused_rows

__all__ = ["DEFAULT_DB", "main"]

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2

#: The store used when neither ``--db`` nor ``MTLS_DB`` names one.
DEFAULT_DB = "sqlite:///mtls.db"

PERMISSIONS = tuple(sorted(KNOWN_PERMISSIONS))
OUTCOMES = (ACCEPTED, *(r.value for r in Reason))

_FINGERPRINT_SHOWN = 16  # hex digits of a fingerprint shown in tables; any unique prefix is accepted
_MIN_PREFIX = 8
_HEX = re.compile(r"[0-9a-f]+")
_DURATION = re.compile(r"([0-9]{1,9})([dhm])")
_MAX_AGE = dt.timedelta(days=36_500)
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


class _UsageError(Exception):
    """A usage problem that argparse cannot see (a bad file, an unsupported option value)."""


# -- argument types ---------------------------------------------------------------------------


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


def _parse_duration(text: str) -> dt.timedelta:
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an age such as 90d, 12h or 30m (a positive number of days, hours or minutes)"
        )
    age = dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    if age > _MAX_AGE:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {_MAX_AGE.days}d")
    return age


def _parse_fingerprint(text: str) -> str:
    # openssl prints "AB:CD:..."; the store keys are lowercase hex without separators.
    digits = text.strip().replace(":", "").lower()
    if not _HEX.fullmatch(digits) or not _MIN_PREFIX <= len(digits) <= 64:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a SHA-256 fingerprint (64 hex digits, or a unique prefix of at least "
            f"{_MIN_PREFIX})"
        )
    return digits


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"{text!r}: say on or off")
    return text == "on"


# -- the parser -------------------------------------------------------------------------------

_CSV_HELP = """\
The CSV has a header row. Columns read on import: user_id, label (may be empty: the certificate's
subject is used), and either pem (the PEM text, in one quoted field) or pem_file (a path to a PEM
file, relative to the CSV file's directory; to the current directory when the CSV is read from
standard input). Other columns (those export adds: org, fingerprint, uploaded_at, not_after) are
ignored: a certificate belongs to its user's organisation. Export writes user_id, label, pem, org,
fingerprint, uploaded_at, not_after for every certificate, so that importing the file into a store
that has the same users gives back the same certificates. FILE "-" is standard input / output.
Import is all or nothing: every row goes through the upload rules, and if any row is refused, no
row is imported and every refused row is reported (rows are numbered as a spreadsheet shows them:
the header is row 1)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtls-admin",
        description="mtls_middleware administration. Exit status: 0 done or accepted, "
        "1 refused (the reason code is printed), 2 usage error.",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--db",
        metavar="URL",
        help=f"the store: sqlite:///relative.db, sqlite:////absolute.db or memory:// "
        f"(default: $MTLS_DB, else {DEFAULT_DB})",
    )
    # Accepted after the command too; SUPPRESS keeps them from resetting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    common.add_argument("--db", metavar="URL", default=argparse.SUPPRESS, help="the store")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def group(name: str, help_text: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        return sub.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")

    def command(
        actions: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        handler: Callable[[Store, argparse.Namespace], _Result],
        help_text: str,
        **extra: Any,
    ) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, parents=[common], help=help_text, description=help_text, **extra)
        sub.set_defaults(handler=handler)
        return sub

    _check_parser(commands, common)
    _serve_parser(commands)
    _demo_parser(commands)

    # user
    users = group("user", "manage users")
    add = command(users, "add", _user_add, "add a user, or update one that exists")
    add.add_argument("user_id", metavar="USER_ID")
    add.add_argument("--org", default="default", help="the user's organisation (default: default)")
    add.add_argument("--inactive", action="store_true", help="add the user deactivated")
    add.add_argument(
        "--permission",
        action="append",
        choices=PERMISSIONS,
        default=[],
        help="grant a permission (repeatable); adding a user again replaces its permissions",
    )
    listing = command(users, "list", _user_list, "list users")
    listing.add_argument("--org", help="only users of this organisation")
    for name, active in (("activate", True), ("deactivate", False)):
        toggle = command(
            users,
            name,
            _user_activate if active else _user_deactivate,
            f"{name} a user (deactivated users' certificates are refused at once)",
        )
        toggle.add_argument("user_id", metavar="USER_ID")

    # org
    orgs = group("org", "manage organisations")
    org_set = command(orgs, "set", _org_set, "switch certificate login on or off for an organisation")
    org_set.add_argument("org", metavar="ORG")
    org_set.add_argument(
        "--cert-auth", type=_on_off, required=True, metavar="on|off", help="certificate login"
    )
    command(orgs, "list", _org_list, "list organisations")

    # cert
    certs = group("cert", "manage certificates")
    upload = command(
        certs, "upload", _cert_upload, "register a certificate for a user; prints its fingerprint"
    )
    upload.add_argument("file", metavar="FILE", help='a PEM file (leaf first), or "-" for standard input')
    upload.add_argument("--user", required=True, metavar="USER_ID")
    upload.add_argument("--org", help="refuse (unknown_user) unless the user belongs to this organisation")
    upload.add_argument("--label", help="a name for the certificate (default: its subject)")
    upload.set_defaults(reader=_read_upload)

    cert_list = command(certs, "list", _cert_list, "list certificates")
    cert_list.add_argument("--user", metavar="USER_ID")
    cert_list.add_argument("--org")

    fp_help = "SHA-256 fingerprint (hex, colons allowed) or a unique prefix of at least 8 digits"
    show = command(certs, "show", _cert_show, "show one certificate")
    show.add_argument("fingerprint", metavar="FINGERPRINT", type=_parse_fingerprint, help=fp_help)
    download = command(
        certs, "download", _cert_download, "write a certificate's PEM exactly as it was uploaded"
    )
    download.add_argument("fingerprint", metavar="FINGERPRINT", type=_parse_fingerprint, help=fp_help)
    download.add_argument(
        "-o", "--output", metavar="FILE", help='write to FILE instead of standard output ("-")'
    )
    rename = command(certs, "rename", _cert_rename, "change a certificate's label")
    rename.add_argument("fingerprint", metavar="FINGERPRINT", type=_parse_fingerprint, help=fp_help)
    rename.add_argument("label", metavar="LABEL")
    delete = command(certs, "delete", _cert_delete, "delete a certificate (refused at once from then on)")
    delete.add_argument("fingerprint", metavar="FINGERPRINT", type=_parse_fingerprint, help=fp_help)

    csv_extra: dict[str, Any] = {"epilog": _CSV_HELP, "formatter_class": argparse.RawDescriptionHelpFormatter}
    importing = command(
        certs, "import", _cert_import, "register the certificates of a CSV file, all or nothing", **csv_extra
    )
    importing.add_argument("--csv", required=True, metavar="FILE", dest="csv_file")
    importing.set_defaults(reader=_read_import)
    exporting = command(certs, "export", _cert_export, "write every certificate to a CSV file", **csv_extra)
    exporting.add_argument("--csv", required=True, metavar="FILE", dest="csv_file")

    # history [prune]
    history = commands.add_parser(
        "history",
        parents=[common],
        help="show the login history (newest first), or prune it",
        description="Show the login history, newest first. 'history prune' removes old records.",
    )
    history.set_defaults(handler=_history)
    history.add_argument("--user", metavar="USER_ID")
    history.add_argument("--failed", action="store_true", help="refused attempts only")
    history.add_argument("--outcome", choices=OUTCOMES, metavar="CODE", help="accepted or a reason code")
    history.add_argument("--since", type=_parse_time, metavar="TIME", help="ISO 8601; UTC if no zone")
    history.add_argument("--until", type=_parse_time, metavar="TIME", help="ISO 8601; UTC if no zone")
    history.add_argument("--limit", type=_positive, default=100, metavar="N", help="default 100")
    pruning = history.add_subparsers(dest="history_command", metavar="prune")
    prune = command(pruning, "prune", _history_prune, "remove login records older than an age")
    prune.add_argument(
        "--older-than",
        type=_parse_duration,
        required=True,
        metavar="AGE",
        help="Nd, Nh or Nm (days, hours, minutes), e.g. 90d",
    )
    return parser


def _check_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    check = commands.add_parser(
        "check",
        parents=[common],
        help="judge a client certificate chain as the middleware would",
        description="Validate CHAIN.pem (leaf first, then intermediates) against ROOTS.pem.",
    )
    check.add_argument("chain", metavar="CHAIN.pem", type=Path)
    check.add_argument("--trust", metavar="ROOTS.pem", type=Path, required=True)
    check.add_argument("--intermediates", metavar="CAS.pem", type=Path, help="extra intermediate CAs")
    check.add_argument("--crl", metavar="CRL", type=Path, action="append", default=[])
    check.add_argument("--revocation", choices=("require", "soft-fail", "off"), default="require")
    check.add_argument("--eku", choices=("required", "if-present"), default="required")
    check.add_argument("--allow-dual-purpose-eku", action="store_true")
    check.add_argument("--at", type=_parse_time, metavar="TIME", help="judge at this instant (ISO 8601)")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0-65535; 0 lets the OS pick)")
    return value


def _serve_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = (
        "Serve the WSGI app MODULE:APP over TLS. Client certificates are requested from the CAs "
        "named by --trust and accepted at the handshake whatever they are: the app's own "
        "MTLSMiddleware decides, so its login history records why a certificate was refused. "
        "Runs until SIGINT or SIGTERM; exit status 0 after a clean shutdown, 2 on a usage error."
    )
    serve = commands.add_parser(
        "serve", help="serve a WSGI app over TLS (client certificates requested)", description=text
    )
    serve.add_argument(
        "app",
        metavar="MODULE:APP",
        help="e.g. myapp:app (MODULE is imported; the current directory is searched)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8443, help="default 8443; 0 lets the OS pick")
    serve.add_argument(
        "--cert", required=True, metavar="SERVER.pem", help="server certificate (+ intermediates)"
    )
    serve.add_argument("--key", required=True, metavar="KEY.pem", help="its private key (unencrypted PEM)")
    serve.add_argument(
        "--trust",
        required=True,
        metavar="ROOTS.pem",
        help="CAs named to clients as acceptable issuers (the app's MTLSConfig decides what it trusts)",
    )


def _demo_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = (
        "Run the whole pipeline end to end on loopback: a demo PKI with an OCSP responder and CRLs, "
        "a SQLite store with users and certificates, the TLS listener in front of an example app, "
        "and real mTLS requests with good and bad certificates; prints each outcome and the login "
        "history. Exit status 0 when every case got its expected outcome, 1 otherwise. The demo "
        "uses a store of its own (in --dir), never --db."
    )
    demo = commands.add_parser("demo", help="run the end-to-end demo on loopback", description=text)
    demo.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    demo.add_argument(
        "--port", type=_port, default=8443, help="the listener's port (default 8443; a free one if taken)"
    )
    demo.add_argument(
        "--dir",
        metavar="DIR",
        help="keep the demo's files (keys, certificates, the SQLite store) in DIR, created if missing "
        "(default: a temporary directory removed at exit)",
    )
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="after the report, leave the listener up for requests by hand (a curl command is printed) "
        "until Ctrl-C",
    )
    demo.add_argument(
        "--ocsp-down",
        action="store_true",
        help="stop the OCSP responder before the requests: every status then comes from the CRLs",
    )


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo  # here, not at the top: only this command needs the demo PKI

    if args.db is not None:
        return _usage(args, "demo uses a store of its own (in --dir); --db does not apply")
    try:
        return run_demo(
            port=args.port,
            directory=args.dir,
            json_output=args.json,
            keep_running=args.keep_running,
            ocsp=not args.ocsp_down,
        )
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        return _usage(args, f"demo: {exc.strerror or exc}{where}")


# -- check ------------------------------------------------------------------------------------


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
    try:
        data = args.chain.read_bytes()
    except OSError as exc:
        raise _UsageError(f"cannot read {args.chain}: {exc.strerror}") from None
    crls = tuple(str(p) for p in args.crl)
    for crl in crls:
        if not os.access(crl, os.R_OK):
            raise _UsageError(f"cannot read the CRL file {crl}")
    roots = _load_certificates(args.trust, "--trust")
    extra = _load_certificates(args.intermediates, "--intermediates") if args.intermediates else ()
    revocation: RevocationPolicy | None = None
    if args.revocation != "off":
        # With --crl the check is offline and reproducible (also with --at): the files decide,
        # not whatever a responder says today.
        revocation = RevocationPolicy(
            mode=args.revocation,
            crl_files=crls,
            ocsp=not crls,
            crl_signers=(*extra, *roots),
        )
    elif crls:
        raise _UsageError("--crl needs --revocation require or soft-fail")
    return _judge(
        data,
        ValidationPolicy(
            roots=roots,
            intermediates=extra,
            eku=args.eku,
            allow_dual_purpose_eku=args.allow_dual_purpose_eku,
        ),
        at=args.at,
        revocation=revocation,
    )


def _judge(
    data: bytes,
    policy: ValidationPolicy,
    *,
    at: dt.datetime | None,
    revocation: RevocationPolicy | None,
) -> tuple[int, dict[str, Any]]:
    """Judge the chain in ``data`` as the middleware would: parse, validate, then revocation."""
    checks: list[dict[str, Any]] = []
    summary = "off"
    try:
        chain = parse_chain([data])
        path = Validator(policy).validate(chain.leaf, chain.intermediates, at=at)
        if revocation is not None:
            checker = RevocationChecker(revocation)
            try:
                outcome = checker.check(path.chain, now=at)
            finally:
                checker.close()
            summary = outcome.summary
            checks = [
                {
                    "subject": c.subject,
                    "serial": c.serial,
                    "method": c.method,
                    "status": c.status,
                    "source": c.source,
                    "cached": c.cached,
                    "ms": round(c.elapsed * 1000, 1),
                    "detail": c.detail,
                }
                for c in outcome.checks
            ]
    except MTLSError as exc:
        return EXIT_REFUSED, {
            "outcome": "refused",
            "reason": exc.reason.value,
            "status": exc.status,
            "detail": exc.detail,
        }
    return EXIT_OK, {
        "outcome": "accepted",
        "revocation": summary,
        "revocation_checks": checks,
        "leaf": _describe(path.chain[0]),
        "path": [c.subject.rfc4514_string() for c in path.chain],
    }


def _print_check(result: dict[str, Any]) -> None:
    if result["outcome"] == "accepted":
        leaf = result["leaf"]
        print(f"accepted: {leaf['subject']}")
        print(f"  fingerprint  {leaf['fingerprint']}")
        print(f"  issuer       {leaf['issuer']}")
        print(f"  valid        {leaf['not_before']} .. {leaf['not_after']}")
        print(f"  path         {' <- '.join(reversed(result['path']))}")
        print(f"  revocation   {result['revocation']}")
        for check in result["revocation_checks"]:
            where = f" from {check['source']}" if check["source"] else ""
            line = f"    {check['method']} {check['status']}{where} ({check['subject']}) {check['detail']}"
            print(line.rstrip())
    else:
        print(f"refused: {result['reason']}")
        print(f"  {result['detail']}")


# -- output helpers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Result:
    """What a store command hands back: ``data`` for ``--json``, ``text`` for humans."""

    data: Any
    text: str = ""
    to_stderr: bool = False  # when standard output carries data (export to "-")


def _printable(text: object) -> str:
    # Labels and history details come from users and CSV files: keep terminal escapes out.
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(text))


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], empty: str) -> str:
    cells = [[_printable("-" if c is None or c == "" else c) for c in row] for row in rows]
    if not cells:
        return empty
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [list(headers), *cells]
    )


def _short(fp: str | None) -> str | None:
    return fp[:_FINGERPRINT_SHOWN] if fp else fp


def _uploader() -> str:
    try:
        return f"mtls-admin:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name in some containers
        return "mtls-admin"


def _read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise _UsageError(f"cannot read {name}: {exc.strerror or exc}") from None


# -- user, org --------------------------------------------------------------------------------


def _user_add(store: Store, args: argparse.Namespace) -> _Result:
    user = store.add_user(
        args.user_id, org=args.org, active=not args.inactive, permissions=tuple(args.permission)
    )
    state = "active" if user.active else "inactive"
    perms = ", ".join(sorted(user.permissions)) or "none"
    return _Result(user_json(user), f"user {user.user_id}: org {user.org}, {state}, permissions: {perms}")


def _user_list(store: Store, args: argparse.Namespace) -> _Result:
    users = sorted(store.list_users(org=args.org), key=lambda u: (u.org, u.user_id))
    rows = [(u.user_id, u.org, "yes" if u.active else "no", ", ".join(sorted(u.permissions))) for u in users]
    return _Result(
        [user_json(u) for u in users],
        _table(("USER", "ORG", "ACTIVE", "PERMISSIONS"), rows, "no users"),
    )


def _set_active(store: Store, user_id: str, active: bool) -> _Result:
    user = store.set_user_active(user_id, active)
    return _Result(user_json(user), f"user {user.user_id}: {'active' if user.active else 'inactive'}")


def _user_activate(store: Store, args: argparse.Namespace) -> _Result:
    return _set_active(store, args.user_id, True)


def _user_deactivate(store: Store, args: argparse.Namespace) -> _Result:
    return _set_active(store, args.user_id, False)


def _org_set(store: Store, args: argparse.Namespace) -> _Result:
    store.set_org(args.org, cert_auth=args.cert_auth)
    state = "on" if args.cert_auth else "off"
    return _Result(
        {"org": args.org, "cert_auth": args.cert_auth}, f"org {args.org}: certificate login {state}"
    )


def _org_list(store: Store, args: argparse.Namespace) -> _Result:
    orgs = sorted(store.list_orgs(), key=lambda o: o.org)
    rows = [(o.org, "on" if o.cert_auth else "off") for o in orgs]
    return _Result([org_json(o) for o in orgs], _table(("ORG", "CERT AUTH"), rows, "no organisations"))


# -- cert -------------------------------------------------------------------------------------


def _read_upload(args: argparse.Namespace) -> bytes:
    return _read_input(args.file)


def _cert_upload(store: Store, args: argparse.Namespace) -> _Result:
    if args.org is not None:
        user = store.get_user(args.user)
        if user.org != args.org:
            raise ManagementError(
                Reason.UNKNOWN_USER,
                f"user {args.user!r} is not in organisation {args.org!r} (it belongs to {user.org!r})",
            )
    record = store.upload_certificate(
        args.input, user_id=args.user, label=args.label, uploaded_by=_uploader()
    )
    return _Result(cert_json(record), record.fingerprint)


def _cert_list(store: Store, args: argparse.Namespace) -> _Result:
    if args.user is not None:
        store.get_user(args.user)  # a mistyped user is refused, not shown as "no certificates"
    certs = sorted(
        store.list_certificates(user_id=args.user, org=args.org),
        key=lambda c: (c.org, c.user_id, c.uploaded_at, c.fingerprint),
    )
    rows = [
        (
            c.user_id,
            c.label,
            _short(c.fingerprint),
            c.subject,
            c.issuer,
            iso(c.uploaded_at),
            iso(c.not_after),
            c.days_left(),
        )
        for c in certs
    ]
    headers = ("USER", "LABEL", "FINGERPRINT", "SUBJECT", "ISSUER", "UPLOADED", "EXPIRES", "DAYS LEFT")
    return _Result([cert_json(c) for c in certs], _table(headers, rows, "no certificates"))


def _resolve(store: Store, digits: str) -> str:
    """The full fingerprint ``digits`` names: itself, or the one certificate it is a prefix of."""
    if len(digits) == 64:
        return digits
    matches = store.find_fingerprints(digits, limit=2)
    if not matches:
        raise ManagementError(Reason.NOT_FOUND, f"no certificate's fingerprint starts with {digits}")
    if len(matches) > 1:
        raise _UsageError(
            f"fingerprint prefix {digits} matches more than one certificate; give more digits"
        )
    return matches[0]


def _cert_show(store: Store, args: argparse.Namespace) -> _Result:
    cert = store.get_certificate(_resolve(store, args.fingerprint))
    data = cert_json(cert)
    width = max(len(k) for k in data)
    text = "\n".join(
        f"{k.replace('_', ' '):<{width}}  {_printable('-' if v is None else v)}" for k, v in data.items()
    )
    return _Result(data, text)


def _cert_download(store: Store, args: argparse.Namespace) -> _Result:
    fp = _resolve(store, args.fingerprint)
    pem = store.download_certificate(fp)
    if args.output is not None and args.output != "-":
        try:
            Path(args.output).write_bytes(pem)
        except OSError as exc:
            raise _UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        return _Result(
            {"fingerprint": fp, "file": args.output, "bytes": len(pem)},
            f"wrote {len(pem)} bytes to {args.output}",
        )
    if args.json:
        return _Result({"fingerprint": fp, "pem": pem.decode("utf-8", "surrogateescape")})
    sys.stdout.flush()
    sys.stdout.buffer.write(pem)
    sys.stdout.buffer.flush()
    return _Result(None)


def _cert_rename(store: Store, args: argparse.Namespace) -> _Result:
    cert = store.rename_certificate(_resolve(store, args.fingerprint), args.label)
    return _Result(cert_json(cert), f"{cert.fingerprint}: label {_printable(cert.label)}")


def _cert_delete(store: Store, args: argparse.Namespace) -> _Result:
    fp = _resolve(store, args.fingerprint)
    store.delete_certificate(fp)
    return _Result({"deleted": fp}, f"deleted {fp}")


def _read_import(args: argparse.Namespace) -> list[CsvRow]:
    name: str = args.csv_file
    raw = _read_input(name)
    base = Path.cwd() if name == "-" else Path(name).parent
    try:
        return parse_import(raw, name=name, base=base)
    except CsvFormatError as exc:
        raise _UsageError(str(exc)) from None


def _cert_import(store: Store, args: argparse.Namespace) -> _Result:
    rows: list[CsvRow] = args.input
    try:
        records = store.upload_certificates([r.upload for r in rows], uploaded_by=_uploader())
    except BatchRefused as exc:
        raise _ImportRefused(exc, rows) from None
    return _Result(
        {"imported": len(records), "fingerprints": [r.fingerprint for r in records]},
        f"imported {len(records)} certificate{'' if len(records) == 1 else 's'} from {args.csv_file}",
    )


class _ImportRefused(Exception):
    """An import refused as a whole; carries every refused row for the report."""

    def __init__(self, refused: BatchRefused, rows: Sequence[CsvRow]) -> None:
        super().__init__(str(refused))
        self.reason = refused.reason
        self.rows = refused_rows(refused, rows)
        self.message = (
            f"{len(self.rows)} of {len(rows)} row{'' if len(rows) == 1 else 's'} refused; "
            "nothing was imported"
        )


def _cert_export(store: Store, args: argparse.Namespace) -> _Result:
    certs = store.list_certificates()
    data = export_csv(certs)
    name: str = args.csv_file
    if name == "-":
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        try:
            Path(name).write_bytes(data)
        except OSError as exc:
            raise _UsageError(f"cannot write {name}: {exc.strerror or exc}") from None
    count = f"{len(certs)} certificate{'' if len(certs) == 1 else 's'}"
    return _Result(
        {"exported": len(certs), "file": name},
        f"exported {count} to {'standard output' if name == '-' else name}",
        to_stderr=name == "-",
    )


# -- history ----------------------------------------------------------------------------------


def _history(store: Store, args: argparse.Namespace) -> _Result:
    records = store.login_history(
        user_id=args.user,
        failed_only=args.failed,
        outcome=args.outcome,
        since=args.since,
        until=args.until,
        limit=args.limit,
    )
    rows = [
        (iso(r.when), r.outcome, r.user_id, _short(r.fingerprint), r.source, r.peer, r.detail)
        for r in records
    ]
    headers = ("TIME", "OUTCOME", "USER", "FINGERPRINT", "SOURCE", "PEER", "DETAIL")
    return _Result([login_json(r) for r in records], _table(headers, rows, "no login records"))


def _history_prune(store: Store, args: argparse.Namespace) -> _Result:
    given = [o for o in ("user", "outcome", "since", "until") if getattr(args, o) is not None]
    if given or args.failed:
        # "history --user bob prune" would otherwise prune everyone's records.
        raise _UsageError("history prune removes by age only; it takes no filters but --older-than")
    removed = store.prune_history(older_than=args.older_than)
    return _Result({"removed": removed}, f"removed {removed} login record{'' if removed == 1 else 's'}")


# -- serve ------------------------------------------------------------------------------------

_APP_SPEC = re.compile(r"([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")


def _load_app(spec: str) -> Any:
    import importlib  # here, not at the top: the store commands need none of this

    match = _APP_SPEC.fullmatch(spec)
    if match is None:
        raise _UsageError(f"{spec!r} is not MODULE:APP (for example myapp:app or pkg.wsgi:application)")
    module_name, attribute = match.groups()
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise _UsageError(f"cannot import {module_name}: {exc}") from None
    except ConfigurationError as exc:
        raise _UsageError(f"{module_name}: {exc.detail}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise _UsageError(f"{module_name} has no attribute {attribute}") from None
    if not callable(target):
        raise _UsageError(f"{spec} is not a WSGI application (not callable)")
    return target


def _run_serve(args: argparse.Namespace) -> int:
    import logging
    import signal

    from ..server import make_server

    try:
        app = _load_app(args.app)
        server = make_server(
            app, certfile=args.cert, keyfile=args.key, trust_roots=args.trust, host=args.host, port=args.port
        )
    except _UsageError as exc:
        return _usage(args, str(exc))
    except ConfigurationError as exc:
        return _usage(args, exc.detail)
    except OSError as exc:
        return _usage(args, f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    # The app may have configured logging itself (Django's LOGGING, on import): a root handler
    # added then would print each of its lines twice.
    if not logging.getLogger().handlers and not logging.getLogger("mtls_middleware").handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def stop(signum: int, _frame: object) -> None:
        logging.getLogger("mtls_middleware.server").info("%s: shutting down", signal.Signals(signum).name)
        server.shutdown()  # on this thread it only asks; serve_forever finishes the job

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"serving {args.app} on {server.url} (Ctrl-C to stop)", flush=True)
        server.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("stopped", flush=True)
    return EXIT_OK


# -- running ----------------------------------------------------------------------------------


def _usage(args: argparse.Namespace, message: str) -> int:
    if args.json:
        print(json.dumps({"outcome": "error", "error": "usage", "message": message}))
    else:
        print(f"mtls-admin: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _refused(
    args: argparse.Namespace, reason: Reason, message: str, rows: list[dict[str, Any]] | None = None
) -> int:
    if args.json:
        body: dict[str, Any] = {"error": reason.value, "message": message}
        if rows is not None:
            body["refused"] = rows
        print(json.dumps(body, indent=2))
    else:
        print(f"refused: {reason.value}: {message}", file=sys.stderr)
        for row in rows or ():
            user = f" (user {_printable(row['user_id'])})" if row["user_id"] else ""
            print(f"  row {row['row']}{user}: {row['error']}: {_printable(row['message'])}", file=sys.stderr)
    return EXIT_REFUSED


def _run_check(args: argparse.Namespace) -> int:
    try:
        status, result = _check(args)
    except (_UsageError, ConfigurationError) as exc:
        return _usage(args, exc.detail if isinstance(exc, ConfigurationError) else str(exc))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_check(result)
    return status


def _run_store_command(args: argparse.Namespace) -> int:
    handler: Callable[[Store, argparse.Namespace], _Result] = args.handler
    reader: Callable[[argparse.Namespace], Any] | None = getattr(args, "reader", None)
    url: str = args.db or os.environ.get("MTLS_DB") or DEFAULT_DB
    try:
        # Inputs are read before the store is opened: a mistyped file name creates no database.
        args.input = reader(args) if reader is not None else None
    except _UsageError as exc:
        return _usage(args, str(exc))
    try:
        store = open_store(url)
    except ConfigurationError as exc:
        return _usage(args, exc.detail)
    except (OSError, sqlite3.Error, UnicodeEncodeError) as exc:
        return _usage(args, f"cannot open the store {url!r}: {exc}")
    try:
        result = handler(store, args)
    except _UsageError as exc:
        return _usage(args, str(exc))
    except UnicodeEncodeError as exc:
        # Undecodable bytes in an argument (POSIX hands them over as lone surrogates): the
        # stores refuse them on writes; a SQLite lookup cannot even encode them.
        return _usage(args, f"{exc.object!r} is not UTF-8 text")
    except _ImportRefused as exc:
        return _refused(args, exc.reason, exc.message, exc.rows)
    except ConfigurationError as exc:
        return _usage(args, exc.detail)
    except MTLSError as exc:
        return _refused(args, exc.reason, exc.detail)
    except OSError as exc:
        return _usage(args, str(exc))
    finally:
        store.close()
    stream = sys.stderr if result.to_stderr else sys.stdout
    if args.json and result.data is not None:
        print(json.dumps(result.data, indent=2), file=stream)
    elif not args.json and result.text:
        print(result.text, file=stream)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mtls-admin``; return its exit status (0 done or accepted, 1 refused, 2 usage error)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if args.command == "check":
        return _run_check(args)
    if args.command == "serve":
        return _run_serve(args)
    if args.command == "demo":
        return _run_demo(args)
    return _run_store_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

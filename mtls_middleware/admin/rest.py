"""The REST API: certificates, users, organisations, login history and the audit log over HTTP.

``RestAPI(store)`` is a WSGI application (werkzeug routing) that can be mounted under any prefix
(it routes on ``PATH_INFO`` and builds links from ``SCRIPT_NAME``); :func:`asgi_app` runs it inside
an asyncio ASGI application. It is a thin layer over the :class:`~mtls_middleware.stores.base.Store`
methods; its OpenAPI 3.1 document is served at ``openapi.json`` (see
:mod:`mtls_middleware.admin.openapi` and ``docs/rest-api.md``).

Who may call it
    Our own middleware authenticates the caller outside this application (WSGI
    :class:`~mtls_middleware.wsgi.MTLSMiddleware`, or the ASGI one in front of :func:`asgi_app`):
    a request without ``environ["mtls_middleware.identity"]`` is answered 401 ``no_certificate``,
    one whose identity lacks the ``manage_certificates`` permission 403 ``permission_denied``.
    Only ``openapi.json`` is served to anyone who reaches the application.

Cross-site request forgery
    A client certificate is a credential the browser presents by itself, so a change (any method
    but GET, HEAD, OPTIONS) is refused 403 ``permission_denied`` when ``Sec-Fetch-Site`` says it
    comes from another site or ``Origin`` names another origin; and a POST a browser could send
    cross-site without a CORS preflight (a body that is not JSON, PEM or CSV: multipart, a form,
    text/plain, none) must carry the header :data:`CSRF_HEADER` (``X-MTLS-CSRF: 1``), which no
    page of another site can add without a preflight this application never answers.

What it answers
    JSON everywhere (``application/json``), except a certificate asked for with ``Accept:
    application/x-pem-file`` (the PEM exactly as uploaded) and the CSV export (``text/csv``).
    Every refusal is ``{"error": code, "message": sentence}`` with the code's status (DESIGN.md's
    reason codes, plus ``invalid_request`` 400, ``permission_denied`` 403, ``method_not_allowed``
    405, ``duplicate_user`` 409, ``request_too_large`` 413, ``unsupported_media_type`` 415); an
    ``invalid_request`` names the offending ``parameter``. Nothing a client sends gives a 500.

Every change is audited
    Uploads, imports, renames, deletions, user and organisation changes are recorded with
    :meth:`~mtls_middleware.stores.base.Store.record_audit` (actor: ``rest:`` and the caller's user
    id; the state before and after) and can be read back at ``GET audit-log``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import io
import json
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote, urlsplit

from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge
from werkzeug.routing import BaseConverter, Map, Rule
from werkzeug.wrappers import Request, Response

from ..errors import ConfigurationError, ManagementError, MTLSError, NoCertificateError, Reason
from ..history import ACCEPTED
from ..identity import ENVIRON_KEY, Identity
from ..stores.base import (
    MANAGE_CERTIFICATES,
    MAX_UPLOAD_BYTES,
    AuditEntry,
    BatchRefused,
    CertificateRecord,
    OrgRecord,
    Store,
    _storable,
)
from ..wsgi import error_response
from . import openapi
from ._shapes import cert_json, cert_state, iso, login_json, org_json, user_json
from .csvio import CsvFormatError, export_csv, parse_import, refused_rows

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = [
    "ACTOR_PREFIX",
    "CSRF_HEADER",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_IMPORT_BODY",
    "MAX_PAGE",
    "RestAPI",
    "asgi_app",
    "make_app",
]

log = logging.getLogger("mtls_middleware")

#: The largest request body accepted, but for CSV imports: a 1 MB PEM, JSON-escaped, and a margin.
DEFAULT_MAX_BODY = MAX_UPLOAD_BYTES + MAX_UPLOAD_BYTES // 10 + 64 * 1024
#: The largest CSV import accepted.
DEFAULT_MAX_IMPORT_BODY = 16 * 1024 * 1024
#: The most items one page of a listing may hold (``limit``); the default is 100.
MAX_PAGE = 1000
DEFAULT_PAGE = 100

PEM_TYPE = "application/x-pem-file"
JSON_TYPE = "application/json"
CSV_TYPE = "text/csv"
MULTIPART_TYPE = "multipart/form-data"

#: What the audit log's ``actor`` (and a certificate's ``uploaded_by``) starts with for a change made
#: through the API: ``rest:<user_id>``, never to be mistaken for ``django:<username>`` or
#: ``mtls-admin:<login>`` whatever the user id is.
ACTOR_PREFIX = "rest:"
#: The header a POST with a body a browser may send cross-site without a preflight must carry.
CSRF_HEADER = openapi.CSRF_HEADER
#: Methods that change nothing: neither the origin checks nor the header apply to them.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Bodies a browser sends cross-site only after a CORS preflight (which this API never answers);
#: any other POST (multipart, a form, text/plain, no Content-Type) needs :data:`CSRF_HEADER`.
_PREFLIGHTED_TYPES = frozenset({JSON_TYPE, PEM_TYPE, CSV_TYPE})
#: ``Sec-Fetch-Site`` values of a request the user's own page (or the user, typing) made.
_OWN_SITE = frozenset({"same-origin", "none"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

_NAME = re.compile(openapi.NAME_PATTERN)
_LABEL = re.compile(openapi.LABEL_PATTERN)
_LIMIT = re.compile(r"[0-9]{1,9}")
_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_OUTCOMES = frozenset({ACCEPTED, *(r.value for r in Reason)})


class _Invalid(MTLSError):
    """An invalid request: ``parameter`` names what is wrong (shown to the client)."""

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(Reason.INVALID_REQUEST, detail)
        self.parameter = parameter


def _invalid(parameter: str, detail: str) -> NoReturn:
    raise _Invalid(parameter, detail)


# -- JSON shapes --------------------------------------------------------------------------------


def _audit_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "time": iso(entry.time, fraction=True),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "before": entry.before,
        "after": entry.after,
    }


# -- responses ----------------------------------------------------------------------------------


def _response(
    body: bytes, status: int, content_type: str, headers: Iterable[tuple[str, str]] = ()
) -> Response:
    response = Response(body, status=status, content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    for name, value in headers:
        response.headers[name] = value
    return response


def _json(data: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Response:
    body = json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogateescape")
    return _response(body, status, JSON_TYPE, headers)


def _error(error: MTLSError, **extra: Any) -> Response:
    _status, headers, body = error_response(error)
    if extra:
        body = json.dumps({**error.to_json(), **extra}).encode()
    response = Response(body, status=error.status)
    for name, value in headers:
        if name != "Content-Length":
            response.headers[name] = value
    return response


# -- request parsing ----------------------------------------------------------------------------


def _text(value: object, parameter: str, pattern: re.Pattern[str], max_length: int) -> str:
    if not isinstance(value, str):
        _invalid(parameter, f"{parameter} must be a string")
    if not 1 <= len(value) <= max_length or pattern.fullmatch(value) is None:
        _invalid(parameter, f"{parameter} must be 1 to {max_length} characters without control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        _invalid(parameter, f"{parameter} must be UTF-8 text")
    return value


def _name(value: object, parameter: str) -> str:
    """A user id, organisation or permission name: no control characters, no surrounding blanks."""
    return _text(value, parameter, _NAME, openapi.MAX_NAME)


def _label(value: object, parameter: str = "label") -> str:
    return _text(value, parameter, _LABEL, openapi.MAX_LABEL)


def _bool(value: object, parameter: str) -> bool:
    if type(value) is not bool:
        _invalid(parameter, f"{parameter} must be true or false")
    return value


def _permissions(value: object) -> list[str]:
    if not isinstance(value, list) or len(value) > openapi.MAX_PERMISSIONS:
        _invalid("permissions", f"permissions must be a list of at most {openapi.MAX_PERMISSIONS} names")
    names = [_name(item, "permissions") for item in value]
    if len(set(names)) != len(names):
        _invalid("permissions", "permissions must not repeat a name")
    return names


def _time(text: str, parameter: str) -> dt.datetime:
    if _TIME.fullmatch(text) is None:
        _invalid(parameter, f"{parameter} must be an RFC 3339 time such as 2026-01-01T00:00:00Z")
    # fromisoformat takes at most 6 fractional digits; RFC 3339 allows more.
    text = text.replace("z", "Z").replace("t", "T").replace("Z", "+00:00")
    text = re.sub(r"(\.[0-9]{6})[0-9]+", r"\1", text)
    try:
        return dt.datetime.fromisoformat(text).astimezone(dt.timezone.utc)
    except (ValueError, OverflowError):
        _invalid(parameter, f"{parameter} is not a valid time")


def _query(args: MultiDict[str, str], name: str) -> str | None:
    values = args.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        _invalid(name, f"{name} is given more than once")
    return values[0]


def _query_name(args: MultiDict[str, str], name: str) -> str | None:
    value = _query(args, name)
    return None if value is None else _name(value, name)


def _query_label(args: MultiDict[str, str], name: str) -> str | None:
    value = _query(args, name)
    return None if value is None else _label(value, name)


def _query_time(args: MultiDict[str, str], name: str) -> dt.datetime | None:
    value = _query(args, name)
    return None if value is None else _time(value, name)


def _query_bool(args: MultiDict[str, str], name: str) -> bool:
    value = _query(args, name)
    if value is None:
        return False
    if value not in ("true", "false"):
        _invalid(name, f"{name} must be true or false")
    return value == "true"


def _object(data: bytes, allowed: Mapping[str, bool]) -> dict[str, Any]:
    """The JSON object ``data``; ``allowed`` maps each accepted member to whether it is required."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, nesting beyond the parser's stack
        _invalid("body", "the body is not valid JSON")
    if not isinstance(body, dict):
        _invalid("body", "the body must be a JSON object")
    for key in body:
        if key not in allowed:
            _invalid(str(key)[:100], f"unknown member {str(key)[:100]!r}")
    for key, required in allowed.items():
        if required and key not in body:
            _invalid(key, f"{key} is required")
    return body


class _Page:
    """Cursor pagination: ``limit`` and an opaque ``cursor`` (base64url JSON, bound to its kind)."""

    def __init__(self, args: MultiDict[str, str], kind: str) -> None:
        self.kind = kind
        text = _query(args, "limit")
        if text is None:
            self.limit = DEFAULT_PAGE
        elif _LIMIT.fullmatch(text) is None or not 1 <= int(text) <= MAX_PAGE:
            _invalid("limit", f"limit must be a whole number from 1 to {MAX_PAGE}")
        else:
            self.limit = int(text)
        cursor = _query(args, "cursor")
        self.after: list[Any] | None = None if cursor is None else self._decode(cursor)

    def _decode(self, cursor: str) -> list[Any]:
        try:
            raw = base64.urlsafe_b64decode(cursor.encode("ascii") + b"=" * (-len(cursor) % 4))
            data = json.loads(raw)
        except (ValueError, binascii.Error, UnicodeEncodeError, RecursionError):
            _invalid("cursor", "cursor is not one this API gave out")
        if not (isinstance(data, list) and len(data) == 2 and data[0] == self.kind
                and isinstance(data[1], list)):
            _invalid("cursor", "cursor is not one this API gave out for this listing")
        position: list[Any] = data[1]
        return position

    def cursor(self, position: list[Any]) -> str:
        raw = json.dumps([self.kind, position], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _key_of(position: list[Any], types: tuple[type, ...]) -> tuple[Any, ...]:
    if len(position) != len(types) or not all(type(v) is t for v, t in zip(position, types, strict=True)):
        _invalid("cursor", "cursor is not one this API gave out for this listing")
    return tuple(position)


# -- cross-site request forgery -----------------------------------------------------------------


def _origin(url: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an origin or base URL, the port made explicit; None if malformed."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not parts.hostname or scheme not in _DEFAULT_PORTS:
        return None
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def _refuse_cross_site(request: Request) -> None:
    """Raise 403 ``permission_denied`` for a change a page of another site may have made: the
    browser presents the client certificate by itself, so the certificate alone proves nothing
    about who wanted the change.

    ``Sec-Fetch-Site`` and ``Origin`` are set by browsers and cannot be forged by a page; a
    missing one proves nothing (old browsers, curl), hence :data:`CSRF_HEADER` for the bodies a
    page may POST cross-site without a preflight.
    """
    if request.method in _SAFE_METHODS:
        return
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site.strip().lower() not in _OWN_SITE:
        raise MTLSError(Reason.PERMISSION_DENIED, f"a cross-site change (Sec-Fetch-Site: {fetch_site[:40]})")
    origin = request.headers.get("Origin")
    if origin is not None:
        own = _origin(request.host_url)
        if own is None or _origin(origin) != own:
            raise MTLSError(
                Reason.PERMISSION_DENIED, f"a change from origin {origin[:100]!r}, not {request.host_url!r}"
            )
    if (
        request.method == "POST"
        and request.mimetype not in _PREFLIGHTED_TYPES
        and CSRF_HEADER not in request.headers  # any value: no page can add it without a preflight
    ):
        raise MTLSError(
            Reason.PERMISSION_DENIED, f"a {request.mimetype or 'bodiless'} POST without {CSRF_HEADER}"
        )


# -- the application ----------------------------------------------------------------------------


_CERT = "/certificates/<fingerprint:fingerprint>"
_USER_CERT = "/users/<user_id>/certificates/<fingerprint:fingerprint>"
#: (path, method, endpoint): the handler is the method named ``_`` + endpoint.
_ROUTES = (
    ("/openapi.json", "GET", "openapi"),
    ("/certificates", "GET", "list_certificates"),
    ("/certificates", "POST", "upload_certificate"),
    ("/certificates/export", "GET", "export_certificates"),
    ("/certificates/import", "POST", "import_certificates"),
    (_CERT, "GET", "get_certificate"),
    (_CERT, "PATCH", "rename_certificate"),
    (_CERT, "DELETE", "delete_certificate"),
    ("/users", "GET", "list_users"),
    ("/users", "POST", "create_user"),
    ("/users/<user_id>", "GET", "get_user"),
    ("/users/<user_id>", "PATCH", "update_user"),
    ("/users/<user_id>/certificates", "GET", "list_certificates"),
    ("/users/<user_id>/certificates", "POST", "upload_certificate"),
    (_USER_CERT, "GET", "get_certificate"),
    (_USER_CERT, "PATCH", "rename_certificate"),
    (_USER_CERT, "DELETE", "delete_certificate"),
    ("/organisations", "GET", "list_orgs"),
    ("/organisations/<org>", "GET", "get_org"),
    ("/organisations/<org>", "PUT", "set_org"),
    ("/login-history", "GET", "login_history"),
    ("/audit-log", "GET", "audit_log"),
)


class _FingerprintConverter(BaseConverter):
    """64 hex digits: ``certificates/export`` is then no fingerprint (a PATCH of it gets 405)."""

    regex = "[0-9a-fA-F]{64}"

_Handler = Callable[..., Response]


class RestAPI:
    """The REST API over ``store`` as a WSGI application.

    ``max_body`` bounds every request body but CSV imports, which ``max_import_body`` bounds
    (larger bodies: 413 ``request_too_large``); ``permission`` is the permission a caller's
    identity must hold (``manage_certificates``).

    Raises:
        ConfigurationError: a limit below what one certificate upload needs, or an empty permission.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        max_import_body: int = DEFAULT_MAX_IMPORT_BODY,
        permission: str = MANAGE_CERTIFICATES,
    ) -> None:
        if not isinstance(store, Store):
            raise ConfigurationError(detail=f"RestAPI needs a Store, got {type(store).__name__}")
        for what, value in (("max_body", max_body), ("max_import_body", max_import_body)):
            if type(value) is not int or value < MAX_UPLOAD_BYTES:
                raise ConfigurationError(
                    detail=f"RestAPI {what} must be a whole number of bytes >= {MAX_UPLOAD_BYTES} "
                    "(one certificate upload)"
                )
        if not isinstance(permission, str) or not permission.strip():
            raise ConfigurationError(detail="RestAPI permission must be a non-empty permission name")
        self.store = store
        self.max_body = max_body
        self.max_import_body = max_import_body
        self.permission = permission
        self._create_lock = threading.Lock()
        self._document = json.dumps(openapi.document()).encode()
        self.url_map = Map(
            [Rule(path, endpoint=endpoint, methods=[method]) for path, method, endpoint in _ROUTES],
            converters={"fingerprint": _FingerprintConverter},
            strict_slashes=False,
            redirect_defaults=False,
            merge_slashes=False,
        )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        return self.respond(request)(environ, start_response)

    def respond(self, request: Request) -> Response:
        """The response to ``request``; never raises for anything a client can send."""
        try:
            endpoint, args, actor = self._admit(request)
            if endpoint == "openapi":
                return _response(self._document, 200, JSON_TYPE)
            for key, value in args.items():
                # No store holds it; some (PostgreSQL) cannot even look it up.
                if "\x00" in value or not _storable(value):
                    raise ManagementError(Reason.UNKNOWN_USER if key == "user_id" else Reason.NOT_FOUND)
            handler: _Handler = getattr(self, "_" + endpoint)
            return handler(request, actor, **args)
        except Exception as exc:  # every refusal, and every fault of ours, is answered in one place
            return self._refusal(request, exc)

    def _screen(self, environ: WSGIEnvironment) -> tuple[Response | None, int]:
        """What can be decided of a request before its body is read: the refusal (a path or
        method with no operation, a caller without identity or permission, a cross-site change),
        or None and the body limit of its operation. Cheap and non-blocking (no store call): the
        ASGI adapter calls it on the event loop.
        """
        # shallow: nothing may read the body yet; no environ["werkzeug.request"] left behind.
        request = Request(environ, populate_request=False, shallow=True)
        try:
            endpoint, _args, _actor = self._admit(request)
        except Exception as exc:  # whatever respond() would answer, answered the same way
            return self._refusal(request, exc), 0
        return None, self.max_import_body if endpoint == "import_certificates" else self.max_body

    def _admit(self, request: Request) -> tuple[str, Mapping[str, Any], str | None]:
        """The operation (endpoint, path arguments) and the actor, once routing, authorization and
        the cross-site checks let the request through; ``openapi.json`` has no actor."""
        adapter = self.url_map.bind_to_environ(request.environ)
        endpoint, args = adapter.match()
        if endpoint == "openapi":
            return endpoint, args, None
        actor = self._authorize(request)
        _refuse_cross_site(request)
        return endpoint, args, actor

    @staticmethod
    def _refusal(request: Request, exc: Exception) -> Response:
        """The answer to what routing, ``_admit`` or a handler raised."""
        if isinstance(exc, _Invalid):
            return _error(exc, parameter=exc.parameter)
        if isinstance(exc, ConfigurationError):
            # Raised by a store for a value it refuses (an empty name, a label that is not text);
            # the store is configured before the application is built.
            return _error(MTLSError(Reason.INVALID_REQUEST))
        if isinstance(exc, MTLSError):
            if exc.status >= 500:
                log.error("mtls_middleware: REST %s %s: %s", request.method, request.path, exc)
            return _error(exc)
        if isinstance(exc, MethodNotAllowed):
            response = _error(MTLSError(Reason.METHOD_NOT_ALLOWED))
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods or ()))
            return response
        if isinstance(exc, NotFound):
            return _error(MTLSError(Reason.NOT_FOUND))
        if isinstance(exc, RequestEntityTooLarge):
            return _error(MTLSError(Reason.REQUEST_TOO_LARGE))
        if isinstance(exc, HTTPException):  # werkzeug's own 400s (a malformed form body, a bad header)
            return _error(MTLSError(Reason.INVALID_REQUEST))
        # Fail closed: a fault of ours must not reach the client as a trace.
        log.error("mtls_middleware: REST %s %s failed", request.method, request.path, exc_info=exc)
        return _error(MTLSError(Reason.INTERNAL_ERROR))

    # -- plumbing ---------------------------------------------------------------------------
    def _authorize(self, request: Request) -> str:
        identity = request.environ.get(ENVIRON_KEY)
        if not isinstance(identity, Identity):
            raise NoCertificateError(detail="the REST API was reached without an authenticated identity")
        if self.permission not in identity.permissions:
            raise MTLSError(Reason.PERMISSION_DENIED, f"{identity.user_id} lacks {self.permission}")
        return ACTOR_PREFIX + identity.user_id

    def _audit(
        self,
        actor: str,
        action: str,
        target: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> None:
        self.store.record_audit(
            AuditEntry(
                actor=actor, action=action, target=target, before=before, after=after,
                time=dt.datetime.now(dt.timezone.utc),
            )
        )

    @staticmethod
    def _read(request: Request, limit: int) -> bytes:
        length = request.content_length
        if length is not None and length > limit:
            raise MTLSError(Reason.REQUEST_TOO_LARGE, f"a body of {length} bytes; the limit is {limit}")
        data = request.stream.read(limit + 1)
        if len(data) > limit:
            raise MTLSError(Reason.REQUEST_TOO_LARGE, f"a body over {limit} bytes")
        return data

    def _json_body(self, request: Request, allowed: Mapping[str, bool]) -> dict[str, Any]:
        if request.mimetype != JSON_TYPE:
            raise MTLSError(Reason.UNSUPPORTED_MEDIA_TYPE, f"{request.mimetype!r} where JSON is expected")
        return _object(self._read(request, self.max_body), allowed)

    @staticmethod
    def _form(request: Request, data: bytes) -> tuple[MultiDict[str, str], dict[str, bytes]]:
        """The fields and files of a multipart body already read (and bounded) into ``data``."""
        environ = {
            "REQUEST_METHOD": "POST",
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(data)),
            "wsgi.input": io.BytesIO(data),
        }
        parsed = Request(environ)
        parsed.max_form_memory_size = len(data) + 1
        files = {name: storage.read() for name, storage in parsed.files.items()}
        return parsed.form, files

    def _user_of(self, user_id: str | None) -> None:
        if user_id is not None:
            self.store.get_user(user_id)  # unknown_user, not an empty listing

    def _certificate(self, fingerprint: str, user_id: str | None) -> CertificateRecord:
        if user_id is not None:
            self.store.get_user(user_id)
        cert = self.store.get_certificate(fingerprint)
        if user_id is not None and cert.user_id != user_id:
            raise ManagementError(Reason.NOT_FOUND, f"certificate {fingerprint} is not {user_id}'s")
        return cert

    def _location(self, request: Request, path: str) -> tuple[str, str]:
        return ("Location", request.script_root + path)

    # -- certificates -------------------------------------------------------------------------
    def _list_certificates(self, request: Request, actor: str, user_id: str | None = None) -> Response:
        args = request.args
        page = _Page(args, "certificates")
        if user_id is None:
            user_id = _query_name(args, "user_id")
        org = _query_name(args, "org")
        expiring_before = _query_time(args, "expiring_before")
        self._user_of(user_id)
        certs = self.store.list_certificates(user_id=user_id, org=org)
        if expiring_before is not None:
            certs = [c for c in certs if c.not_after < expiring_before]
        # A total order that deletions cannot shift: the cursor names the last item shown.
        certs.sort(key=lambda c: (int(c.uploaded_at.timestamp()), c.fingerprint))
        if page.after is not None:
            after = _key_of(page.after, (int, str))
            certs = [c for c in certs if (int(c.uploaded_at.timestamp()), c.fingerprint) > after]
        shown = certs[: page.limit]
        next_cursor = None
        if len(certs) > page.limit:
            last = shown[-1]
            next_cursor = page.cursor([int(last.uploaded_at.timestamp()), last.fingerprint])
        return _json({"items": [cert_json(c) for c in shown], "next_cursor": next_cursor})

    def _upload_certificate(self, request: Request, actor: str, user_id: str | None = None) -> Response:
        nested = user_id is not None
        mimetype = request.mimetype
        label: str | None = None
        # For raw PEM uploads; checked whatever the body, as documented for the operation.
        query_user = None if nested else _query_name(request.args, "user_id")
        query_label = _query_label(request.args, "label")
        if mimetype == JSON_TYPE:
            body = _object(
                self._read(request, self.max_body), {"pem": True, "label": False, "user_id": not nested}
            )
            if not isinstance(body["pem"], str) or not body["pem"]:
                _invalid("pem", "pem must be the certificate's PEM text")
            pem = body["pem"].encode("utf-8", "surrogatepass")
            if "label" in body and body["label"] is not None:
                label = _label(body["label"])
            if "user_id" in body:
                if nested:
                    _invalid("user_id", "user_id is given by the path")
                user_id = _name(body["user_id"], "user_id")
        elif mimetype == PEM_TYPE:
            pem = self._read(request, self.max_body)
            label = query_label
            if not nested:
                user_id = query_user
        elif mimetype == MULTIPART_TYPE:
            form, files = self._form(request, self._read(request, self.max_body))
            if "file" not in files:
                _invalid("file", "the multipart body needs a file part named file")
            pem = files["file"]
            for key in [*form, *files]:
                if key == "file":
                    continue
                if key not in ("label", "user_id") or key in files:
                    _invalid(key[:100], f"unknown form field {key[:100]!r}")
            if form.get("label") is not None:
                label = _label(form.get("label"))
            if "user_id" in form:
                if nested:
                    _invalid("user_id", "user_id is given by the path")
                user_id = _name(form.get("user_id"), "user_id")
        else:
            raise MTLSError(
                Reason.UNSUPPORTED_MEDIA_TYPE,
                f"upload as {JSON_TYPE}, {PEM_TYPE} or {MULTIPART_TYPE}, not {mimetype!r}",
            )
        if user_id is None:
            _invalid("user_id", "user_id is required")
        record = self.store.upload_certificate(pem, user_id=user_id, label=label, uploaded_by=actor)
        self._audit(actor, "certificate.upload", record.fingerprint, None, cert_state(record))
        prefix = f"/users/{_quote(user_id)}" if nested else ""
        location = self._location(request, f"{prefix}/certificates/{record.fingerprint}")
        return _json(cert_json(record), 201, [location])

    def _get_certificate(
        self, request: Request, actor: str, fingerprint: str, user_id: str | None = None
    ) -> Response:
        cert = self._certificate(fingerprint, user_id)
        if request.accept_mimetypes.best_match([JSON_TYPE, PEM_TYPE], default=JSON_TYPE) == PEM_TYPE:
            disposition = ("Content-Disposition", f'attachment; filename="{cert.fingerprint}.pem"')
            return _response(cert.pem, 200, PEM_TYPE, [disposition])
        return _json(cert_json(cert), headers=[("Vary", "Accept")])

    def _rename_certificate(
        self, request: Request, actor: str, fingerprint: str, user_id: str | None = None
    ) -> Response:
        cert = self._certificate(fingerprint, user_id)
        body = self._json_body(request, {"label": True})
        label = _label(body["label"])
        renamed = self.store.rename_certificate(cert.fingerprint, label)
        self._audit(actor, "certificate.rename", cert.fingerprint, cert_state(cert), cert_state(renamed))
        return _json(cert_json(renamed))

    def _delete_certificate(
        self, request: Request, actor: str, fingerprint: str, user_id: str | None = None
    ) -> Response:
        cert = self._certificate(fingerprint, user_id)
        self.store.delete_certificate(cert.fingerprint)
        self._audit(actor, "certificate.delete", cert.fingerprint, cert_state(cert), None)
        response = Response(status=204)
        del response.headers["Content-Type"]
        response.headers["Cache-Control"] = "no-store"
        return response

    def _export_certificates(self, request: Request, actor: str) -> Response:
        user_id = _query_name(request.args, "user_id")
        org = _query_name(request.args, "org")
        self._user_of(user_id)
        data = export_csv(self.store.list_certificates(user_id=user_id, org=org))
        disposition = ("Content-Disposition", 'attachment; filename="certificates.csv"')
        return _response(data, 200, CSV_TYPE, [disposition])

    def _import_certificates(self, request: Request, actor: str) -> Response:
        mimetype = request.mimetype
        data = self._read(request, self.max_import_body)
        if mimetype == MULTIPART_TYPE:
            form, files = self._form(request, data)
            if "file" not in files or any(key != "file" for key in [*form, *files]):
                _invalid("file", "the multipart body needs exactly one part: a file named file")
            data = files["file"]
        elif mimetype != CSV_TYPE:
            raise MTLSError(Reason.UNSUPPORTED_MEDIA_TYPE, f"import {CSV_TYPE}, not {mimetype!r}")
        try:
            rows = parse_import(data, name="the CSV", base=None)
        except CsvFormatError as exc:
            raise _Invalid("file", str(exc)) from None
        try:
            records = self.store.upload_certificates([r.upload for r in rows], uploaded_by=actor)
        except BatchRefused as exc:
            # The client gets each row's reason and its fixed sentence; what exactly was wrong
            # (a parser's message, say) may quote server internals and goes to the log only.
            for index, refusal in exc.refusals:
                log.info("mtls_middleware: REST import by %s: row %d refused (%s): %s",
                         actor, rows[index].row, refusal.reason.value, refusal.detail)
            return _error(exc, rows=refused_rows(exc, rows, detail=False))
        for record in records:
            self._audit(actor, "certificate.import", record.fingerprint, None, cert_state(record))
        return _json({"imported": len(records), "fingerprints": [r.fingerprint for r in records]}, 201)

    # -- users ------------------------------------------------------------------------------
    def _list_users(self, request: Request, actor: str) -> Response:
        page = _Page(request.args, "users")
        org = _query_name(request.args, "org")
        users = self.store.list_users(org=org)
        if page.after is not None:
            (after,) = _key_of(page.after, (str,))
            users = [u for u in users if u.user_id > after]
        shown = users[: page.limit]
        next_cursor = page.cursor([shown[-1].user_id]) if len(users) > page.limit else None
        return _json({"items": [user_json(u) for u in shown], "next_cursor": next_cursor})

    def _create_user(self, request: Request, actor: str) -> Response:
        body = self._json_body(
            request, {"user_id": True, "org": False, "active": False, "permissions": False}
        )
        user_id = _name(body["user_id"], "user_id")
        org = _name(body.get("org", "default"), "org")
        active = _bool(body.get("active", True), "active")
        permissions = _permissions(body.get("permissions", []))
        # The store has no create-if-absent: add_user replaces an existing user. The lock makes
        # check-then-add atomic among this application's threads; a concurrent writer elsewhere
        # (another process, mtls-admin, the Django admin) can still slip in between the two calls.
        with self._create_lock:
            if self._user_exists(user_id):
                raise MTLSError(Reason.DUPLICATE_USER, f"user {user_id} exists")
            user = self.store.add_user(user_id, org=org, active=active, permissions=permissions)
        self._audit(actor, "user.create", user_id, None, user_json(user))
        return _json(user_json(user), 201, [self._location(request, f"/users/{_quote(user_id)}")])

    def _user_exists(self, user_id: str) -> bool:
        # get_user, not resolve_user: the management read, never a pipeline cache's answer.
        try:
            self.store.get_user(user_id)
        except ManagementError as exc:
            if exc.reason is Reason.UNKNOWN_USER:
                return False
            raise
        return True

    def _get_user(self, request: Request, actor: str, user_id: str) -> Response:
        return _json(user_json(self.store.get_user(user_id)))

    def _update_user(self, request: Request, actor: str, user_id: str) -> Response:
        body = self._json_body(request, {"org": False, "active": False, "permissions": False})
        if not body:
            _invalid("body", "say what to change: org, active or permissions")
        before = self.store.get_user(user_id)
        org = _name(body.get("org", before.org), "org")
        active = _bool(body.get("active", before.active), "active")
        permissions = (
            _permissions(body["permissions"]) if "permissions" in body else sorted(before.permissions)
        )
        # One store call: the user changes at once, or not at all.
        after = self.store.add_user(user_id, org=org, active=active, permissions=permissions)
        self._audit(actor, "user.update", user_id, user_json(before), user_json(after))
        return _json(user_json(after))

    # -- organisations ----------------------------------------------------------------------
    def _list_orgs(self, request: Request, actor: str) -> Response:
        return _json({"items": [org_json(o) for o in self.store.list_orgs()]})

    def _find_org(self, org: str) -> OrgRecord | None:
        return next((o for o in self.store.list_orgs() if o.org == org), None)

    def _get_org(self, request: Request, actor: str, org: str) -> Response:
        found = self._find_org(org)
        if found is None:
            raise ManagementError(Reason.NOT_FOUND, f"organisation {org}")
        return _json(org_json(found))

    def _set_org(self, request: Request, actor: str, org: str) -> Response:
        org = _name(org, "org")
        body = self._json_body(request, {"cert_auth": True})
        cert_auth = _bool(body["cert_auth"], "cert_auth")
        before = self._find_org(org)
        after = self.store.set_org(org, cert_auth=cert_auth)
        self._audit(actor, "org.set", org, None if before is None else org_json(before), org_json(after))
        return _json(org_json(after), 200 if before is not None else 201)

    # -- history and audit ------------------------------------------------------------------
    def _login_history(self, request: Request, actor: str) -> Response:
        args = request.args
        page = _Page(args, "login-history")
        user_id = _query_name(args, "user_id")
        outcome = _query(args, "outcome")
        if outcome is not None and outcome not in _OUTCOMES:
            _invalid("outcome", "outcome must be accepted or a reason code")
        failed = _query_bool(args, "failed")
        since = _query_time(args, "since")
        until = _query_time(args, "until")
        # The cursor: the time of the last record shown and how many shown records had that time.
        skip, last_time = 0, None
        if page.after is not None:
            last_time, skip = _key_of(page.after, (float, int))
            try:
                if skip < 0 or skip > 10**6:
                    raise ValueError(skip)
                bound = dt.datetime.fromtimestamp(last_time, dt.timezone.utc) + dt.timedelta(milliseconds=1)
            except (ValueError, OverflowError, OSError):  # NaN, out of range: not a cursor of ours
                _invalid("cursor", "cursor is not one this API gave out for this listing")
            until = bound if until is None else min(until, bound)
        want = page.limit + 1
        fetch = want + skip + 64
        while True:
            records = self.store.login_history(
                user_id=user_id, failed_only=failed, outcome=outcome, since=since, until=until, limit=fetch
            )
            exhausted = len(records) < fetch
            if last_time is not None:
                older = [r for r in records if r.time < last_time]
                same = [r for r in records if r.time == last_time][skip:]
                records = same + older
            if exhausted or len(records) >= want:
                break
            fetch *= 2
        shown = records[: page.limit]
        next_cursor = None
        if len(records) > page.limit:
            last = shown[-1].time
            same_count = sum(1 for r in shown if r.time == last)
            if last == last_time:
                same_count += skip
            next_cursor = page.cursor([float(last), same_count])
        return _json({"items": [login_json(r, fraction=True) for r in shown], "next_cursor": next_cursor})

    def _audit_log(self, request: Request, actor: str) -> Response:
        args = request.args
        page = _Page(args, "audit-log")
        before_id = None
        if page.after is not None:
            (before_id,) = _key_of(page.after, (int,))
            before_id = max(0, min(before_id, 2**63 - 1))  # a bigint in every store
        entries = self.store.audit_log(
            actor=_query_name(args, "actor"),
            target=_query_label(args, "target"),
            action=_query_label(args, "action"),
            since=_query_time(args, "since"),
            until=_query_time(args, "until"),
            before_id=before_id,
            limit=page.limit + 1,
        )
        shown = entries[: page.limit]
        next_cursor = page.cursor([shown[-1].id]) if len(entries) > page.limit else None
        return _json({"items": [_audit_json(e) for e in shown], "next_cursor": next_cursor})


def _quote(segment: str) -> str:
    return quote(segment, safe="")


def make_app(store: Store, **options: Any) -> RestAPI:
    """``RestAPI(store, **options)``: the WSGI application."""
    return RestAPI(store, **options)


# -- ASGI ---------------------------------------------------------------------------------------

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]
_ASGIApp = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


async def serve_lifespan(receive: _Receive, send: _Send) -> None:
    """Answer an ASGI ``lifespan`` connection until shutdown: there is nothing to start or stop.

    Not in ``__all__``: a helper for ASGI apps without a lifespan of their own (the tests' apps
    use it too).
    """
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def asgi_app(app: RestAPI) -> _ASGIApp:
    """``app`` as an ASGI application (HTTP only; asyncio): mount it behind the ASGI
    :class:`~mtls_middleware.asgi.MTLSMiddleware`, e.g. ``Mount("/admin/api",
    app=asgi_app(RestAPI(store)))`` in Starlette or ``fastapi_app.mount(...)``.

    Before a byte of the body is read, the request is routed and its caller checked: no such
    operation, no identity, no permission or a cross-site change is answered at once. The body is
    then read up to its operation's limit (``max_import_body`` for the CSV import, ``max_body``
    otherwise; a declared ``Content-Length`` over it is 413 ``request_too_large`` at once, and so
    is a body that grows past it) and the WSGI application runs on the default executor, never on
    the event loop: the store's calls block. ``scope["mtls_middleware.identity"]`` becomes the
    environ's identity, ``scope["root_path"]`` its ``SCRIPT_NAME``.
    """

    async def asgi(scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise RuntimeError(f"the REST API serves HTTP only, not {scope['type']!r}")
        environ = _environ(scope, b"")
        refusal, limit = app._screen(environ)
        if refusal is not None:
            headers = refusal.get_wsgi_headers(environ).to_wsgi_list()
            await _send_response(send, refusal.status_code, headers, refusal.get_data())
            return
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            status, headers, body = error_response(MTLSError(Reason.REQUEST_TOO_LARGE))
            await _send_response(send, int(status.split()[0]), headers, body)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                status, headers, body = error_response(MTLSError(Reason.REQUEST_TOO_LARGE))
                await _send_response(send, int(status.split()[0]), headers, body)
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            started[:] = [status, headers]
            return lambda data: None

        def run() -> bytes:
            result = app(environ, start_response)
            try:
                return b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()

        answer = await asyncio.get_running_loop().run_in_executor(None, run)
        status, headers = started
        await _send_response(send, int(status.split()[0]), headers, answer)

    return asgi


def _declared_length(scope: _Scope) -> int | None:
    """The ``Content-Length`` the client declared, if one well-formed one (the server checks it)."""
    values = [v for k, v in scope.get("headers", ()) if k.lower() == b"content-length"]
    if len(values) != 1 or not values[0].strip().isdigit():
        return None
    return int(values[0])


async def _send_response(send: _Send, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _environ(scope: _Scope, body: bytes) -> dict[str, Any]:
    """The WSGI environ (PEP 3333) of an ASGI HTTP scope."""
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode("utf-8").decode("latin-1"),
        "PATH_INFO": _path_info(scope),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]) if server[1] is not None else "80",
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if client:
        environ["REMOTE_ADDR"] = str(client[0])
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        if name == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
            continue
        if name == "CONTENT_LENGTH":
            continue  # the body is already read: its real length counts
        key = f"HTTP_{name}"
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    identity = scope.get(ENVIRON_KEY)
    if identity is not None:
        environ[ENVIRON_KEY] = identity
    return environ


def _path_info(scope: _Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    # Starlette's Mount keeps the full path in "path" and the prefix in "root_path".
    if root and path.startswith(root):
        path = path[len(root):]
    return path.encode("utf-8").decode("latin-1")


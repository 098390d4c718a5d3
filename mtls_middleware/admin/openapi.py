"""The OpenAPI 3.1 document of the REST API (:mod:`mtls_middleware.admin.rest`).

Built in code, so that the limits and patterns the API enforces and the ones it documents are the
same constants; ``tests/admin/test_rest_schema.py`` runs schemathesis against it.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..errors import Reason
from ..history import ACCEPTED

__all__ = [
    "CSRF_HEADER",
    "FINGERPRINT_PATTERN",
    "LABEL_PATTERN",
    "MAX_LABEL",
    "MAX_NAME",
    "MAX_PERMISSIONS",
    "NAME_PATTERN",
    "document",
]

#: User ids, organisations and permission names: no control characters, no surrounding blanks.
NAME_PATTERN = r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$"
MAX_NAME = 255
#: Certificate labels (and the audit log's target and action filters): no control characters.
LABEL_PATTERN = r"^[^\x00-\x1f\x7f]+$"
MAX_LABEL = 1000
MAX_PERMISSIONS = 50
#: A SHA-256 fingerprint: 64 hex digits, either case.
FINGERPRINT_PATTERN = r"^[0-9a-fA-F]{64}$"

#: The header a POST with a multipart (or any other not preflighted) body must carry.
CSRF_HEADER = "X-MTLS-CSRF"

_JSON = "application/json"

_NAME: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_NAME, "pattern": NAME_PATTERN}
_LABEL: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_LABEL, "pattern": LABEL_PATTERN}
_TIME: dict[str, Any] = {"type": "string", "format": "date-time"}
_NULLABLE_TEXT: dict[str, Any] = {"type": ["string", "null"]}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


_LIMIT = _query(
    "limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "Items per page."
)
_CURSOR = _query(
    "cursor", {"type": "string"}, "The next_cursor of the previous page (opaque)."
)
_USER_PATH = _path("user_id", _NAME, "The user's id.")
_FP_PATH = _path(
    "fingerprint",
    {"type": "string", "pattern": FINGERPRINT_PATTERN},
    "SHA-256 fingerprint of the certificate's DER (64 hex digits).",
)
_ORG_PATH = _path("org", _NAME, "The organisation's name.")
_CSRF: dict[str, Any] = {
    "name": CSRF_HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "Required (any value, say 1) with a multipart/form-data body: a page of another site "
    "cannot add it without a CORS preflight, which this API never answers. A request without it, or "
    "whose Origin or Sec-Fetch-Site shows another site, is refused 403 permission_denied.",
}
_CROSS_SITE = (
    " Every change (POST, PUT, PATCH, DELETE) whose Origin is another origin, or whose Sec-Fetch-Site is "
    "neither same-origin nor none, is refused 403 permission_denied."
)
_CERT_FILTERS = [
    _query("org", _NAME, "Only the certificates of this organisation."),
    _query("expiring_before", _TIME, "Only certificates whose notAfter is before this time."),
    _CURSOR,
    _LIMIT,
]


def _json_body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {_JSON: {"schema": schema}}}


def _ok(schema: dict[str, Any], description: str, status: str = "200", **extra: Any) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {_JSON: {"schema": schema}}}
    response.update(extra)
    return {status: response, "default": {"$ref": "#/components/responses/Error"}}


def _page(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "additionalProperties": False,
        "properties": {
            "items": {"type": "array", "items": _ref(item)},
            "next_cursor": {"type": ["string", "null"], "description": "null on the last page"},
        },
    }


def _operation(operation_id: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"operationId": operation_id, "summary": summary, "responses": responses, **extra}


def _upload_body(*, nested: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "pem": {"type": "string", "minLength": 1, "description": "The certificate (and chain), PEM."},
        "label": {"oneOf": [_LABEL, {"type": "null"}], "description": "Default: the subject."},
    }
    form: dict[str, Any] = {
        "file": {"type": "string", "format": "binary", "description": "The PEM file."},
        "label": _LABEL,
    }
    required = ["pem"]
    form_required = ["file"]
    if not nested:
        properties["user_id"] = _NAME
        form["user_id"] = _NAME
        required.append("user_id")
        form_required.append("user_id")
    return {
        "required": True,
        "content": {
            _JSON: {
                "schema": {
                    "type": "object",
                    "required": required,
                    "additionalProperties": False,
                    "properties": properties,
                }
            },
            "application/x-pem-file": {"schema": {"type": "string"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": form_required,
                    "additionalProperties": False,
                    "properties": form,
                }
            },
        },
    }


def _certificate_operations(prefix: str, *, nested: bool) -> dict[str, Any]:
    tag = "nested" if nested else ""
    id_suffix = "ForUser" if nested else ""
    path_params = [_USER_PATH] if nested else []
    raw_params = [_query("label", _LABEL, "The label of a raw PEM upload.")]
    if not nested:
        raw_params.insert(0, _query("user_id", _NAME, "The owner of a raw PEM upload."))
    owner = [] if nested else [_query("user_id", _NAME, "Only this user's.")]
    list_params = [*path_params, *owner, *_CERT_FILTERS]
    item = [*path_params, _FP_PATH]
    pem_or_json = {
        "description": "The certificate: JSON, or with Accept: application/x-pem-file the PEM as uploaded.",
        "content": {
            _JSON: {"schema": _ref("Certificate")},
            "application/x-pem-file": {"schema": {"type": "string"}},
        },
    }
    return {
        prefix: {
            "get": _operation(
                f"listCertificates{id_suffix}", "List certificates", _ok(_page("Certificate"), "A page"),
                parameters=list_params, tags=["certificates", *([tag] if tag else [])],
            ),
            "post": _operation(
                f"uploadCertificate{id_suffix}",
                "Upload a certificate (JSON, raw application/x-pem-file, or multipart)",
                _ok(
                    _ref("Certificate"), "Registered", "201",
                    headers={"Location": {"schema": {"type": "string"}}},
                ),
                parameters=[*path_params, *raw_params, _CSRF],
                requestBody=_upload_body(nested=nested),
                description=f"A multipart/form-data body needs the {CSRF_HEADER} header.{_CROSS_SITE}",
                tags=["certificates"],
            ),
        },
        prefix + "/{fingerprint}": {
            "get": _operation(
                f"getCertificate{id_suffix}", "One certificate, as JSON or PEM",
                {"200": pem_or_json, "default": {"$ref": "#/components/responses/Error"}},
                parameters=item, tags=["certificates"],
            ),
            "patch": _operation(
                f"renameCertificate{id_suffix}", "Rename (set the label)",
                _ok(_ref("Certificate"), "Renamed"),
                parameters=item,
                requestBody=_json_body(
                    {
                        "type": "object",
                        "required": ["label"],
                        "additionalProperties": False,
                        "properties": {"label": _LABEL},
                    }
                ),
                tags=["certificates"],
            ),
            "delete": _operation(
                f"deleteCertificate{id_suffix}", "Delete",
                {"204": {"description": "Deleted"}, "default": {"$ref": "#/components/responses/Error"}},
                parameters=item, tags=["certificates"],
            ),
        },
    }


_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "description": "The reason code."},
            "message": {"type": "string", "description": "One sentence for humans."},
            "parameter": {"type": "string", "description": "invalid_request: what is wrong."},
            "rows": {
                "type": "array",
                "description": "A refused CSV import: every refused row.",
                "items": {
                    "type": "object",
                    "required": ["row", "user_id", "error", "message"],
                    "properties": {
                        "row": {"type": "integer"},
                        "user_id": {"type": "string"},
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                    },
                },
            },
        },
    },
    "Certificate": {
        "type": "object",
        "required": [
            "fingerprint", "user_id", "org", "label", "subject", "issuer", "serial", "not_before",
            "not_after", "days_left", "uploaded_at", "uploaded_by",
        ],
        "additionalProperties": False,
        "properties": {
            "fingerprint": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "user_id": {"type": "string"},
            "org": {"type": "string"},
            "label": {"type": "string"},
            "subject": {"type": "string"},
            "issuer": {"type": "string"},
            "serial": {"type": "string"},
            "not_before": _TIME,
            "not_after": _TIME,
            "days_left": {"type": "integer"},
            "uploaded_at": _TIME,
            "uploaded_by": _NULLABLE_TEXT,
        },
    },
    "User": {
        "type": "object",
        "required": ["user_id", "org", "active", "permissions"],
        "additionalProperties": False,
        "properties": {
            "user_id": {"type": "string"},
            "org": {"type": "string"},
            "active": {"type": "boolean"},
            "permissions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Organisation": {
        "type": "object",
        "required": ["org", "cert_auth"],
        "additionalProperties": False,
        "properties": {"org": {"type": "string"}, "cert_auth": {"type": "boolean"}},
    },
    "LoginRecord": {
        "type": "object",
        "required": [
            "time", "outcome", "user_id", "org", "fingerprint", "subject", "issuer", "serial", "source",
            "peer", "revocation", "detail",
        ],
        "additionalProperties": False,
        "properties": {
            "time": _TIME,
            "outcome": {"type": "string"},
            "user_id": _NULLABLE_TEXT,
            "org": _NULLABLE_TEXT,
            "fingerprint": _NULLABLE_TEXT,
            "subject": _NULLABLE_TEXT,
            "issuer": _NULLABLE_TEXT,
            "serial": _NULLABLE_TEXT,
            "source": {"type": "string"},
            "peer": _NULLABLE_TEXT,
            "revocation": _NULLABLE_TEXT,
            "detail": {"type": "string"},
        },
    },
    "AuditEntry": {
        "type": "object",
        "required": ["id", "time", "actor", "action", "target", "before", "after"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "integer"},
            "time": _TIME,
            "actor": {"type": "string"},
            "action": {"type": "string"},
            "target": {"type": "string"},
            "before": {"type": ["object", "null"]},
            "after": {"type": ["object", "null"]},
        },
    },
}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a new dict each call). Paths are relative to where the
    application is mounted."""
    outcomes = [ACCEPTED, *(r.value for r in Reason)]
    paths: dict[str, Any] = {}
    paths.update(_certificate_operations("/certificates", nested=False))
    paths["/certificates/export"] = {
        "get": _operation(
            "exportCertificates", "Every certificate as CSV (the mtls-admin cert export format)",
            {
                "200": {"description": "The CSV", "content": {"text/csv": {"schema": {"type": "string"}}}},
                "default": {"$ref": "#/components/responses/Error"},
            },
            parameters=[
                _query("user_id", _NAME, "Only this user's."),
                _query("org", _NAME, "Only this organisation's."),
            ],
            tags=["certificates"],
        )
    }
    paths["/certificates/import"] = {
        "post": _operation(
            "importCertificates", "Register the certificates of a CSV file, all or nothing",
            _ok(
                {
                    "type": "object",
                    "required": ["imported", "fingerprints"],
                    "additionalProperties": False,
                    "properties": {
                        "imported": {"type": "integer"},
                        "fingerprints": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "Imported",
                "201",
            ),
            parameters=[_CSRF],
            description=f"A multipart/form-data body needs the {CSRF_HEADER} header.{_CROSS_SITE}",
            requestBody={
                "required": True,
                "content": {
                    "text/csv": {"schema": {"type": "string"}},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "additionalProperties": False,
                            "properties": {"file": {"type": "string", "format": "binary"}},
                        }
                    },
                },
            },
            tags=["certificates"],
        )
    }
    paths["/users"] = {
        "get": _operation(
            "listUsers", "List users", _ok(_page("User"), "A page"),
            parameters=[_query("org", _NAME, "Only this organisation's users."), _CURSOR, _LIMIT],
            tags=["users"],
        ),
        "post": _operation(
            "createUser", "Create a user",
            _ok(_ref("User"), "Created", "201", headers={"Location": {"schema": {"type": "string"}}}),
            requestBody=_json_body(
                {
                    "type": "object",
                    "required": ["user_id"],
                    "additionalProperties": False,
                    "properties": {
                        "user_id": _NAME,
                        "org": {**_NAME, "default": "default"},
                        "active": {"type": "boolean", "default": True},
                        "permissions": {
                            "type": "array", "items": _NAME, "uniqueItems": True, "maxItems": MAX_PERMISSIONS,
                        },
                    },
                }
            ),
            tags=["users"],
        ),
    }
    paths["/users/{user_id}"] = {
        "get": _operation("getUser", "One user", _ok(_ref("User"), "The user"), parameters=[_USER_PATH],
                          tags=["users"]),
        "patch": _operation(
            "updateUser", "Activate or deactivate, set permissions, move to another organisation",
            _ok(_ref("User"), "Changed"),
            parameters=[_USER_PATH],
            requestBody=_json_body(
                {
                    "type": "object",
                    "minProperties": 1,
                    "additionalProperties": False,
                    "properties": {
                        "org": _NAME,
                        "active": {"type": "boolean"},
                        "permissions": {
                            "type": "array", "items": _NAME, "uniqueItems": True, "maxItems": MAX_PERMISSIONS,
                        },
                    },
                }
            ),
            tags=["users"],
        ),
    }
    paths.update(_certificate_operations("/users/{user_id}/certificates", nested=True))
    paths["/organisations"] = {
        "get": _operation(
            "listOrganisations", "Every organisation",
            _ok(
                {
                    "type": "object",
                    "required": ["items"],
                    "additionalProperties": False,
                    "properties": {"items": {"type": "array", "items": _ref("Organisation")}},
                },
                "The organisations",
            ),
            tags=["organisations"],
        )
    }
    paths["/organisations/{org}"] = {
        "get": _operation(
            "getOrganisation", "One organisation", _ok(_ref("Organisation"), "The organisation"),
            parameters=[_ORG_PATH], tags=["organisations"],
        ),
        "put": _operation(
            "setOrganisation", "Create an organisation or switch certificate login on or off",
            {
                **_ok(_ref("Organisation"), "Switched"),
                "201": {"description": "Created", "content": {_JSON: {"schema": _ref("Organisation")}}},
            },
            parameters=[_ORG_PATH],
            requestBody=_json_body(
                {
                    "type": "object",
                    "required": ["cert_auth"],
                    "additionalProperties": False,
                    "properties": {"cert_auth": {"type": "boolean"}},
                }
            ),
            tags=["organisations"],
        ),
    }
    paths["/login-history"] = {
        "get": _operation(
            "loginHistory", "Login attempts, newest first", _ok(_page("LoginRecord"), "A page"),
            parameters=[
                _query("user_id", _NAME, "Only this user's attempts."),
                _query("outcome", {"type": "string", "enum": outcomes}, "accepted or a reason code."),
                _query("failed", {"type": "boolean"}, "Refused attempts only."),
                _query("since", _TIME, "Attempts at or after this time."),
                _query("until", _TIME, "Attempts before this time."),
                _CURSOR,
                _LIMIT,
            ],
            tags=["history"],
        )
    }
    paths["/audit-log"] = {
        "get": _operation(
            "auditLog", "Management changes, newest first", _ok(_page("AuditEntry"), "A page"),
            parameters=[
                _query("actor", _NAME, "Changes by this user."),
                _query("target", _LABEL, "Changes of this certificate, user or organisation."),
                _query("action", _LABEL, "e.g. certificate.upload, user.update, org.set."),
                _query("since", _TIME, "Changes at or after this time."),
                _query("until", _TIME, "Changes before this time."),
                _CURSOR,
                _LIMIT,
            ],
            tags=["audit"],
        )
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mtls_middleware REST API",
            "version": __version__,
            "description": "Certificates, users, organisations, login history and audit log. Callers "
            "authenticate with a client certificate whose user holds manage_certificates." + _CROSS_SITE,
        },
        "security": [{"clientCertificate": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"clientCertificate": {"type": "mutualTLS"}},
            "schemas": _SCHEMAS,
            "responses": {
                "Error": {
                    "description": "Refused: the reason code and a sentence (see DESIGN.md's reason codes).",
                    "content": {_JSON: {"schema": _ref("Error")}},
                }
            },
        },
    }

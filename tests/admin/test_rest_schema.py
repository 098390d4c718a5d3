"""The REST API against its own OpenAPI document: schemathesis generates requests for every
operation, valid and invalid (negative mode, the coverage phase's boundary values), sends them
through the real MTLSMiddleware to the API over a real SQLite store, and checks every response:
no 5xx, the status, content type, headers and body as documented, invalid data refused with a 4xx.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from mtls_middleware.admin.openapi import CSRF_HEADER
from mtls_middleware.stores.sqlite import SQLiteStore
from mtls_middleware.testing import TestPKI
from tests.admin.rest_support import Presenting, add_admin, protected

#: Examples per operation in the fuzzing phase (the coverage phase adds its boundary cases).
MAX_EXAMPLES = 15


def _load() -> Any:
    """The schema, loaded from the application it describes. Built at import: schemathesis makes
    one test per operation at collection time (its fixture-based loader fails under pytest 9)."""
    pki = TestPKI(org="REST schema test")
    store = SQLiteStore(Path(_DIRECTORY.name) / "store.db")
    admin = pki.issue_client("schema admin")
    add_admin(store, admin)
    alice = pki.issue_client("schema alice")
    store.add_user("alice", org="acme")
    store.upload_certificate(alice.chain_pem, user_id="alice", label="alice laptop")
    app = Presenting(protected(store, pki), admin)
    loaded = schemathesis.openapi.from_wsgi("/openapi.json", app)
    loaded.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=MAX_EXAMPLES
    )
    return loaded


# A raw PEM upload is text on the wire.
schemathesis.serializer.alias("application/x-pem-file", "text/plain")
_DIRECTORY = tempfile.TemporaryDirectory(prefix="mtls-rest-schema-")
schema = _load()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
def test_every_operation_conforms_and_never_fails(case: Any) -> None:
    # Not "valid data is accepted": a well-formed cursor the API never gave out, or a raw PEM upload
    # without its user_id query parameter, is refused with a 400 by design. Everything else runs.
    if case.media_type == "multipart/form-data":
        # What the document asks of a multipart upload (not required by the schema: JSON, PEM and
        # CSV bodies do without it); a value schemathesis generated is kept.
        case.headers = {CSRF_HEADER: "1", **(case.headers or {})}
    case.call_and_validate(excluded_checks=[positive_data_acceptance])

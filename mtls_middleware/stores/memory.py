"""An in-process store: tests, demos, and apps whose users live in code."""

from __future__ import annotations

import threading
from dataclasses import replace

from cryptography import x509

from ..errors import MTLSError
from ..history import LoginRecord, MemoryHistory
from ._common import (
    AuditFilter,
    HistoryFilter,
    StoreFront,
    UploadBatch,
    audit_matches,
    batch_candidates,
    first_of_each,
    upload_record,
)
from .base import (
    AuditEntry,
    BatchRefused,
    CertificateRecord,
    OrgRecord,
    Principal,
    Upload,
    UserRecord,
    duplicate,
    not_found,
    unknown_user,
)

__all__ = ["MemoryStore"]


class MemoryStore(StoreFront):
    """A thread-safe store held in memory; ``open_store("memory://")``.

    Certificates are unique across the store: one certificate belongs to exactly one user. The
    login history keeps the newest ``history_size`` records.
    """

    def __init__(self, *, history_size: int = 100_000) -> None:
        self._lock = threading.RLock()
        self._users: dict[str, UserRecord] = {}
        self._orgs: dict[str, bool] = {}
        self._certs: dict[str, CertificateRecord] = {}
        self._history = MemoryHistory(history_size)
        self._generation = 0
        self._audit: list[AuditEntry] = []
        # Bound directly: recording runs on every request.
        self.record = self._history.record  # type: ignore[method-assign]

    @property
    def generation(self) -> int:
        return self._generation

    def _bump(self) -> None:
        self._generation += 1

    # -- the pipeline -----------------------------------------------------------------------
    def resolve_certificate(self, fingerprint: str) -> Principal | None:
        cert = self._certs.get(fingerprint.lower())
        if cert is None:
            return None
        return self.resolve_user(cert.user_id)

    def resolve_user(self, user_id: str) -> Principal | None:
        user = self._users.get(user_id)
        if user is None:
            return None
        return Principal(
            user_id=user.user_id,
            org=user.org,
            active=user.active,
            org_cert_auth=self._orgs.get(user.org, True),
            permissions=user.permissions,
        )

    # -- organisations ----------------------------------------------------------------------
    def _set_org(self, org: str, cert_auth: bool) -> OrgRecord:
        with self._lock:
            self._orgs[org] = bool(cert_auth)
            self._bump()
        return OrgRecord(org, bool(cert_auth))

    def list_orgs(self) -> list[OrgRecord]:
        with self._lock:
            return [OrgRecord(org, on) for org, on in sorted(self._orgs.items())]

    # -- users ------------------------------------------------------------------------------
    def _add_user(self, record: UserRecord) -> UserRecord:
        user_id, org = record.user_id, record.org
        with self._lock:
            previous = self._users.get(user_id)
            self._users[user_id] = record
            self._orgs.setdefault(org, True)
            if previous is not None and previous.org != org:
                for fp, cert in list(self._certs.items()):
                    if cert.user_id == user_id:
                        self._certs[fp] = replace(cert, org=org)
            self._bump()
        return record

    def get_user(self, user_id: str) -> UserRecord:
        user = self._users.get(user_id)
        if user is None:
            raise unknown_user(user_id)
        return user

    def list_users(self, *, org: str | None = None) -> list[UserRecord]:
        with self._lock:
            users = list(self._users.values())
        return sorted((u for u in users if org is None or u.org == org), key=lambda u: u.user_id)

    def set_user_active(self, user_id: str, active: bool) -> UserRecord:
        with self._lock:
            record = replace(self.get_user(user_id), active=bool(active))
            self._users[user_id] = record
            self._bump()
        return record

    def _set_user_permissions(self, user_id: str, names: frozenset[str]) -> UserRecord:
        with self._lock:
            record = replace(self.get_user(user_id), permissions=names)
            self._users[user_id] = record
            self._bump()
        return record

    # -- certificates -----------------------------------------------------------------------
    def _upload_certificate(
        self, upload: Upload, leaf: x509.Certificate, uploaded_by: str | None
    ) -> CertificateRecord:
        with self._lock:
            user = self.get_user(upload.user_id)
            record = upload_record(upload, leaf, user.org, uploaded_by)
            if record.fingerprint in self._certs:
                raise duplicate(record.fingerprint)
            self._certs[record.fingerprint] = record
            self._bump()
        return record

    def _upload_certificates(self, batch: UploadBatch) -> list[CertificateRecord]:
        uploads, parsed, uploaded_by = batch
        with self._lock:
            refusals: list[tuple[int, MTLSError]] = []
            candidates = batch_candidates(uploads, parsed, self._users, _org, uploaded_by, refusals)
            records = [record for _, record, _ in first_of_each(candidates, self._certs, refusals)]
            if refusals:
                raise BatchRefused(refusals, total=len(uploads))
            for record in records:
                self._certs[record.fingerprint] = record
            if records:
                self._bump()
        return records

    def list_certificates(
        self, *, user_id: str | None = None, org: str | None = None
    ) -> list[CertificateRecord]:
        with self._lock:
            records = list(self._certs.values())
        return [
            r
            for r in records
            if (user_id is None or r.user_id == user_id) and (org is None or r.org == org)
        ]

    def _find_fingerprints(self, prefix: str, limit: int) -> list[str]:
        with self._lock:
            found = sorted(fp for fp in self._certs if fp.startswith(prefix))
        return found[:limit]

    def get_certificate(self, fingerprint: str) -> CertificateRecord:
        record = self._certs.get(fingerprint.lower())
        if record is None:
            raise not_found(f"certificate {fingerprint}")
        return record

    def download_certificate(self, fingerprint: str) -> bytes:
        return self.get_certificate(fingerprint).pem

    def _rename_certificate(self, fingerprint: str, label: str) -> CertificateRecord:
        with self._lock:
            renamed = replace(self.get_certificate(fingerprint), label=label)
            self._certs[renamed.fingerprint] = renamed
        return renamed

    def delete_certificate(self, fingerprint: str) -> None:
        with self._lock:
            if self._certs.pop(fingerprint.lower(), None) is None:
                raise not_found(f"certificate {fingerprint}")
            self._bump()

    # -- history ----------------------------------------------------------------------------
    def record(self, record: LoginRecord) -> None:  # replaced per instance in __init__
        self._history.record(record)

    def _login_history(self, query: HistoryFilter) -> list[LoginRecord]:
        return self._history.query(
            user_id=query.user_id, failed_only=query.failed_only, outcome=query.outcome,
            since=query.since, until=query.until, limit=query.limit,
        )

    def _prune_history(self, cutoff: float) -> int:
        return self._history.prune(before=cutoff)

    # -- audit ----------------------------------------------------------------------------
    def _record_audit(self, checked: AuditEntry) -> AuditEntry:
        with self._lock:
            stored = replace(checked, id=len(self._audit) + 1)
            self._audit.append(stored)
        return stored

    def _audit_log(self, query: AuditFilter) -> list[AuditEntry]:
        keep = audit_matches(query)
        with self._lock:
            entries = list(self._audit)
        found: list[AuditEntry] = []
        for entry in reversed(entries):
            if query.limit is not None and len(found) >= query.limit:
                break
            if keep(entry):
                found.append(entry)
        return found

    def flush(self, timeout: float | None = None) -> bool:
        """Nothing is buffered in memory: always True."""
        return True

    def close(self) -> None:
        """Nothing to release; the store stays usable."""


def _org(user: UserRecord) -> str:
    return user.org

"""An in-process store: tests, demos, and apps whose users live in code."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ..errors import ManagementError, Reason
from ..history import LoginRecord, MemoryHistory
from .base import (
    CertificateRecord,
    Principal,
    UserRecord,
    check_upload,
    not_found,
    record_from_upload,
)

__all__ = ["MemoryStore"]


class MemoryStore:
    """A thread-safe store held in memory; ``open_store("memory://")``.

    Certificates are unique across the store: one certificate belongs to exactly one user.
    """

    def __init__(self, *, history_size: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, UserRecord] = {}
        self._orgs: dict[str, bool] = {}
        self._certs: dict[str, CertificateRecord] = {}
        self._history = MemoryHistory(history_size)
        self._generation = 0
        # Bound directly: recording runs on every request.
        self.record = self._history.record  # type: ignore[method-assign]

    @property
    def generation(self) -> int:
        return self._generation

    def _bump(self) -> None:
        self._generation += 1

    # -- the pipeline -----------------------------------------------------------------------
    def resolve_certificate(self, fingerprint: str) -> Principal | None:
        cert = self._certs.get(fingerprint)
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

    # -- management -------------------------------------------------------------------------
    def add_user(
        self,
        user_id: str,
        *,
        org: str = "default",
        active: bool = True,
        permissions: Sequence[str] = (),
    ) -> UserRecord:
        if not user_id:
            raise ManagementError(Reason.UNKNOWN_USER, "a user id must not be empty")
        record = UserRecord(user_id, org, active, frozenset(permissions))
        with self._lock:
            self._users[user_id] = record
            self._orgs.setdefault(org, True)
            self._bump()
        return record

    def set_user_active(self, user_id: str, active: bool) -> UserRecord:
        with self._lock:
            user = self._users.get(user_id)
            if user is None:
                raise ManagementError(Reason.UNKNOWN_USER, f"no user {user_id!r}")
            record = UserRecord(user.user_id, user.org, active, user.permissions)
            self._users[user_id] = record
            self._bump()
        return record

    def set_org(self, org: str, *, cert_auth: bool) -> None:
        with self._lock:
            self._orgs[org] = cert_auth
            self._bump()

    def upload_certificate(
        self,
        pem: bytes,
        *,
        user_id: str,
        label: str | None = None,
        uploaded_by: str | None = None,
    ) -> CertificateRecord:
        leaf, _chain = check_upload(pem)
        user = self._users.get(user_id)
        if user is None:
            raise ManagementError(Reason.UNKNOWN_USER, f"no user {user_id!r}")
        record = record_from_upload(
            pem, leaf, user_id=user_id, org=user.org, label=label, uploaded_by=uploaded_by
        )
        with self._lock:
            if record.fingerprint in self._certs:
                raise ManagementError(
                    Reason.DUPLICATE_CERTIFICATE,
                    f"certificate {record.fingerprint} is already registered",
                )
            self._certs[record.fingerprint] = record
            self._bump()
        return record

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

    def get_certificate(self, fingerprint: str) -> CertificateRecord:
        record = self._certs.get(fingerprint.lower())
        if record is None:
            raise not_found(f"certificate {fingerprint}")
        return record

    def download_certificate(self, fingerprint: str) -> bytes:
        return self.get_certificate(fingerprint).pem

    def rename_certificate(self, fingerprint: str, label: str) -> CertificateRecord:
        from dataclasses import replace

        with self._lock:
            record = self.get_certificate(fingerprint)
            renamed = replace(record, label=label)
            self._certs[record.fingerprint] = renamed
        return renamed

    def delete_certificate(self, fingerprint: str) -> None:
        with self._lock:
            if self._certs.pop(fingerprint.lower(), None) is None:
                raise not_found(f"certificate {fingerprint}")
            self._bump()

    # -- history ----------------------------------------------------------------------------
    def record(self, record: LoginRecord) -> None:  # replaced per instance in __init__
        self._history.record(record)

    def login_history(
        self, *, user_id: str | None = None, failed_only: bool = False, limit: int = 100
    ) -> list[LoginRecord]:
        return self._history.query(user_id=user_id, failed_only=failed_only, limit=limit)

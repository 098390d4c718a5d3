"""An in-process store: tests, demos, and apps whose users live in code."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable, Sequence
from dataclasses import replace

from ..errors import MTLSError
from ..history import LoginRecord, MemoryHistory, history_cutoff, timestamp
from .base import (
    AuditEntry,
    BatchRefused,
    CertificateRecord,
    OrgRecord,
    Principal,
    Upload,
    UserRecord,
    check_audit_entry,
    check_label,
    check_org,
    check_permissions,
    check_upload,
    check_uploads,
    check_user_id,
    duplicate,
    not_found,
    record_from_upload,
    unknown_user,
)

__all__ = ["MemoryStore"]


class MemoryStore:
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
    def set_org(self, org: str, *, cert_auth: bool) -> OrgRecord:
        check_org(org)
        with self._lock:
            self._orgs[org] = bool(cert_auth)
            self._bump()
        return OrgRecord(org, bool(cert_auth))

    def list_orgs(self) -> list[OrgRecord]:
        with self._lock:
            return [OrgRecord(org, on) for org, on in sorted(self._orgs.items())]

    # -- users ------------------------------------------------------------------------------
    def add_user(
        self,
        user_id: str,
        *,
        org: str = "default",
        active: bool = True,
        permissions: Iterable[str] = (),
    ) -> UserRecord:
        check_user_id(user_id)
        check_org(org)
        record = UserRecord(user_id, org, bool(active), check_permissions(permissions))
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

    def set_user_permissions(self, user_id: str, permissions: Iterable[str]) -> UserRecord:
        names = check_permissions(permissions)
        with self._lock:
            record = replace(self.get_user(user_id), permissions=names)
            self._users[user_id] = record
            self._bump()
        return record

    # -- certificates -----------------------------------------------------------------------
    def upload_certificate(
        self,
        pem: bytes,
        *,
        user_id: str,
        label: str | None = None,
        uploaded_by: str | None = None,
    ) -> CertificateRecord:
        leaf, _chain = check_upload(pem)
        check_label(label)
        with self._lock:
            user = self.get_user(user_id)
            record = record_from_upload(
                pem, leaf, user_id=user_id, org=user.org, label=label, uploaded_by=uploaded_by
            )
            if record.fingerprint in self._certs:
                raise duplicate(record.fingerprint)
            self._certs[record.fingerprint] = record
            self._bump()
        return record

    def upload_certificates(
        self, uploads: Sequence[Upload], *, uploaded_by: str | None = None
    ) -> list[CertificateRecord]:
        parsed = check_uploads(uploads)
        with self._lock:
            records: list[CertificateRecord] = []
            refusals: list[tuple[int, MTLSError]] = []
            seen: set[str] = set()
            for index, (upload, leaf) in enumerate(zip(uploads, parsed, strict=True)):
                if isinstance(leaf, MTLSError):
                    refusals.append((index, leaf))
                    continue
                user = self._users.get(upload.user_id)
                if user is None:
                    refusals.append((index, unknown_user(upload.user_id)))
                    continue
                record = record_from_upload(
                    upload.pem, leaf, user_id=user.user_id, org=user.org, label=upload.label,
                    uploaded_by=uploaded_by,
                )
                if record.fingerprint in self._certs or record.fingerprint in seen:
                    refusals.append((index, duplicate(record.fingerprint)))
                    continue
                seen.add(record.fingerprint)
                records.append(record)
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

    def find_fingerprints(self, prefix: str, *, limit: int = 2) -> list[str]:
        prefix = prefix.lower()
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            return []
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

    def rename_certificate(self, fingerprint: str, label: str) -> CertificateRecord:
        check_label(label)
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

    def login_history(
        self,
        *,
        user_id: str | None = None,
        failed_only: bool = False,
        outcome: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int | None = 100,
    ) -> list[LoginRecord]:
        return self._history.query(
            user_id=user_id, failed_only=failed_only, outcome=outcome, since=since, until=until,
            limit=limit,
        )

    def prune_history(self, *, older_than: dt.timedelta) -> int:
        return self._history.prune(before=history_cutoff(older_than))

    # -- audit ----------------------------------------------------------------------------
    def record_audit(self, entry: AuditEntry) -> AuditEntry:
        checked = check_audit_entry(entry)
        with self._lock:
            stored = replace(checked, id=len(self._audit) + 1)
            self._audit.append(stored)
        return stored

    def audit_log(
        self,
        *,
        actor: str | None = None,
        target: str | None = None,
        action: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        before_id: int | None = None,
        limit: int | None = 100,
    ) -> list[AuditEntry]:
        low = None if since is None else timestamp(since)
        high = None if until is None else timestamp(until)
        with self._lock:
            entries = list(self._audit)
        found: list[AuditEntry] = []
        for entry in reversed(entries):
            if limit is not None and len(found) >= limit:
                break
            if (
                (before_id is None or entry.id < before_id)
                and (actor is None or entry.actor == actor)
                and (target is None or entry.target == target)
                and (action is None or entry.action == action)
                and (low is None or entry.time.timestamp() >= low)
                and (high is None or entry.time.timestamp() < high)
            ):
                found.append(entry)
        return found

    def flush(self, timeout: float | None = None) -> bool:
        """Nothing is buffered in memory: always True."""
        return True

    def close(self) -> None:
        """Nothing to release; the store stays usable."""

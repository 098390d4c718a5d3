"""The JSON shapes of store records, one for the REST API's bodies and ``mtls-admin --json``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..history import LoginRecord
from ..stores.base import CertificateRecord, OrgRecord, UserRecord

__all__ = ["cert_json", "cert_state", "iso", "login_json", "org_json", "user_json"]


def iso(moment: dt.datetime | None, *, fraction: bool = False) -> str | None:
    """``moment`` in UTC, ``2026-01-01T00:00:00Z`` (with microseconds when ``fraction``); a naive
    datetime is taken to be UTC already."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    moment = moment.astimezone(dt.timezone.utc)
    if fraction:
        return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def cert_state(cert: CertificateRecord) -> dict[str, Any]:
    """A certificate record without what changes with time (what the audit log keeps)."""
    return {
        "fingerprint": cert.fingerprint,
        "user_id": cert.user_id,
        "org": cert.org,
        "label": cert.label,
        "subject": cert.subject,
        "issuer": cert.issuer,
        "serial": cert.serial,
        "not_before": iso(cert.not_before),
        "not_after": iso(cert.not_after),
        "uploaded_at": iso(cert.uploaded_at),
        "uploaded_by": cert.uploaded_by,
    }


def cert_json(cert: CertificateRecord) -> dict[str, Any]:
    return {**cert_state(cert), "days_left": cert.days_left()}


def user_json(user: UserRecord) -> dict[str, Any]:
    return {
        "user_id": user.user_id,
        "org": user.org,
        "active": user.active,
        "permissions": sorted(user.permissions),
    }


def org_json(org: OrgRecord) -> dict[str, Any]:
    return {"org": org.org, "cert_auth": org.cert_auth}


def login_json(record: LoginRecord, *, fraction: bool = False) -> dict[str, Any]:
    """A login-history record; ``fraction`` gives its time to the microsecond."""
    return {
        "time": iso(record.when, fraction=fraction),
        "outcome": record.outcome,
        "user_id": record.user_id,
        "org": record.org,
        "fingerprint": record.fingerprint,
        "subject": record.subject,
        "issuer": record.issuer,
        "serial": record.serial,
        "source": record.source,
        "peer": record.peer,
        "revocation": record.revocation,
        "detail": record.detail,
    }

"""The audit log: who changed what, from where. Never a key, never content."""

from __future__ import annotations

from storage.models import AuditLog, utcnow


def record(action: str, detail: str = "", client_addr: str = "") -> AuditLog:
    """Append one entry, e.g. record("key.revoked", "key_id=key_0123456789ab", "203.0.113.7")."""
    return AuditLog.create(ts=utcnow(), action=action, detail=detail, client_addr=client_addr)


def recent(limit: int = 200) -> list[AuditLog]:
    """The newest entries first."""
    return list(AuditLog.select().order_by(AuditLog.id.desc()).limit(limit))

"""Write the operator's actions to the audit log with the client's address. Never a key."""

from __future__ import annotations

from flask import request

from storage import audit


def client_addr() -> str:
    # The gateway's X-Forwarded-For (the real client) when it vouched for it, else the socket's
    # peer (see admin/forwarded.py).
    return request.remote_addr or ""


def record(action: str, detail: str = "") -> None:
    audit.record(action, detail, client_addr())

"""The audit log tab: the newest admin actions first."""

from __future__ import annotations

from flask import Blueprint, render_template

from storage import audit

bp = Blueprint("audit", __name__, url_prefix="/admin")

SHOWN = 500


@bp.get("/audit")
def index():
    return render_template("audit.html", entries=audit.recent(SHOWN), shown=SHOWN)

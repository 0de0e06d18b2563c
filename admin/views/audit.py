"""The audit log tab: the newest admin actions first."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask_login import login_required

from storage import audit

bp = Blueprint("audit", __name__, url_prefix="/admin")

SHOWN = 500


@bp.before_request
@login_required
def _require_login():
    return None


@bp.get("/audit")
def index():
    return render_template("audit.html", entries=audit.recent(SHOWN), shown=SHOWN)

"""The API keys tab: create (shown once), list, edit, revoke, enable, rotate, delete."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from admin import events, forms, state
from storage import keys, usage
from storage.models import ApiKey, utcnow

bp = Blueprint("keys", __name__, url_prefix="/admin")


def _get(key_id: str) -> ApiKey:
    try:
        return keys.get_key(key_id)
    except keys.KeyNotFound:
        abort(404, description="There is no API key with this id; it may have been deleted.")


def _list_page(form=None, status=200):
    now = utcnow()
    month = usage.month_by_key(now)
    rows = [
        {"key": key, "status": keys.key_status(key, now), "month": month.get(key.key_id, (0, 0.0))}
        for key in reversed(keys.list_keys())
    ]
    return render_template("keys/list.html", rows=rows, form=form or {}, limits=state.limits()), status


def _edit_page(key: ApiKey, form=None):
    return render_template("keys/edit.html", key=key, status=keys.key_status(key), form=form,
                           limits=state.limits())


def _show_once(key: ApiKey, plaintext: str, rotated: bool):
    # Rendered straight from the POST, never stored or redirected: the key exists only in this response.
    return render_template("keys/created.html", key=key, plaintext=plaintext, rotated=rotated,
                           limits=state.limits())


@bp.get("/keys")
def index():
    return _list_page()


@bp.post("/keys")
def create():
    try:
        name = forms.key_name(request.form.get("name"))
        expires_at = forms.expiry(request.form.get("expires"), utcnow())
        rate_limit = forms.rate_limit(request.form.get("rate_limit"))
    except ValueError as exc:
        flash(str(exc), "error")
        return _list_page(request.form, 400)
    key, plaintext = keys.create_key(
        name, expires_at=expires_at, rate_limit=rate_limit, source="admin", by=events.client_addr()
    )
    return _show_once(key, plaintext, rotated=False)


@bp.route("/keys/<key_id>", methods=["GET", "POST"])
def edit(key_id: str):
    key = _get(key_id)
    if request.method == "GET":
        return _edit_page(key)
    changes = {}
    try:
        name = forms.key_name(request.form.get("name"))
        if name != key.name:
            changes["name"] = name
        rate_limit = forms.rate_limit(request.form.get("rate_limit"))
        if rate_limit != key.rate_limit:
            changes["rate_limit"] = rate_limit
        current = key.expires_at.date().isoformat() if key.expires_at else ""
        # Only a changed date is applied, so an expiry set to the second by the CLI stays as it was.
        if (request.form.get("expires") or "").strip() != current:
            changes["expires_at"] = forms.expiry(request.form.get("expires"), utcnow())
    except ValueError as exc:
        flash(str(exc), "error")
        return _edit_page(key, request.form), 400
    if not changes:
        flash("Nothing changed.", "info")
        return redirect(url_for("keys.edit", key_id=key_id))
    keys.update(key_id, by=events.client_addr(), **changes)
    described = ", ".join(f"{name}={keys.describe(value)}" for name, value in changes.items())
    flash(f"Saved {key.name}: {described}.", "success")
    return redirect(url_for("keys.index"))


@bp.post("/keys/<key_id>/revoke")
def revoke(key_id: str):
    key = _get(key_id)
    keys.revoke(key_id, by=events.client_addr())
    flash(f"Revoked {key.name}: it stops working within a second.", "success")
    return redirect(url_for("keys.index"))


@bp.post("/keys/<key_id>/enable")
def enable(key_id: str):
    key = _get(key_id)
    keys.enable(key_id, by=events.client_addr())
    flash(f"Enabled {key.name} again.", "success")
    return redirect(url_for("keys.index"))


@bp.route("/keys/<key_id>/rotate", methods=["GET", "POST"])
def rotate(key_id: str):
    key = _get(key_id)
    if request.method == "GET":
        return render_template("keys/confirm.html", key=key, action="rotate")
    plaintext = keys.rotate(key_id, by=events.client_addr())
    return _show_once(_get(key_id), plaintext, rotated=True)


@bp.route("/keys/<key_id>/delete", methods=["GET", "POST"])
def delete(key_id: str):
    key = _get(key_id)
    if request.method == "GET":
        return render_template("keys/confirm.html", key=key, action="delete")
    keys.delete(key_id, by=events.client_addr())
    flash(f"Deleted {key.name}. Its usage history is kept.", "success")
    return redirect(url_for("keys.index"))

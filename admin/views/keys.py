"""The API keys tab: create (shown once), list, the key's page (limits, history, edit), revoke,
enable, rotate, delete."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from markupsafe import Markup

from admin import charts, events, formatting, forms, periods, state, upstream_models
from storage import key_history, keys, spend, usage
from storage.models import ApiKey, utcnow

bp = Blueprint("keys", __name__, url_prefix="/admin")

# The settings the create and edit forms set, in the order a saved message names them.
FORM_FIELDS = ("name", "expires_at", "rate_limit", "budget_eur", "budget_period", "models", "tpm")


def _get(key_id: str) -> ApiKey:
    try:
        return keys.get_key(key_id)
    except keys.KeyNotFound:
        abort(404, description="There is no API key with this id; it may have been deleted.")


@dataclass(frozen=True)
class Budget:
    """What a key spent in its budget period (the month when it has none), against its budget."""

    period: spend.Period
    spent: float
    budget_eur: float | None

    @property
    def share(self) -> float | None:
        return None if self.budget_eur is None else self.spent / self.budget_eur

    @property
    def label(self) -> str:
        if self.budget_eur is None:
            return f"{formatting.eur(self.spent)} spent this {self.period.name}, no budget"
        return (f"{formatting.eur(self.spent)} of {formatting.eur(self.budget_eur)} spent this "
                f"{self.period.name} ({self.share:.0%})")

    @property
    def bar(self) -> Markup | None:
        return None if self.budget_eur is None else charts.spend_bar(self.spent, self.budget_eur, self.label)


def budgets(key_list: list[ApiKey], now: datetime) -> dict[str, Budget]:
    """Each key's spend this period against its budget."""
    spent = key_history.spend_this_period(key_list, now)
    return {key.key_id: Budget(*spent[key.key_id], key.budget_eur) for key in key_list}


def _model_list() -> upstream_models.ModelList:
    """The upstream's models, for the model picker; the forms work without them."""
    cache = current_app.extensions.get("upstream_models")
    if cache is None:
        cache = current_app.extensions["upstream_models"] = upstream_models.Cache()
    s = state.gateway_settings()
    return cache.get(s.upstream_url, current_app.config["ADMIN_PROBE_TIMEOUT"], s.upstream_ca_file)


def _picker(chosen: list[str], typed: str = "") -> dict:
    """What the model picker shows: the upstream's models and the chosen ones it does not list."""
    listed = _model_list()
    return {
        "offered": [*listed.names, *(name for name in chosen if name not in listed.names)],
        "listed": listed.names,
        "error": listed.error,
        "chosen": chosen,
        "typed": typed,
    }


def _submitted_picker() -> dict:
    return _picker(request.form.getlist("models"), request.form.get("models_other", ""))


def _list_page(form=None, status=200, picker=None):
    now = utcnow()
    month = usage.month_by_key(now)
    key_list = list(reversed(keys.list_keys()))
    spent = budgets(key_list, now)
    rows = [
        {"key": key, "status": keys.key_status(key, now), "month": month.get(key.key_id, (0, 0.0)),
         "budget": spent[key.key_id], "models": keys.allowed_models(key)}
        for key in key_list
    ]
    return render_template("keys/list.html", rows=rows, form=form or {}, limits=state.limits(),
                           picker=picker or _picker([]), periods=spend.PERIODS), status


def _history(key: ApiKey) -> dict:
    """The key's usage in the period the page asks for (a preset or a custom range)."""
    today = utcnow().date()
    try:
        period = periods.resolve(request.args, today)
    except ValueError as exc:
        flash(str(exc), "error")
        period = periods.preset(periods.DEFAULT, today)
    refused = key_history.refused(period.start, period.end, key.key_id)
    by_day = key_history.summary(period.start, period.end, key.key_id, by="day")
    by_model = key_history.summary(period.start, period.end, key.key_id, by="model")
    key_history.add_refused(by_day, key_history.refused_by(refused, "day"), "day")
    key_history.add_refused(by_model, key_history.refused_by(refused, "model"), "model")
    totals = key_history.totals(period.start, period.end, key.key_id)
    totals["refused"] = sum(refused.values())
    totals["upstream_errors"] = totals["errors"] - totals["refused"]
    days = [period.start + timedelta(days=i) for i in range(period.days)]

    def per_day(field: str) -> list[tuple]:
        found = {row["day"]: row[field] for row in by_day}
        return [(day, found.get(day, 0)) for day in days]

    return {
        "period": period, "presets": periods.PRESETS, "totals": totals, "by_day": list(reversed(by_day)),
        "by_model": by_model,
        "spend_chart": charts.bar_chart(
            per_day("cost_eur"), f"Spend per day of {key.name}, {period.label}", formatting.eur, "spend"),
        "token_chart": charts.bar_chart(
            per_day("total_tokens"), f"Tokens per day of {key.name}, {period.label}", formatting.count,
            "tokens"),
    }


def _key_page(key: ApiKey, form=None, picker=None, status=200):
    now = utcnow()
    return render_template(
        "keys/edit.html", key=key, status=keys.key_status(key, now), form=form, limits=state.limits(),
        picker=picker or _picker(list(keys.allowed_models(key))), periods=spend.PERIODS,
        budget=budgets([key], now)[key.key_id], models=keys.allowed_models(key),
        global_spend=spend.load_global(), history=_history(key),
    ), status


def _show_once(key: ApiKey, plaintext: str, rotated: bool):
    # Rendered straight from the POST, never stored or redirected: the key exists only in this response.
    return render_template("keys/created.html", key=key, plaintext=plaintext, rotated=rotated,
                           limits=state.limits(), models=keys.allowed_models(key))


def _spend_settings() -> dict:
    """Budget, its period, models and tokens per minute from the form; a period only with a budget."""
    budget = forms.budget(request.form.get("budget"))
    return {
        "budget_eur": budget,
        "budget_period": None if budget is None else forms.budget_period(request.form.get("budget_period")),
        "models": forms.models(request.form.getlist("models"), request.form.get("models_other")),
        "tpm": forms.tpm(request.form.get("tpm")),
    }


@bp.get("/keys")
def index():
    return _list_page()


@bp.post("/keys")
def create():
    try:
        name = forms.key_name(request.form.get("name"))
        expires_at = forms.expiry(request.form.get("expires"), utcnow())
        rate_limit = forms.rate_limit(request.form.get("rate_limit"))
        settings = _spend_settings()
    except ValueError as exc:
        flash(str(exc), "error")
        return _list_page(request.form, 400, _submitted_picker())
    key, plaintext = keys.create_key(
        name, expires_at=expires_at, rate_limit=rate_limit, source="admin", by=events.client_addr(),
        **settings,
    )
    return _show_once(key, plaintext, rotated=False)


def saved_message(key: ApiKey, fields: list[str]) -> str:
    """The changed settings as the operator reads them."""
    words = {
        "name": lambda: f"name {key.name}",
        "expires_at": lambda: f"valid until {formatting.when(key.expires_at)}" if key.expires_at
        else "no expiry",
        "rate_limit": lambda: f"rate limit {key.rate_limit or 'default'}",
        "budget_eur": lambda: (f"budget {formatting.eur(key.budget_eur)} per {key.budget_period}"
                               if key.budget_eur is not None else "no budget"),
        "models": lambda: "models " + (", ".join(keys.allowed_models(key)) or "all"),
        "tpm": lambda: f"tokens per minute {formatting.count(key.tpm) if key.tpm else 'no limit'}",
    }
    if "budget_period" in fields and "budget_eur" not in fields:
        fields = [*fields, "budget_eur"]
    return ", ".join(words[field]() for field in FORM_FIELDS if field in fields and field in words)


@bp.route("/keys/<key_id>", methods=["GET", "POST"])
def edit(key_id: str):
    key = _get(key_id)
    if request.method == "GET":
        return _key_page(key)
    try:
        wanted = {
            "name": forms.key_name(request.form.get("name")),
            "rate_limit": forms.rate_limit(request.form.get("rate_limit")),
            **_spend_settings(),
        }
        current = key.expires_at.date().isoformat() if key.expires_at else ""
        # Only a changed date is applied, so an expiry set to the second by the CLI stays as it was.
        if (request.form.get("expires") or "").strip() != current:
            wanted["expires_at"] = forms.expiry(request.form.get("expires"), utcnow())
        # storage decides what differs, writes only that and audits it.
        updated = keys.update(key_id, by=events.client_addr(), **wanted)
    except ValueError as exc:
        flash(str(exc), "error")
        return _key_page(key, request.form, _submitted_picker(), 400)
    changed = [field for field in FORM_FIELDS if getattr(updated, field) != getattr(key, field)]
    if not changed:
        flash("Nothing changed.", "info")
    else:
        flash(f"Saved {updated.name}: {saved_message(updated, changed)}. "
              "The gateway applies it within a second.", "success")
    return redirect(url_for("keys.edit", key_id=key_id))


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

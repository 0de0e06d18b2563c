"""The settings tab: service status, rate limits, the whole gateway's budget and token limit, and
the price table."""

from __future__ import annotations

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for

from admin import charts, events, formatting, forms, state, status
from storage import prices, spend
from storage import settings as limits_store
from storage.models import utcnow
from storage.settings import LIMIT_NAMES

bp = Blueprint("settings", __name__, url_prefix="/admin")

LIMIT_GROUPS = (
    ("Per key", "key_rate_limit_requests", "key_rate_limit_window",
     "Default for every key; a key's own rate limit replaces the number of requests."),
    ("Per client address", "ip_rate_limit_requests", "ip_rate_limit_window",
     "Counts every request from one address, with or without a valid key."),
    ("Whole gateway", "global_rate_limit_requests", "global_rate_limit_window",
     "Keep it below Privatemode's own limit for your organisation."),
)
# For messages: "Per client address, window (seconds)".
LIMIT_LABELS = {
    name: f"{group}, {what}"
    for group, requests, window, _ in LIMIT_GROUPS
    for name, what in ((requests, "requests"), (window, "window (seconds)"))
}
assert set(LIMIT_LABELS) == set(LIMIT_NAMES)


def _sev_snp() -> status.Check:
    # The machine does not change while we run: look once.
    cache = current_app.extensions.setdefault("admin_status", {})
    if "sev_snp" not in cache:
        cache["sev_snp"] = status.sev_snp_guest()
    return cache["sev_snp"]


@bp.get("/settings")
def index():
    s = state.gateway_settings()
    checks = {
        "upstream": status.upstream(s.upstream_url, current_app.config["ADMIN_PROBE_TIMEOUT"]),
        "attestation": status.attestation(s.privatemode_log_file),
        "sev_snp": _sev_snp(),
    }
    rows = sorted(prices.all_prices().values(), key=lambda p: (p.model == prices.DEFAULT_MODEL, p.model))
    return render_template(
        "settings.html",
        checks=checks,
        limits=state.limits(),
        env_limits=state.env_limits(),
        groups=LIMIT_GROUPS,
        prices=rows,
        price_labels=forms.PRICE_LABELS,
        default_model=prices.DEFAULT_MODEL,
        **_global_spend(),
    )


@bp.post("/settings/limits")
def save_limits():
    current = state.limits()
    wanted = {}
    try:
        for name in LIMIT_NAMES:
            wanted[name] = forms.limit_value(LIMIT_LABELS[name], request.form.get(name))
    except ValueError as exc:
        flash(str(exc), "error")
        return redirect(url_for("settings.index") + "#limits")
    changed = [name for name in LIMIT_NAMES if wanted[name] != getattr(current, name)]
    for name in changed:
        limits_store.set_limit(name, wanted[name])
        events.record("limit.changed", f"{name}: {getattr(current, name)} -> {wanted[name]}")
    if changed:
        flash(f"Saved {len(changed)} limit(s); the gateway applies them within a second.", "success")
    else:
        flash("Nothing changed.", "info")
    return redirect(url_for("settings.index") + "#limits")


def _global_spend() -> dict:
    """The whole gateway's budget and token limit, and what all keys spent in its period."""
    settings = spend.load_global()
    period = spend.period_at(settings.budget_period, utcnow())
    spent = spend.total_spend(period)
    bar = None
    if settings.budget_eur is not None:
        label = (f"{formatting.eur(spent)} of {formatting.eur(settings.budget_eur)} spent this "
                 f"{period.name} ({spent / settings.budget_eur:.0%})")
        bar = charts.spend_bar(spent, settings.budget_eur, label)
    return {"global_spend": settings, "global_period": period, "global_spent": spent, "global_bar": bar,
            "periods": spend.PERIODS}


# The audit log names them as storage stores them (storage/spend.py).
GLOBAL_NAMES = {
    "budget_eur": "global_budget_eur", "budget_period": "global_budget_period", "tpm": "global_tpm",
}


def _shown(value) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


@bp.post("/settings/spend")
def save_spend():
    current = spend.load_global()
    try:
        budget = forms.budget(request.form.get("global_budget"), "Whole gateway, budget")
        # A period alone means nothing: without a budget the stored one stays.
        period = current.budget_period
        if budget is not None:
            period = forms.budget_period(request.form.get("global_budget_period"),
                                         "Whole gateway, budget period")
        tpm = forms.tpm(request.form.get("global_tpm"), "Whole gateway, tokens per minute")
    except ValueError as exc:
        flash(str(exc), "error")
        return redirect(url_for("settings.index") + "#spend")
    wanted = spend.GlobalSpend(budget_eur=budget, budget_period=period, tpm=tpm)
    changed = [field for field in GLOBAL_NAMES if getattr(wanted, field) != getattr(current, field)]
    if not changed:
        flash("Nothing changed.", "info")
        return redirect(url_for("settings.index") + "#spend")
    spend.save_global(wanted)
    for field in changed:
        events.record("limit.changed", f"{GLOBAL_NAMES[field]}: {_shown(getattr(current, field))} -> "
                                       f"{_shown(getattr(wanted, field))}")
    flash("Saved the whole gateway's budget and token limit; the gateway applies them within a second.",
          "success")
    return redirect(url_for("settings.index") + "#spend")


@bp.post("/settings/limits/reset")
def reset_limits():
    reset = [name for name in LIMIT_NAMES if limits_store.reset_limit(name)]
    for name in reset:
        events.record("limit.reset", f"{name}: back to the environment's {getattr(state.env_limits(), name)}")
    flash("All limits are back to the environment's values." if reset else "Nothing to reset.",
          "success" if reset else "info")
    return redirect(url_for("settings.index") + "#limits")


@bp.post("/settings/prices")
def save_price():
    try:
        model = forms.model_name(request.form.get("model"))
        if request.form.get("action") == "delete":
            if model == prices.DEFAULT_MODEL:
                raise ValueError("The default price (*) cannot be deleted, only changed.")
            if prices.delete_price(model):
                events.record("price.deleted", f"model={model}")
                flash(f"Deleted the price of {model}; it now costs the default price.", "success")
            return redirect(url_for("settings.index") + "#prices")
        values = forms.price_fields(request.form)
    except ValueError as exc:
        flash(str(exc), "error")
        return redirect(url_for("settings.index") + "#prices")
    before = prices.all_prices().get(model)
    if before is not None and all(getattr(before, n) == v for n, v in values.items()):
        flash(f"Nothing changed for {model}.", "info")
        return redirect(url_for("settings.index") + "#prices")
    prices.set_price(model, **values)
    detail = " ".join(f"{name}={value:g}" for name, value in values.items())
    events.record("price.changed", f"model={model} {detail}" + ("" if before else " (new)"))
    flash(f"Saved the price of {model}; new requests are charged with it.", "success")
    return redirect(url_for("settings.index") + "#prices")

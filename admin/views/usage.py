"""The usage & costs tab and its CSV export, read from the daily rollup table, of every key or one."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

from flask import Blueprint, Response, flash, render_template, request

from admin import charts, formatting, periods
from storage import key_history, keys, usage
from storage.models import utcnow

bp = Blueprint("usage", __name__, url_prefix="/admin")

CSV_COLUMNS = (
    "day", "key_id", "key_name", "model", "requests", "errors", "prompt_tokens", "completion_tokens",
    "cached_tokens", "total_tokens", "audio_seconds", "request_bytes", "cost_eur",
    # Last, so that a sheet reading the columns by position keeps working: of `errors`, those the
    # gateway made itself (storage/key_history.py).
    "refused",
)
MAX_KEY_ID = 200


def _period(show_errors: bool) -> periods.Period:
    today = utcnow().date()
    try:
        return periods.resolve(request.args, today)
    except ValueError as exc:
        if show_errors:
            flash(str(exc), "error")
        return periods.preset(periods.DEFAULT, today)


def _key_filter(show_errors: bool) -> str | None:
    """The key the page shows alone (?key=KEY_ID), or None for every key. A deleted key's id
    works too: its usage stays."""
    key_id = (request.args.get("key") or "").strip()
    if not key_id:
        return None
    if len(key_id) > MAX_KEY_ID or not key_id.isprintable():
        if show_errors:
            flash("That is not a key id; showing every key.", "error")
        return None
    return key_id


def _per_day(rows: list[dict], period: periods.Period, field: str) -> list[tuple]:
    """One point per day of the period, zero where nothing was used."""
    by_day = {row["day"]: row[field] for row in rows}
    days = [period.start + timedelta(days=i) for i in range(period.days)]
    return [(day, by_day.get(day, 0)) for day in days]


@bp.get("/usage")
def index():
    period = _period(show_errors=True)
    key_id = _key_filter(show_errors=True)
    start, end = period.start, period.end
    if key_id is None:
        days = usage.summary(start, end, by="day")
        totals = usage.totals(start, end)
        by_key = usage.summary(start, end, by="key")
        by_model = usage.summary(start, end, by="model")
    else:
        days = key_history.summary(start, end, key_id, by="day")
        totals = key_history.totals(start, end, key_id)
        by_key = []
        by_model = key_history.summary(start, end, key_id, by="model")
    refused = key_history.refused(start, end, key_id)
    key_history.add_refused(by_key, key_history.refused_by(refused, "key"), "key_id")
    key_history.add_refused(by_model, key_history.refused_by(refused, "model"), "model")
    totals["refused"] = sum(refused.values())
    totals["upstream_errors"] = totals["errors"] - totals["refused"]
    spend_chart = charts.bar_chart(
        _per_day(days, period, "cost_eur"), f"Spend per day, {period.label}", formatting.eur, "spend")
    token_chart = charts.bar_chart(
        _per_day(days, period, "total_tokens"), f"Tokens per day, {period.label}", formatting.count, "tokens")
    all_keys = keys.list_keys()
    return render_template(
        "usage.html",
        period=period,
        presets=periods.PRESETS,
        key_id=key_id,
        key=next((key for key in all_keys if key.key_id == key_id), None),
        all_keys=sorted(all_keys, key=lambda key: (key.name.lower(), key.key_id)),
        totals=totals,
        by_key=by_key,
        by_model=by_model,
        spend_chart=spend_chart,
        token_chart=token_chart,
    )


def _cell(value) -> str:
    text = "" if value is None else str(value)
    # A spreadsheet runs a cell that starts with one of these as a formula: key names are free text.
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


@bp.get("/usage.csv")
def export_csv():
    period = _period(show_errors=False)
    key_id = _key_filter(show_errors=False)
    if key_id is None:
        rows = usage.daily_rows(period.start, period.end)
    else:
        rows = key_history.daily_rows(period.start, period.end, key_id)
    refused = key_history.refused(period.start, period.end, key_id)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([
            row["day"].isoformat(), row["key_id"], _cell(row.get("name")), _cell(row["model"]),
            row["requests"], row["errors"], row["prompt_tokens"], row["completion_tokens"],
            row["cached_tokens"], row["total_tokens"], f"{row['audio_seconds']:g}", row["request_bytes"],
            f"{row['cost_eur']:.6f}", refused.get((row["day"], row["key_id"], row["model"]), 0),
        ])
    # The key's id in the file's name only when it is one of ours: a file key's id is anyone's text.
    one = f"_{key_id}" if key_id and key_id.replace("_", "").isalnum() and key_id.isascii() else ""
    filename = f"usage{one}_{period.start.isoformat()}_{period.end.isoformat()}.csv"
    return Response(
        out.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )

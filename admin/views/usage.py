"""The usage & costs tab and its CSV export, read from the daily rollup table."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

from flask import Blueprint, Response, flash, render_template, request

from admin import charts, formatting, periods
from storage import usage
from storage.models import utcnow

bp = Blueprint("usage", __name__, url_prefix="/admin")

CSV_COLUMNS = (
    "day", "key_id", "key_name", "model", "requests", "errors", "prompt_tokens", "completion_tokens",
    "cached_tokens", "total_tokens", "audio_seconds", "request_bytes", "cost_eur",
)


def _period(show_errors: bool) -> periods.Period:
    today = utcnow().date()
    try:
        return periods.resolve(request.args, today)
    except ValueError as exc:
        if show_errors:
            flash(str(exc), "error")
        return periods.preset(periods.DEFAULT, today)


def _per_day(rows: list[dict], period: periods.Period, field: str) -> list[tuple]:
    """One point per day of the period, zero where nothing was used."""
    by_day = {row["day"]: row[field] for row in rows}
    days = [period.start + timedelta(days=i) for i in range(period.days)]
    return [(day, by_day.get(day, 0)) for day in days]


@bp.get("/usage")
def index():
    period = _period(show_errors=True)
    days = usage.summary(period.start, period.end, by="day")
    spend_chart = charts.bar_chart(
        _per_day(days, period, "cost_eur"), f"Spend per day, {period.label}", formatting.eur, "spend")
    token_chart = charts.bar_chart(
        _per_day(days, period, "total_tokens"), f"Tokens per day, {period.label}", formatting.count, "tokens")
    return render_template(
        "usage.html",
        period=period,
        presets=periods.PRESETS,
        totals=usage.totals(period.start, period.end),
        by_key=usage.summary(period.start, period.end, by="key"),
        by_model=usage.summary(period.start, period.end, by="model"),
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
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in usage.daily_rows(period.start, period.end):
        writer.writerow([
            row["day"].isoformat(), row["key_id"], _cell(row.get("name")), _cell(row["model"]),
            row["requests"], row["errors"], row["prompt_tokens"], row["completion_tokens"],
            row["cached_tokens"], row["total_tokens"], f"{row['audio_seconds']:g}", row["request_bytes"],
            f"{row['cost_eur']:.6f}",
        ])
    filename = f"usage_{period.start.isoformat()}_{period.end.isoformat()}.csv"
    return Response(
        out.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )

"""Jinja filters: euros, counts and UTC times as the pages show them."""

from __future__ import annotations

from datetime import UTC, date, datetime

from flask import Flask

DASH = "—"


def eur(value: float | None) -> str:
    """Euros: two decimals from one euro up, more below: single requests cost fractions of a cent."""
    if value is None:
        return DASH
    if value == 0:
        return "€0.00"
    if abs(value) < 0.01:
        text = f"{value:.6f}".rstrip("0")
        return "<€0.000001" if text.endswith(".") else "€" + text
    if abs(value) < 1:
        # Below a euro a rounded cent hides most of the figure; four places line up in a column.
        return f"€{value:.4f}"
    return f"€{value:,.2f}"


def count(value: int | float | None) -> str:
    if value is None:
        return DASH
    return f"{value:,.0f}"


def when(value: datetime | None) -> str:
    if value is None:
        return DASH
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def day_of(value: datetime | None) -> str:
    return DASH if value is None else value.astimezone(UTC).date().isoformat()


def day(value: date | None) -> str:
    return DASH if value is None else value.isoformat()


def price(value: float) -> str:
    """A price for an input field: no float noise, no needless zeros."""
    return f"{value:.6f}".rstrip("0").rstrip(".") or "0"


def eur_price(value: float) -> str:
    """A price as people read it: €5, €0.13, €0.096; a dash for a price of zero (not charged)."""
    return DASH if not value else "€" + (f"{value:,.2f}" if value == round(value, 2) else price(value))


def init_app(app: Flask) -> None:
    app.jinja_env.filters.update(
        eur=eur, count=count, when=when, day=day, day_of=day_of, price=price, eur_price=eur_price
    )

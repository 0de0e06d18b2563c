"""Parse the admin's form fields into checked values; each parser raises ValueError with a message
for the operator."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from storage.prices import PRICE_FIELDS

MAX_NAME_LENGTH = 100


def key_name(text: str | None) -> str:
    name = (text or "").strip()
    if not name:
        raise ValueError("Name: enter a name for the key.")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"Name: use at most {MAX_NAME_LENGTH} characters.")
    return name


def rate_limit(text: str | None) -> int | None:
    """Requests per window; blank means the global default."""
    text = (text or "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError("Rate limit: enter a whole number of requests (at least 1), or leave it empty.")
    return int(text)


def expiry(text: str | None, now: datetime) -> datetime | None:
    """A date (YYYY-MM-DD): the key works until the end of that day, UTC. Blank: never expires."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        chosen = date.fromisoformat(text)
    except ValueError:
        raise ValueError("Valid until: enter a date like 2026-12-31, or leave it empty.") from None
    end_of_day = datetime.combine(chosen, time(23, 59, 59), tzinfo=UTC)
    if end_of_day <= now:
        raise ValueError("Valid until: choose today or a later date.")
    return end_of_day


def limit_value(label: str, text: str | None) -> int:
    text = (text or "").strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{label}: enter a whole number, at least 1.")
    return int(text)


PRICE_LABELS = {
    "input_per_mtok": "Input / 1M tokens",
    "output_per_mtok": "Output / 1M tokens",
    "cached_per_mtok": "Cached / 1M tokens",
    "audio_per_mb": "Audio / MB",
    "audio_per_minute": "Audio / minute",
}
assert set(PRICE_LABELS) == set(PRICE_FIELDS)


def price_fields(form) -> dict[str, float]:
    """The five prices of a model, in euros; blank counts as 0."""
    values = {}
    for name in PRICE_FIELDS:
        text = (form.get(name) or "").strip().replace(",", ".") or "0"
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{PRICE_LABELS[name]}: enter a number of euros, like 5 or 0.13.") from None
        if not 0 <= number < 1e9:
            raise ValueError(f"{PRICE_LABELS[name]}: must be 0 or more.")
        values[name] = number
    return values


def model_name(text: str | None) -> str:
    name = (text or "").strip()
    if not name or len(name) > 200 or any(c.isspace() for c in name):
        raise ValueError("Model: enter the model id as clients send it, without spaces.")
    return name

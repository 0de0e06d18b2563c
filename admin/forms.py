"""Parse the admin's form fields into checked values; each parser raises ValueError with a message
for the operator."""

from __future__ import annotations

from datetime import datetime

from storage import keys, spend
from storage.prices import PRICE_FIELDS


def _labelled(label: str, check, *args):
    """Run a storage rule; its message, led by the form's label instead of the field's name."""
    try:
        return check(*args)
    except ValueError as exc:
        raise ValueError(f"{label}: {str(exc).split(': ', 1)[-1]}") from None


def key_name(text: str | None) -> str:
    return _labelled("Name", keys.check_name, text)


def rate_limit(text: str | None) -> int | None:
    """Requests per window; blank means the default."""
    text = (text or "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError("Rate limit: enter a whole number of requests (at least 1), or leave it empty.")
    return keys.check_rate_limit(int(text))


def expiry(text: str | None, now: datetime) -> datetime | None:
    """A date (YYYY-MM-DD): the key works until the end of that day, UTC. Blank: never expires."""
    return _labelled("Valid until", keys.parse_expiry, text, now)


def budget(text: str | None, label: str = "Budget") -> float | None:
    """Euros per period, "12.50" or "12,50"; blank: no budget."""
    text = (text or "").strip().replace(",", ".")
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{label}: enter a number of euros, like 20 or 2.50, or leave it empty.") from None
    return _labelled(label, keys.check_budget, number)


def budget_period(text: str | None, label: str = "Budget period") -> str:
    """day, week or month; blank: month, storage's default for a budget."""
    return _labelled(label, spend.check_period, (text or "").strip() or "month")


def tpm(text: str | None, label: str = "Tokens per minute") -> int | None:
    """Tokens per minute; blank: no token limit."""
    text = (text or "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise ValueError(f"{label}: enter a whole number of tokens (at least 1), or leave it empty.")
    return _labelled(label, keys.check_tpm, int(text))


def models(ticked: list[str], typed: str | None) -> list[str] | None:
    """The models ticked in the list and those typed (separated by commas or spaces), in that
    order; none at all: every model (None)."""
    names = [name.strip() for name in ticked if name.strip()]
    names += [name for name in (typed or "").replace(",", " ").split() if name]
    _labelled("Models", keys.check_models, names)
    return list(dict.fromkeys(names)) or None


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

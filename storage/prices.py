"""Per-model prices in euros: the seed table, editing it, and the cost of one request."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from storage.models import Price, database

DEFAULT_MODEL = "*"

# An audio "MB" is a mebibyte, the same unit as MAX_BODY_MB in storage.config.
BYTES_PER_MB = 1024 * 1024


@dataclass(frozen=True)
class PriceRow:
    """A plain copy of a Price row: safe to cache and share between threads."""

    model: str
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    cached_per_mtok: float = 0.0
    audio_per_mb: float = 0.0
    audio_per_minute: float = 0.0


PRICE_FIELDS = tuple(f.name for f in fields(PriceRow) if f.name != "model")

SEED = (
    PriceRow("gpt-oss-120b", 5.00, 5.00, 5.00),
    PriceRow("gemma-3-27b", 5.00, 5.00, 5.00),
    PriceRow("qwen3-coder-30b-a3b", 5.00, 5.00, 5.00),
    PriceRow("qwen3-embedding-4b", 0.13, 0.13, 0.13),
    PriceRow("whisper-large-v3", audio_per_mb=0.096),
    PriceRow(DEFAULT_MODEL, 5.00, 5.00, 5.00),
)

# Used only if the "*" row was removed behind our back (delete_price refuses to).
_FALLBACK = next(row for row in SEED if row.model == DEFAULT_MODEL)


def _row(price: Price) -> PriceRow:
    return PriceRow(price.model, *(getattr(price, name) for name in PRICE_FIELDS))


def all_prices() -> dict[str, PriceRow]:
    """Every price row by model name, as frozen copies."""
    return {price.model: _row(price) for price in Price.select()}


def _checked(fields_: dict) -> dict[str, float]:
    unknown = set(fields_) - set(PRICE_FIELDS)
    if unknown:
        raise ValueError(f"unknown price field(s): {', '.join(sorted(unknown))}")
    checked = {}
    for name, value in fields_.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: not a number: {value!r}") from None
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
        checked[name] = number
    return checked


def set_price(model: str, **fields_: float) -> PriceRow:
    """Create or change the price of `model`; fields not given keep their value (0 when new)."""
    model = model.strip()
    if not model:
        raise ValueError("model: must not be empty")
    checked = _checked(fields_)
    insert = Price.insert(model=model, **checked)
    if checked:
        insert = insert.on_conflict(conflict_target=[Price.model], update=checked)
    else:
        insert = insert.on_conflict_ignore()
    with database.atomic():
        insert.execute()
        price = Price.get_by_id(model)
    return _row(price)


def delete_price(model: str) -> bool:
    """Remove the price of `model`; True if there was one. The default row cannot go."""
    if model == DEFAULT_MODEL:
        raise ValueError("the default price '*' cannot be deleted, only changed")
    return Price.delete().where(Price.model == model).execute() > 0


def price_for(prices: dict[str, PriceRow], model: str | None) -> tuple[PriceRow, bool]:
    """The price for `model` and whether it is the default one."""
    if model:
        if model in prices:
            return prices[model], model == DEFAULT_MODEL
        # Clients may name a model with its vendor, as /v1/models lists both forms.
        short = model.rsplit("/", 1)[-1]
        if short in prices:
            return prices[short], False
    return prices.get(DEFAULT_MODEL, _FALLBACK), True


def cost_eur(
    price: PriceRow,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    cached_tokens: int = 0,
    request_bytes: int = 0,
    audio_seconds: float = 0.0,
    is_audio: bool = False,
) -> float:
    """Euros for one request: tokens always; for audio also the upload (per MiB) and duration."""
    prompt = max(prompt_tokens, 0)
    # Cached tokens are part of the prompt tokens, billed at their own price.
    cached = min(max(cached_tokens, 0), prompt)
    cost = (
        (prompt - cached) * price.input_per_mtok
        + cached * price.cached_per_mtok
        + max(completion_tokens, 0) * price.output_per_mtok
    ) / 1_000_000
    if is_audio:
        cost += max(request_bytes, 0) / BYTES_PER_MB * price.audio_per_mb
        cost += max(audio_seconds, 0.0) / 60 * price.audio_per_minute
    return cost

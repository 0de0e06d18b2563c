"""API keys: generate and hash them, and every change to the api_key table with its audit row.

The admin and the CLI both call these functions, so a key's rules (name, expiry, rate limit) and
what the audit log says of each change are decided here, once.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, time

from storage import audit, spend
from storage.models import ApiKey, database, parse_utc, utcnow

KEY_PREFIX = "pmg_"
PREFIX_LENGTH = 12
HASHED_PREFIX = "(hashed)"
SOURCES = ("cli", "admin", "file")
MAX_NAME_LENGTH = 100
MAX_MODEL_LENGTH = 256
MAX_MODELS = 100


class KeyNotFound(LookupError):
    """No key has this id."""

    def __init__(self, key_id: str):
        super().__init__(f"no API key with id {key_id!r}")
        self.key_id = key_id


def generate_key() -> str:
    """A new plaintext key: the prefix and 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(plaintext: str) -> str:
    """The SHA-256 hex digest stored in place of the key; a fast hash suffices for 256 bits."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def new_key_id() -> str:
    return "key_" + secrets.token_hex(6)


def check_name(name: str | None) -> str:
    if name is not None and not isinstance(name, str):
        raise ValueError(f"name: must be a string, got {name!r}")
    name = (name or "").strip()
    if not name:
        raise ValueError("name: must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"name: at most {MAX_NAME_LENGTH} characters, got {len(name)}")
    if not name.isprintable():
        raise ValueError("name: must not contain control characters")
    return name


def check_rate_limit(rate_limit: int | None) -> int | None:
    if rate_limit is None:
        return None
    if isinstance(rate_limit, bool) or not isinstance(rate_limit, int) or rate_limit < 1:
        raise ValueError(f"rate_limit: must be a positive integer or None, got {rate_limit!r}")
    return rate_limit


def check_time(name: str, value: datetime | None) -> datetime | None:
    if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
        raise ValueError(f"{name}: must be an aware datetime or None, got {value!r}")
    return value


def parse_expiry(text: str | None, now: datetime | None = None) -> datetime | None:
    """What an operator types for an expiry: blank for never; a date, valid through the end of
    that day (23:59:59 UTC); or an ISO date-time (UTC unless it names a zone). ValueError if it
    cannot be read or is already past."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        if len(text) == 10:
            value = datetime.combine(date.fromisoformat(text), time(23, 59, 59), tzinfo=UTC)
        else:
            value = parse_utc(text)
    except ValueError:
        raise ValueError(f"expiry: {text!r} is not a date like 2026-12-31 or 2026-12-31T18:00:00Z") from None
    if value <= (now or utcnow()):
        raise ValueError(f"expiry: {value:%Y-%m-%d %H:%M:%S} UTC is already past")
    return value


def describe(value) -> str:
    """A value as the audit log shows it."""
    if value is None:
        return "none"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return repr(value) if isinstance(value, str) else str(value)


def check_budget(eur: float | None) -> float | None:
    if eur is None:
        return None
    if isinstance(eur, bool) or not isinstance(eur, int | float) or not 0 < eur < 1e9:
        raise ValueError(f"budget: a number of euros above 0, got {eur!r}")
    return float(eur)


def check_tpm(tpm: int | None) -> int | None:
    if tpm is None:
        return None
    if isinstance(tpm, bool) or not isinstance(tpm, int) or tpm < 1:
        raise ValueError(f"tpm: tokens per minute, a whole number of at least 1, got {tpm!r}")
    return tpm


def check_models(names: Iterable[str] | None) -> str | None:
    """A model allow-list as stored: a JSON list of exact names, or None for every model."""
    if names is None:
        return None
    if isinstance(names, str):
        raise ValueError("models: a list of model names, not one string")
    kept: list[str] = []
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"models: names must be non-empty strings, got {name!r}")
        name = name.strip()
        if len(name) > MAX_MODEL_LENGTH or not name.isprintable() or any(c.isspace() for c in name):
            raise ValueError(f"models: {name[:40]!r} is not a model name")
        if name not in kept:
            kept.append(name)
    if len(kept) > MAX_MODELS:
        raise ValueError(f"models: at most {MAX_MODELS} names")
    return json.dumps(kept) if kept else None


def allowed_models(key: ApiKey) -> tuple[str, ...]:
    """The models a key may use; empty: all of them."""
    return tuple(json.loads(key.models)) if key.models else ()


def _budget_period(period: str | None) -> str | None:
    return None if period is None else spend.check_period(period)


# Each field an operator sets on a key, with its rule.
FIELD_RULES: dict[str, Callable] = {
    "name": check_name,
    "expires_at": lambda value: check_time("expires_at", value),
    "rate_limit": check_rate_limit,
    "budget_eur": check_budget,
    "budget_period": _budget_period,
    "models": check_models,
    "tpm": check_tpm,
}


def _checked(changes: dict, key: ApiKey | None = None) -> dict:
    unknown = set(changes) - set(FIELD_RULES)
    if unknown:
        raise TypeError(f"no such key setting: {', '.join(sorted(unknown))}")
    values = {field: FIELD_RULES[field](value) for field, value in changes.items()}
    budget = values.get("budget_eur", key.budget_eur if key else None)
    period = values.get("budget_period", key.budget_period if key else None)
    if budget is not None and period is None:
        values["budget_period"] = "month"  # a budget without a period is a monthly one
    return values


def create_key(name: str, source: str = "cli", by: str = "", **settings) -> tuple[ApiKey, str]:
    """Store a new key and audit it (`by`: who asked, e.g. an address or "cli"); return the key
    with its plaintext, which is not kept anywhere. `settings`: any of FIELD_RULES but name."""
    if source not in SOURCES:
        raise ValueError(f"source: must be one of {', '.join(SOURCES)}, got {source!r}")
    values = _checked({"name": name, **settings})
    plaintext = generate_key()
    with database.atomic():
        key = ApiKey.create(
            key_id=new_key_id(),
            prefix=plaintext[:PREFIX_LENGTH],
            key_hash=hash_key(plaintext),
            created_at=utcnow(),
            source=source,
            **values,
        )
        shown = " ".join(f"{f}={describe(v)}" for f, v in values.items() if f != "name" and v is not None)
        detail = f"key_id={key.key_id} name={key.name!r}" + (f" {shown}" if shown else "")
        audit.record("key.created", detail, by or source)
    return key, plaintext


def list_keys() -> list[ApiKey]:
    """Every key, oldest first."""
    return list(ApiKey.select().order_by(ApiKey.created_at, ApiKey.key_id))


def get_key(key_id: str) -> ApiKey:
    key = ApiKey.get_or_none(ApiKey.key_id == key_id)
    if key is None:
        raise KeyNotFound(key_id)
    return key


def _change(key_id: str, action: str, by: str, detail: str = "", **values) -> ApiKey:
    # One UPDATE naming only the changed columns, so the revision trigger sees what changed.
    with database.atomic():
        if ApiKey.update(**values).where(ApiKey.key_id == key_id).execute() == 0:
            raise KeyNotFound(key_id)
        audit.record(action, f"key_id={key_id}" + (f" {detail}" if detail else ""), by)
        return get_key(key_id)


def revoke(key_id: str, by: str = "", reason: str = "") -> ApiKey:
    """Disable a key; it stays listed and can be enabled again."""
    return _change(key_id, "key.revoked", by, reason, enabled=False, revoked_at=utcnow())


def enable(key_id: str, by: str = "") -> ApiKey:
    return _change(key_id, "key.enabled", by, enabled=True, revoked_at=None)


def delete(key_id: str, by: str = "") -> None:
    """Remove a key for good; its usage history stays."""
    with database.atomic():
        key = get_key(key_id)
        ApiKey.delete().where(ApiKey.key_id == key_id).execute()
        audit.record("key.deleted", f"key_id={key_id} name={key.name!r}", by)


def rotate(key_id: str, by: str = "") -> str:
    """Give a key a new secret, keeping its id and settings; the old secret stops working."""
    plaintext = generate_key()
    _change(key_id, "key.rotated", by, prefix=plaintext[:PREFIX_LENGTH], key_hash=hash_key(plaintext))
    return plaintext


def update(key_id: str, *, by: str = "", **changes) -> ApiKey:
    """Change some of a key's settings (any of FIELD_RULES); None clears one. Only values that
    differ from the stored ones are written and audited."""
    key = get_key(key_id)
    wanted = _checked(changes, key)
    values = {field: value for field, value in wanted.items() if getattr(key, field) != value}
    if not values:
        return key
    detail = " ".join(f"{field}={describe(value)}" for field, value in values.items())
    return _change(key_id, "key.updated", by, detail, **values)


def key_status(key: ApiKey, now: datetime | None = None) -> str:
    """ "active", "revoked" or "expired" at `now` (default: the current time)."""
    if not key.enabled:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= (now or utcnow()):
        return "expired"
    return "active"

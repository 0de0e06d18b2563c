"""API keys: generate and hash them, and every change to the api_key table."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from storage.models import ApiKey, database, parse_utc, utcnow

KEY_PREFIX = "pmg_"
PREFIX_LENGTH = 12
HASHED_PREFIX = "(hashed)"
SOURCES = ("cli", "admin", "file")

# Lets update() tell "leave as is" from None, which means "clear".
UNSET = object()


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


def check_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ValueError("name: must not be empty")
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


def create_key(
    name: str,
    expires_at: datetime | None = None,
    rate_limit: int | None = None,
    source: str = "cli",
) -> tuple[ApiKey, str]:
    """Store a new key; return it with its plaintext, which is not kept anywhere."""
    if source not in SOURCES:
        raise ValueError(f"source: must be one of {', '.join(SOURCES)}, got {source!r}")
    plaintext = generate_key()
    key = ApiKey.create(
        key_id=new_key_id(),
        name=check_name(name),
        prefix=plaintext[:PREFIX_LENGTH],
        key_hash=hash_key(plaintext),
        created_at=utcnow(),
        expires_at=check_time("expires_at", expires_at),
        rate_limit=check_rate_limit(rate_limit),
        source=source,
    )
    return key, plaintext


def list_keys() -> list[ApiKey]:
    """Every key, oldest first."""
    return list(ApiKey.select().order_by(ApiKey.created_at, ApiKey.key_id))


def get_key(key_id: str) -> ApiKey:
    key = ApiKey.get_or_none(ApiKey.key_id == key_id)
    if key is None:
        raise KeyNotFound(key_id)
    return key


def _change(key_id: str, **values) -> ApiKey:
    # One UPDATE naming only the changed columns, so the revision trigger sees what changed.
    with database.atomic():
        if ApiKey.update(**values).where(ApiKey.key_id == key_id).execute() == 0:
            raise KeyNotFound(key_id)
        return get_key(key_id)


def revoke(key_id: str) -> ApiKey:
    """Disable a key; it stays listed and can be enabled again."""
    return _change(key_id, enabled=False, revoked_at=utcnow())


def enable(key_id: str) -> ApiKey:
    return _change(key_id, enabled=True, revoked_at=None)


def delete(key_id: str) -> None:
    """Remove a key for good; its usage history stays."""
    if ApiKey.delete().where(ApiKey.key_id == key_id).execute() == 0:
        raise KeyNotFound(key_id)


def rotate(key_id: str) -> str:
    """Give a key a new secret, keeping its id and settings; the old secret stops working."""
    plaintext = generate_key()
    _change(key_id, prefix=plaintext[:PREFIX_LENGTH], key_hash=hash_key(plaintext))
    return plaintext


def update(key_id: str, *, rate_limit=UNSET, expires_at=UNSET, name=UNSET) -> ApiKey:
    """Change some of a key's settings; None clears rate_limit or expires_at."""
    values = {}
    if name is not UNSET:
        values["name"] = check_name(name)
    if rate_limit is not UNSET:
        values["rate_limit"] = check_rate_limit(rate_limit)
    if expires_at is not UNSET:
        values["expires_at"] = check_time("expires_at", expires_at)
    if not values:
        return get_key(key_id)
    return _change(key_id, **values)


def key_status(key: ApiKey, now: datetime | None = None) -> str:
    """ "active", "revoked" or "expired" at `now` (default: the current time)."""
    if not key.enabled:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= (now or utcnow()):
        return "expired"
    return "active"


class KeysFileError(ValueError):
    """A keys file that cannot be imported; the message names the file and the entry."""


@dataclass(frozen=True)
class ImportResult:
    created: int
    updated: int
    unchanged: int


_ENTRY_FIELDS = {"key_id", "api_key", "key_hash", "name", "created_at", "expires_at", "rate_limit", "enabled"}
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _iso_time(field: str, text) -> datetime:
    try:
        return parse_utc(text)
    except (TypeError, AttributeError, ValueError):
        raise ValueError(f"{field}: expected an ISO date like 2025-12-31T00:00:00Z, got {text!r}") from None


def _entry_values(entry: dict) -> dict:
    """The api_key columns an entry asks for; raises ValueError on the first bad field."""
    if not isinstance(entry, dict):
        raise ValueError("must be an object")
    unknown = set(entry) - _ENTRY_FIELDS
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    key_id = entry.get("key_id")
    if not isinstance(key_id, str) or not key_id.strip():
        raise ValueError("key_id: must be a non-empty string")
    plaintext, key_hash = entry.get("api_key"), entry.get("key_hash")
    if plaintext is None and key_hash is None:
        raise ValueError("needs api_key or key_hash")
    name = entry.get("name") or key_id
    if not isinstance(name, str):
        raise ValueError("name: must be a string")
    values = {"key_id": key_id.strip(), "name": check_name(name)}
    if plaintext is not None:
        if not isinstance(plaintext, str) or not plaintext.strip():
            raise ValueError("api_key: must be a non-empty string")
        values["prefix"] = plaintext[:PREFIX_LENGTH]
        values["key_hash"] = hash_key(plaintext)
    if key_hash is not None:
        if not isinstance(key_hash, str) or not _HEX64.fullmatch(key_hash.lower()):
            raise ValueError("key_hash: must be 64 hex digits (SHA-256 of the key)")
        if plaintext is not None and key_hash.lower() != values["key_hash"]:
            raise ValueError("key_hash: is not the SHA-256 of api_key")
        values["key_hash"] = key_hash.lower()
    for field in ("created_at", "expires_at"):
        if entry.get(field) is not None:
            values[field] = _iso_time(field, entry[field])
    values.setdefault("expires_at", None)
    values["rate_limit"] = check_rate_limit(entry.get("rate_limit"))
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValueError("enabled: must be true or false")
    values["enabled"] = enabled
    values["source"] = "file"
    return values


def _read_entries(path: Path) -> list[tuple[str, dict]]:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeysFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeysFileError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeysFileError(f'{path}: expected an object {{"keys": [...]}}')
    entries, seen_ids, seen_hashes = [], set(), set()
    for index, entry in enumerate(document["keys"]):
        label = f"{path}: entry {index}"
        if isinstance(entry, dict) and isinstance(entry.get("key_id"), str):
            label += f" ({entry['key_id']})"
        try:
            values = _entry_values(entry)
        except ValueError as exc:
            raise KeysFileError(f"{label}: {exc}") from None
        if values["key_id"] in seen_ids:
            raise KeysFileError(f"{label}: key_id appears twice in the file")
        if values["key_hash"] in seen_hashes:
            raise KeysFileError(f"{label}: the same key appears twice in the file")
        seen_ids.add(values["key_id"])
        seen_hashes.add(values["key_hash"])
        entries.append((label, values))
    return entries


def _apply(label: str, values: dict) -> str:
    owner = ApiKey.get_or_none(ApiKey.key_hash == values["key_hash"])
    if owner is not None and owner.key_id != values["key_id"]:
        raise KeysFileError(f"{label}: this key is already stored as {owner.key_id}")
    key = ApiKey.get_or_none(ApiKey.key_id == values["key_id"])
    now = utcnow()
    if key is None:
        values.setdefault("prefix", HASHED_PREFIX)
        values.setdefault("created_at", now)
        values["revoked_at"] = None if values["enabled"] else now
        ApiKey.create(**values)
        return "created"
    if "prefix" not in values:
        # Only a hash in the file: keep a prefix learnt earlier from the same key's plaintext.
        values["prefix"] = key.prefix if key.key_hash == values["key_hash"] else HASHED_PREFIX
    changed = {name: value for name, value in values.items() if getattr(key, name) != value}
    if not changed:
        return "unchanged"
    if "enabled" in changed:
        changed["revoked_at"] = None if values["enabled"] else now
    ApiKey.update(**changed).where(ApiKey.key_id == key.key_id).execute()
    return "updated"


def import_keys_file(path: str | Path) -> ImportResult:
    """Create or update the keys listed in a JSON keys file, all or none.

    Keys are matched by key_id; keys missing from the file are left alone. A plaintext
    api_key is hashed on the way in and never stored.
    """
    entries = _read_entries(Path(path))
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    with database.atomic():
        for label, values in entries:
            counts[_apply(label, values)] += 1
    return ImportResult(**counts)

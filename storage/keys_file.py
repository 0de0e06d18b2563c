"""API_KEYS_FILE, the keys file of the original auth proxy: read it, and follow it safely.

The model (docs/keys-file.md says it for operators):
- The file seeds keys. A key_id not yet stored is created, with source "file".
- What the file last said of each key is kept (hashes only). On each re-read only the fields the
  file itself changed are applied, so a revocation, rotation or edit made in the admin or CLI
  stays until the file's own entry for that key changes that field.
- A file key whose entry leaves the file is revoked (audited). If the entry comes back, the key
  stays as it is until the admin or CLI enables it; the file's later edits apply again.
- A file that cannot be read, or an entry that is wrong, changes nothing at all.
- The original's API_KEYS variable (plaintext keys, comma-separated) is followed the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from storage import audit, keys
from storage.models import ApiKey, database, parse_utc, utcnow

# The fields the original's files carry: `key` is its plaintext field, `api_key` its README's;
# `description` stood where we have `name`; times may be ISO text or Unix seconds.
KNOWN_FIELDS = {
    "key_id",
    "api_key",
    "key",
    "key_hash",
    "name",
    "description",
    "created_at",
    "expires_at",
    "rate_limit",
    "enabled",
}
# What a re-read compares with what the file said last time.
FOLLOWED = ("key_hash", "name", "created_at", "expires_at", "rate_limit", "enabled")
REMOVED = "removed"  # file_entry of a key whose entry has left the file
FILE_ADDR = "API_KEYS_FILE"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class KeysFileError(ValueError):
    """A keys file that cannot be used; the message names the file and the entry."""


@dataclass
class ImportResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    revoked: int = 0
    skipped: int = 0
    warnings: list[str] = field(default_factory=list)

    COUNTED = ("created", "updated", "unchanged", "revoked", "skipped")

    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.COUNTED}

    def __str__(self) -> str:
        return ", ".join(f"{value} {name}" for name, value in self.counts().items())


@dataclass(frozen=True)
class Entry:
    label: str  # "path: entry 3 (key_id)", for messages
    values: dict  # api_key columns, FOLLOWED among them
    prefix: str


def _time(name: str, value) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"{name}: {value!r} is not a time") from None
    if isinstance(value, str):
        try:
            return parse_utc(value)
        except ValueError:
            pass
    raise ValueError(f"{name}: expected an ISO date like 2025-12-31T00:00:00Z or Unix seconds, got {value!r}")


def _secret(entry: dict) -> tuple[str, str]:
    """(key_hash, prefix) from the entry's plaintext or hash."""
    plaintext = entry.get("api_key", entry.get("key"))
    key_hash = entry.get("key_hash")
    if plaintext is None and key_hash is None:
        raise ValueError("needs api_key (or key) or key_hash")
    if plaintext is not None and (not isinstance(plaintext, str) or not plaintext.strip()):
        raise ValueError("api_key: must be a non-empty string")
    if key_hash is not None:
        if not isinstance(key_hash, str) or not _HEX64.fullmatch(key_hash.lower()):
            raise ValueError("key_hash: must be 64 hex digits (SHA-256 of the key)")
        if plaintext is not None and key_hash.lower() != keys.hash_key(plaintext):
            raise ValueError("key_hash: is not the SHA-256 of api_key")
        return key_hash.lower(), plaintext[: keys.PREFIX_LENGTH] if plaintext else keys.HASHED_PREFIX
    return keys.hash_key(plaintext), plaintext[: keys.PREFIX_LENGTH]


def parse_entry(entry) -> tuple[dict, str, list[str]]:
    """(columns, prefix, unknown field names) of one entry; ValueError names the first bad field."""
    if not isinstance(entry, dict):
        raise ValueError("must be an object")
    key_hash, prefix = _secret(entry)
    key_id = entry.get("key_id", key_hash[:8])  # the original's default id
    if not isinstance(key_id, str) or not key_id.strip():
        raise ValueError("key_id: must be a non-empty string")
    name = entry.get("name") or entry.get("description") or key_id
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValueError("enabled: must be true or false")
    values = {
        "key_id": key_id.strip(),
        "key_hash": key_hash,
        "name": keys.check_name(name),
        "created_at": _time("created_at", entry.get("created_at")),
        "expires_at": _time("expires_at", entry.get("expires_at")),
        "rate_limit": keys.check_rate_limit(entry.get("rate_limit")),
        "enabled": enabled,
    }
    return values, prefix, sorted(set(entry) - KNOWN_FIELDS)


def read(path: Path) -> tuple[list[Entry], list[str]]:
    """Every entry of the file, checked, and warnings; KeysFileError if anything is wrong."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeysFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeysFileError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeysFileError(f'{path}: expected an object {{"keys": [...]}}')
    entries, warnings = [], []
    for index, raw in enumerate(document["keys"]):
        label = f"{path}: entry {index}"
        if isinstance(raw, dict) and isinstance(raw.get("key_id"), str):
            label += f" ({raw['key_id']!r})"
        try:
            values, prefix, unknown = parse_entry(raw)
        except ValueError as exc:
            raise KeysFileError(f"{label}: {exc}") from None
        if unknown:
            warnings.append(f"{label}: unknown field(s) {', '.join(map(repr, unknown))} ignored")
        entries.append(Entry(label, values, prefix))
    return entries, warnings


def env_entries(plaintexts: Sequence[str]) -> list[Entry]:
    """The original's API_KEYS variable: comma-separated plaintext keys, followed like file entries.
    Their ids come from their hashes, so reordering the list changes nothing."""
    entries = []
    for index, plaintext in enumerate(plaintexts):
        key_hash = keys.hash_key(plaintext)
        raw = {"key_id": f"env_{key_hash[:8]}", "api_key": plaintext, "name": "from API_KEYS"}
        values, prefix, _ = parse_entry(raw)
        entries.append(Entry(f"API_KEYS: entry {index + 1}", values, prefix))
    return entries


def _check_unique(entries: list[Entry]) -> None:
    seen_ids, seen_hashes = set(), set()
    for entry in entries:
        if entry.values["key_id"] in seen_ids:
            raise KeysFileError(f"{entry.label}: key_id appears twice")
        if entry.values["key_hash"] in seen_hashes:
            raise KeysFileError(f"{entry.label}: the same key appears twice")
        seen_ids.add(entry.values["key_id"])
        seen_hashes.add(entry.values["key_hash"])


def _said(values: dict) -> str:
    """What the file says of a key, as stored in api_key.file_entry: no plaintext, ever."""
    return json.dumps(
        {
            name: keys.describe(values[name]) if isinstance(values[name], datetime) else values[name]
            for name in FOLLOWED
        },
        sort_keys=True,
    )


def _check_owners(entries: list[Entry]) -> None:
    for entry in entries:
        owner = ApiKey.get_or_none(ApiKey.key_hash == entry.values["key_hash"])
        if owner is not None and owner.key_id != entry.values["key_id"]:
            raise KeysFileError(f"{entry.label}: this key is already stored as {owner.key_id}")


def _create(entry: Entry, source: str, by: str, said: str | None) -> None:
    values = dict(entry.values)
    values["created_at"] = values["created_at"] or utcnow()
    values["revoked_at"] = None if values["enabled"] else utcnow()
    ApiKey.create(**values, prefix=entry.prefix, source=source, file_entry=said)
    audit.record("key.created", f"key_id={values['key_id']} name={values['name']!r} from {by}", by)


def _follow(key: ApiKey, entry: Entry, said: str) -> str:
    """Apply what the file changed since it last spoke of this key; "updated" or "unchanged"."""
    if key.file_entry is None or key.file_entry == REMOVED:
        # A key from before this rule, or one that returns to the file: the file's word becomes
        # the reference, and nothing it says now overrides what was decided meanwhile.
        ApiKey.update(file_entry=said).where(ApiKey.key_id == key.key_id).execute()
        return "unchanged"
    before = json.loads(key.file_entry)
    now = json.loads(said)
    changed = {name: entry.values[name] for name in FOLLOWED if before.get(name) != now[name]}
    if not changed:
        return "unchanged"
    if "key_hash" in changed:
        changed["prefix"] = entry.prefix
    if "enabled" in changed:
        changed["revoked_at"] = None if changed["enabled"] else utcnow()
    ApiKey.update(**changed, file_entry=said).where(ApiKey.key_id == key.key_id).execute()
    shown = " ".join(
        f"{name}={'(new secret)' if name == 'key_hash' else keys.describe(value)}"
        for name, value in changed.items()
        if name in FOLLOWED
    )
    audit.record("key.updated", f"key_id={key.key_id} {shown} from {FILE_ADDR}", FILE_ADDR)
    return "updated"


def sync(path: str | Path | None, env_keys: Sequence[str] = ()) -> ImportResult:
    """Follow API_KEYS_FILE (None: there is no file) and API_KEYS: all of it or, on any error,
    nothing (KeysFileError). Keys whose entries left are revoked only when a file was read."""
    entries, warnings = read(Path(path)) if path is not None else ([], [])
    entries += env_entries(env_keys)
    _check_unique(entries)
    result = ImportResult(warnings=warnings)
    listed = {entry.values["key_id"] for entry in entries}
    with database.atomic():
        _check_owners(entries)
        for entry in entries:
            said = _said(entry.values)
            key = ApiKey.get_or_none(ApiKey.key_id == entry.values["key_id"])
            if key is None:
                _create(entry, "file", FILE_ADDR, said)
                result.created += 1
            elif key.source != "file":
                result.warnings.append(
                    f"{entry.label}: {key.key_id} is a key made in the {key.source}, not by the file; "
                    "entry ignored"
                )
                result.skipped += 1
            else:
                outcome = _follow(key, entry, said)
                setattr(result, outcome, getattr(result, outcome) + 1)
        for key in ApiKey.select().where(ApiKey.source == "file"):
            if path is None or key.key_id in listed or key.file_entry == REMOVED:
                continue
            ApiKey.update(file_entry=REMOVED).where(ApiKey.key_id == key.key_id).execute()
            if key.enabled:
                keys.revoke(key.key_id, by=FILE_ADDR, reason=f"its entry left {FILE_ADDR}")
                result.revoked += 1
    return result


def copy_in(path: str | Path, by: str) -> ImportResult:
    """Copy a keys file's keys into the database once, as ordinary keys (the CLI's `import`):
    new key_ids are created; ones already stored are left alone and counted as skipped."""
    entries, warnings = read(Path(path))
    _check_unique(entries)
    result = ImportResult(warnings=warnings)
    with database.atomic():
        _check_owners(entries)
        for entry in entries:
            if ApiKey.get_or_none(ApiKey.key_id == entry.values["key_id"]) is None:
                _create(entry, "cli", by, None)
                result.created += 1
            else:
                result.skipped += 1
    return result

"""The Peewee models of the gateway's one database, and how its timestamps are stored."""

from __future__ import annotations

from datetime import UTC, datetime

from peewee import (
    BigIntegerField,
    BooleanField,
    CompositeKey,
    DateField,
    Field,
    FloatField,
    IntegerField,
    Model,
    SqliteDatabase,
    TextField,
)

# Bound once by db.open_database(); every model uses it. IMMEDIATE because every transaction
# here writes: a deferred one that upgrades to a write lock fails with SQLITE_BUSY at once
# instead of waiting out busy_timeout when another process wrote in between.
database = SqliteDatabase(None, lock_type="IMMEDIATE")

# One fixed-width text form for every timestamp, always UTC: sorts and compares as text in
# SQL, reads well in the sqlite3 shell, and date(ts) in SQL gives the UTC day.
TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def parse_utc(text: str) -> datetime:
    """Parse an ISO date or date-time; naive values are taken as UTC. Raises ValueError."""
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class UtcDateTimeField(Field):
    """An aware datetime stored as UTC text; a naive datetime is refused, not guessed."""

    field_type = "TEXT"

    def db_value(self, value):
        if value is None:
            return None
        if isinstance(value, str):
            value = parse_utc(value)
        if value.tzinfo is None:
            raise ValueError(f"{self.name}: naive datetime {value!r}; pass an aware UTC datetime")
        return value.astimezone(UTC).strftime(TS_FORMAT)

    def python_value(self, value):
        if value is None:
            return None
        return parse_utc(value)


class BaseModel(Model):
    class Meta:
        database = database
        # snake_case table names (api_key, daily_usage): the triggers in db.py name them.
        legacy_table_names = False


class ApiKey(BaseModel):
    key_id = TextField(primary_key=True)
    name = TextField()
    prefix = TextField()
    key_hash = TextField(unique=True)
    created_at = UtcDateTimeField()
    expires_at = UtcDateTimeField(null=True)
    enabled = BooleanField(default=True)
    revoked_at = UtcDateTimeField(null=True)
    rate_limit = IntegerField(null=True)
    last_used_at = UtcDateTimeField(null=True)
    source = TextField(default="cli")
    # For source "file": the key's entry as API_KEYS_FILE last gave it (JSON, hashes only, never
    # a plaintext key); None once the entry left the file. See storage/keys_file.py.
    file_entry = TextField(null=True)
    # Spend control (storage/keys.py has the rules): euros per calendar period, the models the key
    # may use (a JSON list; none: all), and tokens per minute. None: no such limit.
    budget_eur = FloatField(null=True)
    budget_period = TextField(null=True)
    models = TextField(null=True)
    tpm = IntegerField(null=True)


class Setting(BaseModel):
    name = TextField(primary_key=True)
    value = TextField()


class Price(BaseModel):
    model = TextField(primary_key=True)
    input_per_mtok = FloatField(default=0.0)
    output_per_mtok = FloatField(default=0.0)
    cached_per_mtok = FloatField(default=0.0)
    audio_per_mb = FloatField(default=0.0)
    audio_per_minute = FloatField(default=0.0)


class Usage(BaseModel):
    # key_id is not a foreign key on purpose: usage history outlives a deleted key.
    ts = UtcDateTimeField(index=True)
    key_id = TextField()
    endpoint = TextField()
    model = TextField()
    status = IntegerField()
    prompt_tokens = IntegerField(default=0)
    completion_tokens = IntegerField(default=0)
    cached_tokens = IntegerField(default=0)
    total_tokens = IntegerField(default=0)
    audio_seconds = FloatField(default=0.0)
    request_bytes = IntegerField(default=0)
    cost_eur = FloatField(default=0.0)
    duration_ms = IntegerField(default=0)
    streamed = BooleanField(default=False)
    complete = BooleanField(default=True)
    default_price = BooleanField(default=False)
    # The gateway answered itself (a limit, a budget, a model the key may not use): nothing was
    # forwarded. Other errors are the upstream's.
    refused = BooleanField(default=False)
    # The request's own number (addons/metering.py): a row replayed from the gateway's journal
    # after a crash or an outage is inserted once. NULL in rows written before schema version 3.
    uid = BigIntegerField(null=True, unique=True)

    class Meta:
        indexes = ((("key_id", "ts"), False),)


class DailyUsage(BaseModel):
    day = DateField()
    key_id = TextField()
    model = TextField()
    requests = IntegerField(default=0)
    errors = IntegerField(default=0)
    refused = IntegerField(default=0)  # of the errors, those the gateway answered itself
    prompt_tokens = IntegerField(default=0)
    completion_tokens = IntegerField(default=0)
    cached_tokens = IntegerField(default=0)
    total_tokens = IntegerField(default=0)
    audio_seconds = FloatField(default=0.0)
    request_bytes = IntegerField(default=0)
    cost_eur = FloatField(default=0.0)

    class Meta:
        primary_key = CompositeKey("day", "key_id", "model")


class AuditLog(BaseModel):
    ts = UtcDateTimeField()
    action = TextField()
    detail = TextField(default="")
    client_addr = TextField(default="")


class Revision(BaseModel):
    value = IntegerField(default=0)


MODELS = (ApiKey, Setting, Price, Usage, DailyUsage, AuditLog, Revision)

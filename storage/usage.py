"""Usage: write the gateway's batches with their daily rollup, and read the rollup back."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime

from peewee import EXCLUDED, JOIN, chunked, fn

from storage.models import ApiKey, DailyUsage, Usage, database

# Well under SQLite's limit of 32766 bound parameters per statement.
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One request's metadata, as the gateway measured it. Never content."""

    ts: datetime
    key_id: str
    endpoint: str
    model: str
    status: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    total_tokens: int = 0
    audio_seconds: float = 0.0
    request_bytes: int = 0
    cost_eur: float = 0.0
    duration_ms: int = 0
    streamed: bool = False
    complete: bool = True
    default_price: bool = False


_RECORD_FIELDS = tuple(f.name for f in fields(UsageRecord))
_SUMS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "total_tokens",
    "audio_seconds",
    "request_bytes",
    "cost_eur",
)
_FLOAT_SUMS = ("audio_seconds", "cost_eur")


def _amounts(r: UsageRecord) -> tuple:
    """What one record adds to its rollup row, in the order of _SUMS."""
    return (
        1,
        1 if r.status >= 400 else 0,
        r.prompt_tokens,
        r.completion_tokens,
        r.cached_tokens,
        r.total_tokens,
        r.audio_seconds,
        r.request_bytes,
        r.cost_eur,
    )


def _rollup(records: Iterable[UsageRecord]) -> tuple[dict, dict]:
    daily: dict[tuple[date, str, str], tuple] = {}
    last_used: dict[str, datetime] = {}
    for r in records:
        if r.ts.tzinfo is None:
            raise ValueError(f"UsageRecord.ts must be an aware datetime, got {r.ts!r}")
        ts = r.ts.astimezone(UTC)
        group = (ts.date(), r.key_id, r.model or "")
        amounts = _amounts(r)
        sums = daily.get(group)
        daily[group] = amounts if sums is None else tuple(map(sum, zip(sums, amounts, strict=True)))
        if r.key_id not in last_used or last_used[r.key_id] < ts:
            last_used[r.key_id] = ts
    return daily, last_used


def _usage_insert() -> tuple[str, list]:
    """One INSERT for executemany, and each column's conversion: peewee's insert_many builds the
    SQL in Python for every row, which costs the gateway's event loop GIL time under load."""
    fields_ = [Usage._meta.fields[name] for name in _RECORD_FIELDS]
    columns = ", ".join(f'"{f.column_name}"' for f in fields_)
    marks = ", ".join("?" for _ in fields_)
    return f'INSERT INTO "{Usage._meta.table_name}" ({columns}) VALUES ({marks})', [
        f.db_value for f in fields_
    ]


def record_batch(records: list[UsageRecord]) -> None:
    """Store usage rows, add them to the daily rollup and set last_used_at, in one transaction."""
    if not records:
        return
    daily, last_used = _rollup(records)
    insert, converters = _usage_insert()
    model_at = _RECORD_FIELDS.index("model")
    usage_rows = []
    for r in records:
        values = [convert(getattr(r, name)) for convert, name in zip(converters, _RECORD_FIELDS, strict=True)]
        values[model_at] = values[model_at] or ""
        usage_rows.append(values)
    daily_fields = [DailyUsage.day, DailyUsage.key_id, DailyUsage.model] + [
        getattr(DailyUsage, name) for name in _SUMS
    ]
    daily_rows = [(*group, *sums) for group, sums in daily.items()]
    add_up = {getattr(DailyUsage, n): getattr(DailyUsage, n) + getattr(EXCLUDED, n) for n in _SUMS}
    with database.atomic():
        database.cursor().executemany(insert, usage_rows)
        for chunk in chunked(daily_rows, _CHUNK):
            DailyUsage.insert_many(chunk, fields=daily_fields).on_conflict(
                conflict_target=[DailyUsage.day, DailyUsage.key_id, DailyUsage.model],
                update=add_up,
            ).execute()
        for key_id, ts in last_used.items():
            # Only last_used_at is written, so the revision trigger stays quiet.
            ApiKey.update(last_used_at=ts).where(
                (ApiKey.key_id == key_id) & (ApiKey.last_used_at.is_null() | (ApiKey.last_used_at < ts))
            ).execute()


def _sum_columns() -> list:
    return [fn.COALESCE(fn.SUM(getattr(DailyUsage, name)), 0).alias(name) for name in _SUMS]


def _between(query, start_day: date | None, end_day: date | None):
    if start_day is not None:
        query = query.where(DailyUsage.day >= start_day)
    if end_day is not None:
        query = query.where(DailyUsage.day <= end_day)
    return query


def _clean(row: dict) -> dict:
    # Groups first, then the sums; SUM() of no rows or of whole reals gives an int: make floats.
    clean = {name: value for name, value in row.items() if name not in _SUMS}
    for name in _SUMS:
        clean[name] = float(row[name]) if name in _FLOAT_SUMS else row[name]
    return clean


_GROUPS = {
    "key": ([DailyUsage.key_id, ApiKey.name], None),
    "model": ([DailyUsage.model], None),
    "day": ([DailyUsage.day], [DailyUsage.day]),
}


def summary(start_day: date | None, end_day: date | None, by: str = "key") -> list[dict]:
    """Sums per key (with its name, None once deleted), per model or per day; days inclusive.

    Keys and models come most expensive first, days in order.
    """
    if by not in _GROUPS:
        raise ValueError(f"by: must be one of {', '.join(_GROUPS)}, got {by!r}")
    columns, order = _GROUPS[by]
    query = DailyUsage.select(*columns, *_sum_columns())
    if by == "key":
        query = query.join(ApiKey, JOIN.LEFT_OUTER, on=(ApiKey.key_id == DailyUsage.key_id))
    order = order or [fn.SUM(DailyUsage.cost_eur).desc(), fn.SUM(DailyUsage.requests).desc(), *columns]
    query = _between(query, start_day, end_day).group_by(*columns).order_by(*order)
    return [_clean(row) for row in query.dicts()]


def totals(start_day: date | None, end_day: date | None) -> dict:
    """Sums over every key and model between two days, inclusive."""
    query = _between(DailyUsage.select(*_sum_columns()), start_day, end_day)
    return _clean(query.dicts().get())


def daily_rows(start_day: date | None, end_day: date | None) -> list[dict]:
    """One row per (day, key, model) with the key's name: the shape of a CSV export."""
    query = (
        DailyUsage.select(DailyUsage, ApiKey.name)
        .join(ApiKey, JOIN.LEFT_OUTER, on=(ApiKey.key_id == DailyUsage.key_id))
        .order_by(DailyUsage.day, DailyUsage.key_id, DailyUsage.model)
    )
    return [_clean(row) for row in _between(query, start_day, end_day).dicts()]


def month_bounds(now: datetime) -> tuple[date, date]:
    """First and last day of the UTC calendar month that contains `now`."""
    first = now.astimezone(UTC).date().replace(day=1)
    following = (
        first.replace(year=first.year + 1, month=1)
        if first.month == 12
        else first.replace(month=first.month + 1)
    )
    return first, date.fromordinal(following.toordinal() - 1)


def month_by_key(now: datetime) -> dict[str, tuple[int, float]]:
    """Requests and euros per key in the UTC month of `now`."""
    first, last = month_bounds(now)
    query = _between(
        DailyUsage.select(
            DailyUsage.key_id,
            fn.SUM(DailyUsage.requests).alias("requests"),
            fn.SUM(DailyUsage.cost_eur).alias("cost_eur"),
        ),
        first,
        last,
    ).group_by(DailyUsage.key_id)
    return {row["key_id"]: (row["requests"], float(row["cost_eur"])) for row in query.dicts()}

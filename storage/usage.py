"""Usage: write the gateway's batches with their daily rollup, and read the rollup back."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, date, datetime

from peewee import JOIN, fn

from storage.models import TS_FORMAT, ApiKey, DailyUsage, database


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
    uid: int | None = None  # the request's number: a row given twice (a journal replay) is stored once
    refused: bool = False  # answered by the gateway itself: nothing was forwarded


_RECORD_FIELDS = tuple(f.name for f in fields(UsageRecord))
SUMS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "total_tokens",
    "audio_seconds",
    "request_bytes",
    "cost_eur",
    "refused",
)
FLOAT_SUMS = ("audio_seconds", "cost_eur")


_USAGE_COLUMNS = ", ".join(f'"{name}"' for name in _RECORD_FIELDS)
_ROW_MARKS = f"({', '.join('?' for _ in _RECORD_FIELDS)})"
_ROWS_PER_INSERT = 500  # 18 columns: well under SQLite's 32,766 bound parameters
_SUM_COLUMNS = ", ".join(f'"{name}"' for name in SUMS)
_ROLL_UP = f"""
    INSERT INTO "daily_usage" ("day", "key_id", "model", {_SUM_COLUMNS})
    SELECT substr(ts, 1, 10), key_id, model, count(*), sum(status >= 400), sum(prompt_tokens),
           sum(completion_tokens), sum(cached_tokens), sum(total_tokens), sum(audio_seconds),
           sum(request_bytes), sum(cost_eur), sum(refused)
    FROM "usage" WHERE id > ? GROUP BY 1, 2, 3
    ON CONFLICT ("day", "key_id", "model") DO UPDATE SET
    {", ".join(f'"{name}" = "{name}" + excluded."{name}"' for name in SUMS)}
"""
# One statement per key of the batch, by primary key: its cost does not grow with the usage table
# (a GROUP BY over the new rows read the whole (key_id, ts) index: x1.9 CPU per request at 5M rows).
_LAST_USED = """
    UPDATE "api_key" SET last_used_at = ?
    WHERE key_id = ? AND (last_used_at IS NULL OR last_used_at < ?)
"""


def _row(r: UsageRecord) -> tuple:
    if r.ts.tzinfo is None:
        raise ValueError(f"UsageRecord.ts must be an aware datetime, got {r.ts!r}")
    return (
        r.ts.astimezone(UTC).strftime(TS_FORMAT),
        r.key_id,
        r.endpoint,
        r.model or "",
        r.status,
        r.prompt_tokens,
        r.completion_tokens,
        r.cached_tokens,
        r.total_tokens,
        r.audio_seconds,
        r.request_bytes,
        r.cost_eur,
        r.duration_ms,
        r.streamed,
        r.complete,
        r.default_price,
        r.uid,
        r.refused,
    )


def _insert_usage(cursor, rows: list[tuple]) -> None:
    """One multi-row INSERT: executemany would release and retake the GIL for every row, and
    each time wait for the gateway's busy event loop to hand it back. A row whose uid is stored
    already is skipped: the rollup below counts only rows inserted now."""
    values = ", ".join([_ROW_MARKS] * len(rows))
    cursor.execute(
        f'INSERT INTO "usage" ({_USAGE_COLUMNS}) VALUES {values} ON CONFLICT ("uid") DO NOTHING',
        [v for row in rows for v in row],
    )


def record_batch(records: list[UsageRecord]) -> None:
    """Store usage rows, add them to the daily rollup and set last_used_at, in one transaction.

    The rollup is computed by SQLite from the rows just inserted: the gateway's writer thread
    then spends almost no Python (and so no GIL) time per request.
    """
    if not records:
        return
    rows = [_row(r) for r in records]
    with database.atomic():
        cursor = database.cursor()
        last_id = cursor.execute('SELECT coalesce(max(id), 0) FROM "usage"').fetchone()[0]
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            _insert_usage(cursor, rows[start : start + _ROWS_PER_INSERT])
        cursor.execute(_ROLL_UP, (last_id,))
        # Only last_used_at is written, so the revision trigger stays quiet.
        cursor.executemany(_LAST_USED, [(ts, key_id, ts) for key_id, ts in _last_use(rows).items()])


def _last_use(rows: list[tuple]) -> dict[str, str]:
    """The latest time (TS_FORMAT text, which sorts as time) of each key in `rows`."""
    latest: dict[str, str] = {}
    for row in rows:
        ts, key_id = row[0], row[1]
        if ts > latest.get(key_id, ""):
            latest[key_id] = ts
    return latest


def _sum_columns() -> list:
    return [fn.COALESCE(fn.SUM(getattr(DailyUsage, name)), 0).alias(name) for name in SUMS]


def between(query, start_day: date | None, end_day: date | None):
    """`query` of DailyUsage limited to the days between the two, inclusive (None: open)."""
    if start_day is not None:
        query = query.where(DailyUsage.day >= start_day)
    if end_day is not None:
        query = query.where(DailyUsage.day <= end_day)
    return query


def _clean(row: dict) -> dict:
    # Groups first, then the sums; SUM() of no rows or of whole reals gives an int: make floats.
    clean = {name: value for name, value in row.items() if name not in SUMS}
    for name in SUMS:
        clean[name] = float(row[name]) if name in FLOAT_SUMS else row[name]
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
    query = between(query, start_day, end_day).group_by(*columns).order_by(*order)
    return [_clean(row) for row in query.dicts()]


def totals(start_day: date | None, end_day: date | None) -> dict:
    """Sums over every key and model between two days, inclusive."""
    query = between(DailyUsage.select(*_sum_columns()), start_day, end_day)
    return _clean(query.dicts().get())


def daily_rows(start_day: date | None, end_day: date | None) -> list[dict]:
    """One row per (day, key, model) with the key's name: the shape of a CSV export."""
    query = (
        DailyUsage.select(DailyUsage, ApiKey.name)
        .join(ApiKey, JOIN.LEFT_OUTER, on=(ApiKey.key_id == DailyUsage.key_id))
        .order_by(DailyUsage.day, DailyUsage.key_id, DailyUsage.model)
    )
    return [_clean(row) for row in between(query, start_day, end_day).dicts()]


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
    query = between(
        DailyUsage.select(
            DailyUsage.key_id,
            fn.SUM(DailyUsage.requests).alias("requests"),
            fn.SUM(DailyUsage.cost_eur).alias("cost_eur"),
        ),
        first,
        last,
    ).group_by(DailyUsage.key_id)
    return {row["key_id"]: (row["requests"], float(row["cost_eur"])) for row in query.dicts()}

"""One key's usage (the admin's key page and the usage tab's key filter), and which errors were the
gateway's own refusals.

The daily rollup counts every answer of status 400 or more as an error, whoever made it. A usage
row records only its status, so the gateway's refusals (a rate, token or budget limit, a model the
key may not use, a body over MAX_BODY_MB) are told apart from the upstream's errors by status:
REFUSED_STATUSES. The gateway's own 401 never reaches the usage table (no key was recognised), so
a 401 stored there is the upstream's. Inexact both ways, as a status cannot say who answered: an
upstream that answers 403, 413 or 429 itself is counted as refused, and the gateway's answers to a
request it cannot take (400, 415, 503 when it holds too many bodies) as errors.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from threading import Lock

from peewee import JOIN, fn

from storage import spend
from storage.models import ApiKey, DailyUsage, Usage, database

REFUSED_STATUSES = (403, 413, 429)

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
_GROUPS = {"day": DailyUsage.day, "model": DailyUsage.model}


def budget_period(key: ApiKey) -> str:
    """The period a key's spend is shown for: its budget's, or the month for a key without one."""
    return key.budget_period if key.budget_eur is not None and key.budget_period else "month"


def spend_this_period(keys: list[ApiKey], now: datetime) -> dict[str, tuple[spend.Period, float]]:
    """Each key's spend in its budget_period() holding `now`, one rollup query per period used."""
    by_period: dict[str, tuple[spend.Period, dict[str, float]]] = {}
    found = {}
    for key in keys:
        name = budget_period(key)
        if name not in by_period:
            period = spend.period_at(name, now)
            by_period[name] = period, spend.spend_by_key(period)
        period, spent = by_period[name]
        found[key.key_id] = period, spent.get(key.key_id, 0.0)
    return found


def _sums() -> list:
    return [fn.COALESCE(fn.SUM(getattr(DailyUsage, name)), 0).alias(name) for name in _SUMS]


def _of_key(query, key_id: str, start_day: date | None, end_day: date | None):
    query = query.where(DailyUsage.key_id == key_id)
    if start_day is not None:
        query = query.where(DailyUsage.day >= start_day)
    if end_day is not None:
        query = query.where(DailyUsage.day <= end_day)
    return query


def _clean(row: dict) -> dict:
    # SUM() of no rows, or of whole reals, gives an int: the float sums are made floats, as
    # storage.usage's summaries give them, so both read the same in templates.
    return {name: float(value) if name in _FLOAT_SUMS else value for name, value in row.items()}


def summary(start_day: date | None, end_day: date | None, key_id: str, by: str = "day") -> list[dict]:
    """One key's sums per day (in order) or per model (most expensive first); days inclusive.
    The rows have storage.usage.summary's shape."""
    if by not in _GROUPS:
        raise ValueError(f"by: must be one of {', '.join(_GROUPS)}, got {by!r}")
    column = _GROUPS[by]
    order = [column]
    if by == "model":
        order = [fn.SUM(DailyUsage.cost_eur).desc(), fn.SUM(DailyUsage.requests).desc(), column]
    query = _of_key(DailyUsage.select(column, *_sums()), key_id, start_day, end_day)
    return [_clean(row) for row in query.group_by(column).order_by(*order).dicts()]


def totals(start_day: date | None, end_day: date | None, key_id: str) -> dict:
    """One key's sums between two days, inclusive."""
    return _clean(_of_key(DailyUsage.select(*_sums()), key_id, start_day, end_day).dicts().get())


def daily_rows(start_day: date | None, end_day: date | None, key_id: str) -> list[dict]:
    """One key's rows per (day, model) with its name: storage.usage.daily_rows for one key."""
    query = (
        DailyUsage.select(DailyUsage, ApiKey.name)
        .join(ApiKey, JOIN.LEFT_OUTER, on=(ApiKey.key_id == DailyUsage.key_id))
        .order_by(DailyUsage.day, DailyUsage.model)
    )
    return [_clean(row) for row in _of_key(query, key_id, start_day, end_day).dicts()]


# Refusals per (database, day, key_id, model), with the rollup's error count they were counted at.
# Counting them reads the usage table itself, row by row (the rollup does not keep statuses): a
# group is counted again only when its error count moved, which any new refusal makes it do. So a
# page over many days reads only today's rows again, not every row of the period.
_counted: dict[tuple[str, str, str, str], tuple[int, int]] = {}
_counted_lock = Lock()
_MAX_COUNTED = 200_000


def refused(start_day: date | None, end_day: date | None, key_id: str | None = None) -> dict[tuple, int]:
    """Requests refused by the gateway (REFUSED_STATUSES) per (day, key_id, model), between two
    days inclusive, of one key or of all; groups without a refusal are left out."""
    # SQL of our own: the groups with errors of a month can be thousands, and this runs on every
    # usage page; a query object would convert each row's day for nothing. Days stay text here.
    sql = 'SELECT "day", "key_id", "model", "errors" FROM "daily_usage" WHERE "errors" > 0'
    params: list = []
    for clause, value in (('"key_id" = ?', key_id), ('"day" >= ?', start_day), ('"day" <= ?', end_day)):
        if value is not None:
            sql += f" AND {clause}"
            params.append(value if isinstance(value, str) else value.isoformat())
    where = database.database
    counts: dict[tuple[str, str, str], int] = {}
    stale: dict[str, dict[tuple[str, str], int]] = {}  # key_id -> (day, model) -> errors
    for day, key, model, errors in database.execute_sql(sql, params):
        known = _counted.get((where, day, key, model))
        if known is not None and known[0] == errors:
            if known[1]:
                counts[(day, key, model)] = known[1]
        else:
            stale.setdefault(key, {})[(day, model)] = errors
    for key, groups in stale.items():
        found = _count(key, min(day for day, _ in groups), max(day for day, _ in groups))
        with _counted_lock:
            if len(_counted) > _MAX_COUNTED:
                _counted.clear()
            for (day, model), errors in groups.items():
                n = found.get((day, model), 0)
                _counted[(where, day, key, model)] = (errors, n)
                if n:
                    counts[(day, key, model)] = n
    return {(date.fromisoformat(day), key, model): n for (day, key, model), n in counts.items()}


def _count(key_id: str, first: str, last: str) -> dict[tuple[str, str], int]:
    """One key's refusals per (day, model) from its usage rows, days as text; the (key_id, ts)
    index bounds the rows read to that key's between the two days."""
    start = datetime.combine(date.fromisoformat(first), time(0), tzinfo=UTC)
    end = datetime.combine(date.fromisoformat(last) + timedelta(days=1), time(0), tzinfo=UTC)
    day = fn.substr(Usage.ts, 1, 10).coerce(False)  # the UTC day as text, not ts's datetime
    query = (
        Usage.select(day, Usage.model, fn.COUNT(Usage.id))
        .where(
            (Usage.key_id == key_id) & (Usage.ts >= start) & (Usage.ts < end)
            & Usage.status.in_(REFUSED_STATUSES)
        )
        .group_by(day, Usage.model)
    )
    return {(text, model): n for text, model, n in query.tuples()}


def refused_by(counts: dict[tuple, int], part: str) -> dict:
    """refused()'s counts added up per "day", "key" (key_id) or "model"."""
    index = ("day", "key", "model").index(part)
    sums: dict = {}
    for group, n in counts.items():
        sums[group[index]] = sums.get(group[index], 0) + n
    return sums


def add_refused(rows: list[dict], sums: dict, field: str) -> list[dict]:
    """Give summary rows their refusals (`sums`: refused_by()'s, keyed by the rows' `field`) and
    the errors that were not refusals: the upstream's."""
    for row in rows:
        row["refused"] = sums.get(row[field], 0)
        row["upstream_errors"] = row["errors"] - row["refused"]
    return rows

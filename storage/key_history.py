"""One key's usage (the admin's key page and the usage tab's key filter), and which errors were the
gateway's own refusals.

The daily rollup counts every answer of status 400 or more as an error, whoever made it, and
apart from them the refusals: answers the gateway made itself with nothing forwarded (a rate,
token or budget limit, a model the key may not use, a body it would not take). Rows written
before release 0.2 kept only a status; their refusals were estimated once, by the migration.
"""

from __future__ import annotations

from datetime import date, datetime

from peewee import JOIN, fn

from storage import spend
from storage.models import ApiKey, DailyUsage
from storage.usage import FLOAT_SUMS, SUMS, between

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
    return [fn.COALESCE(fn.SUM(getattr(DailyUsage, name)), 0).alias(name) for name in SUMS]


def _of_key(query, key_id: str, start_day: date | None, end_day: date | None):
    return between(query.where(DailyUsage.key_id == key_id), start_day, end_day)


def _clean(row: dict) -> dict:
    # SUM() of no rows, or of whole reals, gives an int: the float sums are made floats, as
    # storage.usage's summaries give them, so both read the same in templates.
    return {name: float(value) if name in FLOAT_SUMS else value for name, value in row.items()}


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
def refused(start_day: date | None, end_day: date | None, key_id: str | None = None) -> dict[tuple, int]:
    """Requests the gateway refused per (day, key_id, model), between two days inclusive, of one
    key or of all, from the rollup; groups without a refusal are left out."""
    query = DailyUsage.select(DailyUsage.day, DailyUsage.key_id, DailyUsage.model, DailyUsage.refused).where(
        DailyUsage.refused > 0
    )
    if key_id is not None:
        query = query.where(DailyUsage.key_id == key_id)
    if start_day is not None:
        query = query.where(DailyUsage.day >= start_day)
    if end_day is not None:
        query = query.where(DailyUsage.day <= end_day)
    return {(day, key, model): n for day, key, model, n in query.tuples()}


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

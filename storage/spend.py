"""Budget periods (UTC calendar day, week, month) and what was spent in them, from the rollup.

Spend is the priced usage the usage page shows (the daily rollup's cost_eur, cached tokens and
audio included). A period starts at 00:00 UTC on its first day, so whole rollup days add up to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from peewee import fn

from storage.models import DailyUsage, Setting

PERIODS = ("day", "week", "month")


@dataclass(frozen=True)
class Period:
    name: str
    start: datetime  # aware, UTC, inclusive
    end: datetime  # aware, UTC, exclusive: when the budget resets

    @property
    def first_day(self) -> date:
        return self.start.date()


def check_period(name: str) -> str:
    if name not in PERIODS:
        raise ValueError(f"budget period: one of {', '.join(PERIODS)}, got {name!r}")
    return name


def period_at(name: str, now: datetime) -> Period:
    """The calendar period `name` that holds `now` (weeks start on Monday, as ISO weeks do)."""
    day = now.astimezone(UTC).date()
    if check_period(name) == "day":
        first, following = day, day + timedelta(days=1)
    elif name == "week":
        first = day - timedelta(days=day.weekday())
        following = first + timedelta(days=7)
    else:
        first = day.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
    return Period(name, _midnight(first), _midnight(following))


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def spend_by_key(period: Period) -> dict[str, float]:
    """Euros per key_id since the period began."""
    query = (
        DailyUsage.select(DailyUsage.key_id, fn.SUM(DailyUsage.cost_eur).alias("eur"))
        .where(DailyUsage.day >= period.first_day)
        .group_by(DailyUsage.key_id)
    )
    return {row["key_id"]: float(row["eur"]) for row in query.dicts()}


def total_spend(period: Period) -> float:
    """Euros of all keys since the period began."""
    value = DailyUsage.select(fn.SUM(DailyUsage.cost_eur)).where(DailyUsage.day >= period.first_day).scalar()
    return float(value or 0.0)


@dataclass(frozen=True)
class GlobalSpend:
    """The whole gateway's budget and token limit (the admin's Settings); None: no such limit."""

    budget_eur: float | None = None
    budget_period: str = "month"
    tpm: int | None = None


_GLOBAL = {"budget_eur": "global_budget_eur", "budget_period": "global_budget_period", "tpm": "global_tpm"}


def load_global() -> GlobalSpend:
    """The stored global settings; a value written by hand that breaks its rule is ignored."""
    stored = {row.name: row.value for row in Setting.select().where(Setting.name.in_(list(_GLOBAL.values())))}
    values = {}
    for field, name in _GLOBAL.items():
        if name not in stored:
            continue
        try:
            values[field] = _parse_global(field, stored[name])
        except ValueError:
            continue
    return GlobalSpend(**values)


def _parse_global(field: str, text: str):
    if field == "budget_period":
        return check_period(text)
    number = float(text) if field == "budget_eur" else int(text)
    if not 0 < number < 1e9:
        raise ValueError(f"{field}: must be above 0")
    return number


def save_global(settings: GlobalSpend) -> None:
    """Store the global settings; None clears a limit."""
    if settings.budget_eur is not None and not 0 < settings.budget_eur < 1e9:
        raise ValueError(f"global budget: a number of euros above 0, got {settings.budget_eur!r}")
    if settings.tpm is not None and (isinstance(settings.tpm, bool) or settings.tpm < 1):
        raise ValueError(f"global tpm: a whole number of at least 1, got {settings.tpm!r}")
    check_period(settings.budget_period)
    with Setting._meta.database.atomic():
        for field, name in _GLOBAL.items():
            value = getattr(settings, field)
            if value is None:
                Setting.delete().where(Setting.name == name).execute()
            else:
                Setting.insert(name=name, value=str(value)).on_conflict(
                    conflict_target=[Setting.name], update={Setting.value: str(value)}
                ).execute()

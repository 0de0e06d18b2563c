"""Rate limits the operator can change live; the environment gives their defaults."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from storage.config import Settings
from storage.models import Setting


@dataclass(frozen=True)
class Limits:
    key_rate_limit_requests: int  # for keys without a limit of their own
    key_rate_limit_window: int
    ip_rate_limit_requests: int
    ip_rate_limit_window: int
    global_rate_limit_requests: int
    global_rate_limit_window: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The environment's values: the defaults that database values override."""
        return cls(**{name: getattr(settings, name) for name in LIMIT_NAMES})

    def describe(self) -> str:
        """One line for the start-up log."""
        return (
            f"global {self.global_rate_limit_requests} per {self.global_rate_limit_window} s, "
            f"per key {self.key_rate_limit_requests} per {self.key_rate_limit_window} s "
            f"(unless the key has its own), per client address {self.ip_rate_limit_requests} "
            f"per {self.ip_rate_limit_window} s"
        )


LIMIT_NAMES = tuple(f.name for f in fields(Limits))


def check_limit(name: str, value) -> int:
    """`value` as a positive int; ValueError naming the setting otherwise."""
    if name not in LIMIT_NAMES:
        raise ValueError(f"unknown setting {name!r}; known: {', '.join(LIMIT_NAMES)}")
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    try:
        number = int(str(value).strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be a positive integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    return number


def load_limits(defaults: Limits) -> Limits:
    """The limits in force: database values where set, `defaults` elsewhere."""
    overrides = {}
    for row in Setting.select().where(Setting.name.in_(LIMIT_NAMES)):
        try:
            overrides[row.name] = check_limit(row.name, row.value)
        except ValueError:
            # A bad value written by hand must not take the gateway down: keep the default.
            continue
    return replace(defaults, **overrides)


def set_limit(name: str, value) -> int:
    """Store a limit that overrides the environment's default; returns the stored int."""
    number = check_limit(name, value)
    Setting.insert(name=name, value=str(number)).on_conflict(
        conflict_target=[Setting.name], update={Setting.value: str(number)}
    ).execute()
    return number


def reset_limit(name: str) -> bool:
    """Drop a stored limit so the environment's default applies again; True if one was set."""
    if name not in LIMIT_NAMES:
        raise ValueError(f"unknown setting {name!r}; known: {', '.join(LIMIT_NAMES)}")
    return Setting.delete().where(Setting.name == name).execute() > 0

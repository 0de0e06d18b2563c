"""Manage the gateway's API keys and read its usage from the command line."""

from __future__ import annotations

import functools
import json
import os
import sys
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import click
from peewee import DatabaseError

# Runnable as `python scripts/manage_keys.py` from anywhere: the storage package sits beside us.
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from storage import config, key_history, keys, keys_file, spend, untrusted, usage  # noqa: E402
from storage.db import DatabaseMissing, close_database, open_database  # noqa: E402
from storage.models import utcnow  # noqa: E402

# What the audit log shows as the client address of a change made here.
CLI_ADDR = "cli"
CELL_CHARS = untrusted.MAX_MODEL_CHARS  # the most of one value a table shows


@dataclass
class State:
    database_url: str
    opened: bool = False

    def open(self) -> None:
        if self.opened:
            return
        try:
            # Never a new database: one nobody serves would take keys that never work.
            open_database(self.database_url, must_exist=True)
        except DatabaseMissing as exc:
            raise click.ClickException(
                f"{exc}. Start the gateway once (`make run`, or the container), or point DATA_DIR "
                "or DATABASE_URL at the gateway's data folder."
            ) from None
        except (ValueError, OSError, DatabaseError) as exc:
            raise click.ClickException(f"cannot open the database {self.database_url}: {exc}") from exc
        self.opened = True


pass_state = click.make_pass_decorator(State)


def pass_db(command):
    """Pass the state with the database open; opened here, not in the group, so --help works anywhere."""

    @pass_state
    @functools.wraps(command)
    def run(state: State, *args, **kwargs):
        state.open()
        return command(state, *args, **kwargs)

    return run


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


class Cleared:
    """`none` given for a setting: clear it."""

    def __repr__(self) -> str:
        return "none"


CLEARED = Cleared()


class Setting(click.ParamType):
    """A key setting's value, checked by its storage rule (storage.keys), or `none` to clear it."""

    def __init__(self, metavar: str, parse):
        self.name = metavar
        self.parse = parse

    def get_metavar(self, param, ctx) -> str:
        return f"{self.name}|none"  # as typed: click would write NONE

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        if value.strip().lower() == "none":
            return CLEARED
        try:
            return self.parse(value.strip())
        except ValueError as exc:
            self.fail(str(exc).split(": ", 1)[-1], param, ctx)


def _number(kind, text: str, what: str):
    try:
        return kind(text)
    except ValueError:
        number = "a whole number" if kind is int else "a number"
        raise ValueError(f"{what}: {text!r} is not {number}") from None


def _models(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError("models: model ids separated by commas, or none for every model")
    keys.check_models(names)
    return names


# The admin's rules: a date is valid through its end (UTC), a budget is euros above 0, and so on.
EXPIRES = Setting("DATE", keys.parse_expiry)
RATE_LIMIT = Setting("N", lambda text: keys.check_rate_limit(_number(int, text, "rate limit")))
BUDGET = Setting("EUR", lambda text: keys.check_budget(_number(float, text, "budget")))
MODELS = Setting("A,B", _models)
TPM = Setting("N", lambda text: keys.check_tpm(_number(int, text, "tpm")))


def setting_options(command):
    """The options of a key's settings, shared by create and update."""
    for option in reversed((
        click.option("--expires", type=EXPIRES,
                     help="Expiry: a date (valid through that day, UTC) or an ISO date-time; none: never."),
        click.option("--rate-limit", type=RATE_LIMIT,
                     help="Requests per KEY_RATE_LIMIT_WINDOW for this key; none: KEY_RATE_LIMIT_REQUESTS."),
        click.option("--budget", type=BUDGET,
                     help="Euros the key may spend per budget period, then refused (429); none: no budget."),
        click.option("--budget-period", type=click.Choice(spend.PERIODS),
                     help="The budget's calendar period in UTC, weeks from Monday [default: month]."),
        click.option("--models", type=MODELS,
                     help="The only models the key may use, separated by commas; none: every model."),
        click.option("--tpm", type=TPM, help="Tokens per minute the key may use; none: no limit."),
    )):
        command = option(command)
    return command


class Day(click.ParamType):
    name = "DAY"

    def convert(self, value, param, ctx):
        if isinstance(value, date):
            return value
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            self.fail(f"{value!r} is not a date like 2026-12-31", param, ctx)


class Cli(click.Group):
    """Turns the storage layer's expected errors into a message and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (keys.KeyNotFound, keys_file.KeysFileError) as exc:
            raise click.ClickException(str(exc)) from exc


def default_database_url() -> str:
    # Only DATA_DIR matters here: an unrelated bad variable must not stop key management.
    return config.load({"DATA_DIR": os.environ.get("DATA_DIR", "")}).database_url


@click.group(cls=Cli)
@click.option(
    "--database-url",
    envvar="DATABASE_URL",
    default=default_database_url,
    show_default=f"sqlite:///$DATA_DIR/gateway.db, DATA_DIR default {config.DEFAULT_DATA_DIR}",
    help="The gateway's database (env DATABASE_URL).",
)
@click.pass_context
def cli(ctx: click.Context, database_url: str) -> None:
    """Manage the gateway's API keys and read its usage.

    Every change applies to the running gateway within a second.
    """
    ctx.obj = State(database_url)
    ctx.call_on_close(close_database)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _key_json(key, now: datetime, spent: tuple[spend.Period, float]) -> dict:
    period, eur = spent
    return {
        "key_id": key.key_id,
        "name": key.name,
        "prefix": key.prefix,
        "status": keys.key_status(key, now),
        "enabled": key.enabled,
        "created_at": _iso(key.created_at),
        "expires_at": _iso(key.expires_at),
        "revoked_at": _iso(key.revoked_at),
        "last_used_at": _iso(key.last_used_at),
        "rate_limit": key.rate_limit,
        "source": key.source,
        "budget_eur": key.budget_eur,
        "budget_period": key.budget_period,
        "models": list(keys.allowed_models(key)),  # empty: every model
        "tpm": key.tpm,
        # The budget's period, or the month for a key without a budget.
        "spend": {"period": period.name, "start": _iso(period.start), "end": _iso(period.end), "eur": eur},
    }


def _table(headers: list[str], rows: list[list]) -> str:
    # Every cell escaped and cut: a model name is a client's choice, and a key name stored before
    # names were checked may hold anything; neither may drive the operator's terminal.
    cells = [headers, *([untrusted.escape(cell, CELL_CHARS) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _show_new_secret(key_id: str, plaintext: str, as_json: bool, what: str) -> None:
    if as_json:
        click.echo(json.dumps({"key_id": key_id, "api_key": plaintext}))
        return
    click.echo(f"{what} {key_id}. The API key:\n\n    {plaintext}\n")
    click.secho("It is shown only this once and cannot be recovered: store it now.", fg="yellow")


def _given(**values) -> dict:
    """The settings given, `none` turned into None."""
    given = {field: value for field, value in values.items() if value is not None}
    return {field: None if value is CLEARED else value for field, value in given.items()}


@cli.command()
@click.option("--name", required=True, help="Who or what uses the key, e.g. 'n8n production'.")
@setting_options
@json_option
@pass_db
def create(state: State, name: str, as_json: bool, budget_period: str | None, **values) -> None:
    """Create a key and print it, once."""
    if budget_period and values["budget"] in (None, CLEARED):
        raise click.BadParameter("a period needs a budget: give --budget too", param_hint="--budget-period")
    settings = _given(
        expires_at=values["expires"], rate_limit=values["rate_limit"], budget_eur=values["budget"],
        budget_period=budget_period, models=values["models"], tpm=values["tpm"],
    )
    try:
        key, plaintext = keys.create_key(name, source="cli", by=CLI_ADDR, **settings)
    except ValueError as exc:
        # Every other setting was checked by its option's type, with the same rules.
        raise click.BadParameter(str(exc), param_hint="--name") from None
    _show_new_secret(key.key_id, plaintext, as_json, "Created key")


def _shown(key, field: str) -> str:
    """A setting as `update` reports it."""
    if field == "models":
        return ",".join(keys.allowed_models(key)) or "every model"
    return keys.describe(getattr(key, field))


@cli.command()
@click.argument("key_id")
@click.option("--name", help="A new name.")
@setting_options
@json_option
@pass_db
def update(state: State, key_id: str, name: str | None, as_json: bool, budget_period: str | None,
           **values) -> None:
    """Change a key's settings; `none` clears one (--budget none clears its period too)."""
    before = keys.get_key(key_id)
    changes = _given(name=name, expires_at=values["expires"], rate_limit=values["rate_limit"],
                     models=values["models"], tpm=values["tpm"])
    budget = values["budget"]
    if budget is CLEARED:
        if budget_period:
            raise click.BadParameter(
                "--budget none clears the budget and its period", param_hint="--budget-period"
            )
        changes.update(budget_eur=None, budget_period=None)
    elif budget is not None:
        changes.update(_given(budget_eur=budget, budget_period=budget_period))
    elif budget_period:
        if before.budget_eur is None:
            raise click.BadParameter("the key has no budget: give --budget too", param_hint="--budget-period")
        changes["budget_period"] = budget_period
    if not changes:
        raise click.UsageError("nothing to change: give at least one setting (see --help)")
    try:
        after = keys.update(key_id, by=CLI_ADDR, **changes)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--name") from None
    changed = [field for field in keys.FIELD_RULES if getattr(after, field) != getattr(before, field)]
    if as_json:
        spent = key_history.spend_this_period([after], utcnow())[after.key_id]
        click.echo(json.dumps({**_key_json(after, utcnow(), spent), "changed": changed}, indent=2))
    elif changed:
        shown = ", ".join(f"{field}={_shown(after, field)}" for field in changed)
        click.echo(f"Updated {key_id}: {shown}.")
    else:
        click.echo(f"Nothing changed for {key_id}: it has these settings already.")


@cli.command("list")
@json_option
@pass_db
def list_(state: State, as_json: bool) -> None:
    """List every key (never the key itself: it is not stored)."""
    now = utcnow()
    found = keys.list_keys()
    spent = key_history.spend_this_period(found, now)
    if as_json:
        click.echo(json.dumps([_key_json(key, now, spent[key.key_id]) for key in found], indent=2))
        return
    if not found:
        click.echo("No keys yet: create one with `create --name NAME`.")
        return
    headers = [
        "KEY ID",
        "NAME",
        "PREFIX",
        "STATUS",
        "EXPIRES (UTC)",
        "RATE LIMIT",
        "BUDGET EUR",
        "SPENT EUR",
        "MODELS",
        "TPM",
        "LAST USED (UTC)",
        "SOURCE",
    ]
    rows = [
        [
            key.key_id,
            key.name,
            key.prefix,
            keys.key_status(key, now),
            _when(key.expires_at),
            key.rate_limit or "default",
            f"{key.budget_eur:g}/{key.budget_period}" if key.budget_eur is not None else "-",
            f"{spent[key.key_id][1]:.4f} this {spent[key.key_id][0].name}",
            ",".join(keys.allowed_models(key)) or "all",
            key.tpm or "-",
            _when(key.last_used_at),
            key.source,
        ]
        for key in found
    ]
    click.echo(_table(headers, rows))


@cli.command()
@click.argument("key_id")
@json_option
@pass_db
def revoke(state: State, key_id: str, as_json: bool) -> None:
    """Disable a key; `enable` brings it back."""
    key = keys.revoke(key_id, by=CLI_ADDR)
    click.echo(
        json.dumps({"key_id": key.key_id, "status": "revoked"}) if as_json else f"Revoked {key.key_id}."
    )


@cli.command()
@click.argument("key_id")
@json_option
@pass_db
def enable(state: State, key_id: str, as_json: bool) -> None:
    """Enable a revoked key again."""
    key = keys.enable(key_id, by=CLI_ADDR)
    status = keys.key_status(key)
    click.echo(
        json.dumps({"key_id": key.key_id, "status": status})
        if as_json
        else f"Enabled {key.key_id} ({status})."
    )


@cli.command()
@click.argument("key_id")
@click.confirmation_option(prompt="Delete this key for good? (Its usage history stays.)")
@json_option
@pass_db
def delete(state: State, key_id: str, as_json: bool) -> None:
    """Delete a key for good."""
    keys.delete(key_id, by=CLI_ADDR)
    click.echo(json.dumps({"key_id": key_id, "deleted": True}) if as_json else f"Deleted {key_id}.")


@cli.command()
@click.argument("key_id")
@json_option
@pass_db
def rotate(state: State, key_id: str, as_json: bool) -> None:
    """Give a key a new secret and print it, once; the old secret stops working."""
    plaintext = keys.rotate(key_id, by=CLI_ADDR)
    _show_new_secret(key_id, plaintext, as_json, "Rotated key")


@cli.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@pass_db
def import_(state: State, file: Path, as_json: bool) -> None:
    """Copy the keys of a keys file ({"keys": [...]}, the original auth proxy's format) into the
    database once; key_ids already stored are skipped. (API_KEYS_FILE is the file the gateway follows.)"""
    result = keys_file.copy_in(file, by=CLI_ADDR)
    for warning in result.warnings:
        click.echo(f"warning: {untrusted.escape(warning)}", err=True)
    if as_json:
        click.echo(json.dumps(result.counts()))
    else:
        click.echo(f"Imported {file}: {result.created} created, {result.skipped} skipped (already stored).")


USAGE_COLUMNS = [
    ("requests", "REQUESTS"),
    ("errors", "ERRORS"),
    ("prompt_tokens", "PROMPT"),
    ("completion_tokens", "COMPLETION"),
    ("cached_tokens", "CACHED"),
    ("total_tokens", "TOTAL TOKENS"),
    ("audio_seconds", "AUDIO S"),
    ("cost_eur", "COST EUR"),
]


def _usage_cells(row: dict) -> list[str]:
    formats = {"cost_eur": "{:.4f}", "audio_seconds": "{:.1f}"}
    return [formats.get(name, "{}").format(row[name]) for name, _ in USAGE_COLUMNS]


@cli.command("usage")
@click.option("--since", type=Day(), help="First day, inclusive (UTC) [default: first day of this month].")
@click.option("--until", type=Day(), help="Last day, inclusive (UTC) [default: today].")
@click.option("--by", type=click.Choice(["key", "model", "day"]), default="key", show_default=True)
@json_option
@pass_db
def usage_(state: State, since: date | None, until: date | None, by: str, as_json: bool) -> None:
    """Requests, tokens and cost between two days."""
    today = utcnow().date()
    since = since or today.replace(day=1)
    until = until or today
    if since > until:
        raise click.BadParameter(f"{since} is after --until {until}", param_hint="--since")
    rows = usage.summary(since, until, by=by)
    total = usage.totals(since, until)
    if as_json:
        document = {"since": since, "until": until, "by": by, "rows": rows, "totals": total}
        click.echo(json.dumps(document, default=str, indent=2))
        return
    click.echo(f"Usage from {since} to {until} (UTC days), by {by}:\n")
    if by == "key":
        headers, labels = ["KEY ID", "NAME"], [[r["key_id"], r["name"] or "(deleted)"] for r in rows]
    else:
        headers, labels = [by.upper()], [[r[by] or "(none)"] for r in rows]
    body = [label + _usage_cells(row) for label, row in zip(labels, rows, strict=True)]
    total_label = ["TOTAL"] + [""] * (len(headers) - 1)
    click.echo(
        _table(headers + [title for _, title in USAGE_COLUMNS], [*body, total_label + _usage_cells(total)])
    )


if __name__ == "__main__":
    cli()

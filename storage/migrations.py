"""Versioned schema migrations: a database made by any earlier release opens with this code.

Version 1 is the schema of release 0.1, which had no version table. A new database is created
at the latest version directly; an older one is brought forward one step at a time, each step
in the caller's transaction, so a failed step leaves the database as it was.
"""

from __future__ import annotations

from collections.abc import Callable

from peewee import BigIntegerField, BooleanField, Database, FloatField, IntegerField, TextField
from playhouse.migrate import SqliteMigrator, migrate


class SchemaTooNew(RuntimeError):
    """The database was written by a newer release than this code."""


def _v2_file_entries_and_key_limit_names(database: Database) -> None:
    # api_key.file_entry: what API_KEYS_FILE last said of a key (hashes only), so a re-import
    # applies only what the file changed and never undoes a revocation or rotation made since.
    migrate(SqliteMigrator(database).add_column("api_key", "file_entry", TextField(null=True)))
    # 0.1 called the per-key default `rate_limit_*`; that name now means the global limit, as in
    # the original auth proxy. Stored overrides keep their meaning under the new name.
    for old, new in (
        ("rate_limit_requests", "key_rate_limit_requests"),
        ("rate_limit_window", "key_rate_limit_window"),
    ):
        database.execute_sql("UPDATE setting SET name = ? WHERE name = ?", (new, old))


def _v3_usage_uid(database: Database) -> None:
    # usage.uid: the request's number, unique, so that rows the gateway replays from its journal
    # (after SIGKILL, or once an unwritable database works again) are inserted once.
    migrator = SqliteMigrator(database)
    migrate(
        migrator.add_column("usage", "uid", BigIntegerField(null=True)),
        migrator.add_index("usage", ("uid",), True),
    )


def _v4_spend_control(database: Database) -> None:
    # Budgets, model allow-lists and token limits per key: all empty, so every key keeps the
    # meaning it had (no budget, every model, no token limit).
    migrator = SqliteMigrator(database)
    migrate(
        migrator.add_column("api_key", "budget_eur", FloatField(null=True)),
        migrator.add_column("api_key", "budget_period", TextField(null=True)),
        migrator.add_column("api_key", "models", TextField(null=True)),
        migrator.add_column("api_key", "tpm", IntegerField(null=True)),
    )


def _v5_refused(database: Database) -> None:
    # usage.refused and its daily sum tell the gateway's own refusals from the upstream's errors.
    # Earlier rows kept only a status: theirs are estimated from it (the statuses the gateway
    # refuses with), once, here.
    migrator = SqliteMigrator(database)
    migrate(
        migrator.add_column("usage", "refused", BooleanField(default=False)),
        migrator.add_column("daily_usage", "refused", IntegerField(default=0)),
    )
    database.execute_sql('UPDATE "usage" SET refused = 1 WHERE status IN (403, 413, 429)')
    database.execute_sql(
        'UPDATE "daily_usage" SET refused = (SELECT count(*) FROM "usage" u WHERE u.refused = 1'
        ' AND u.key_id = "daily_usage".key_id AND u.model = "daily_usage".model'
        ' AND substr(u.ts, 1, 10) = "daily_usage".day) WHERE errors > 0'
    )


# (version reached, what it changes, the step). Append only; never edit a released step.
MIGRATIONS: tuple[tuple[int, str, Callable[[Database], None]], ...] = (
    (
        2,
        "api_key.file_entry; per-key limit settings renamed key_rate_limit_*",
        _v2_file_entries_and_key_limit_names,
    ),
    (3, "usage.uid, unique: journal replays are idempotent", _v3_usage_uid),
    (4, "api_key.budget_eur, budget_period, models, tpm", _v4_spend_control),
    (5, "usage.refused and daily_usage.refused: the gateway's refusals apart", _v5_refused),
)
LATEST = MIGRATIONS[-1][0] if MIGRATIONS else 1


def _tables(database: Database) -> set[str]:
    rows = database.execute_sql("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


def current_version(database: Database) -> int | None:
    """The schema version, 1 for a release-0.1 database, None for an empty one."""
    tables = _tables(database)
    if "schema_version" in tables:
        return database.execute_sql("SELECT version FROM schema_version").fetchone()[0]
    return 1 if "api_key" in tables else None


def set_version(database: Database, version: int) -> None:
    database.execute_sql("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    database.execute_sql("DELETE FROM schema_version")
    database.execute_sql("INSERT INTO schema_version (version) VALUES (?)", (version,))


def upgrade(database: Database, version: int) -> list[int]:
    """Apply every step after `version`, inside the caller's transaction; return the versions reached."""
    if version > LATEST:
        raise SchemaTooNew(
            f"the database has schema version {version}, newer than this release understands "
            f"({LATEST}); run the release that wrote it, or restore a backup"
        )
    applied = []
    for target, _, step in MIGRATIONS:
        if target > version:
            step(database)
            set_version(database, target)
            applied.append(target)
    return applied

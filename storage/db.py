"""Open the one SQLite database: bind the models, set pragmas, create schema and seed rows."""

from __future__ import annotations

from pathlib import Path

from peewee import Database, OperationalError
from playhouse.db_url import parse as parse_url

from storage import migrations
from storage.models import MODELS, ApiKey, Price, Revision, database
from storage.prices import PRICE_FIELDS, SEED

__all__ = ["database", "open_database", "close_database", "revision", "writable", "DatabaseMissing"]


class DatabaseMissing(FileNotFoundError):
    """open_database(..., must_exist=True) found no database file."""

# busy_timeout first, so that the journal_mode switch itself waits for other processes.
PRAGMAS = (
    ("busy_timeout", 5000),
    ("journal_mode", "wal"),
    ("foreign_keys", 1),
    ("synchronous", "normal"),
)


def _revision_triggers(replace: bool) -> list[str]:
    # Every change the gateway must see bumps one counter it can poll cheaply. last_used_at
    # is left out: the gateway itself writes it on every batch and must not wake itself.
    watched = [f.column_name for f in ApiKey._meta.sorted_fields if f.name != "last_used_at"]
    bump = "BEGIN UPDATE revision SET value = value + 1; END"
    statements = []
    if replace:
        # A migration added columns: the update trigger must watch them too.
        statements += [
            f"DROP TRIGGER IF EXISTS {table}_{event}_rev"
            for table in ("api_key", "setting", "price")
            for event in ("insert", "delete", "update")
        ]
    for table in ("api_key", "setting", "price"):
        statements += [
            f"CREATE TRIGGER IF NOT EXISTS {table}_insert_rev AFTER INSERT ON {table} {bump}",
            f"CREATE TRIGGER IF NOT EXISTS {table}_delete_rev AFTER DELETE ON {table} {bump}",
        ]
    statements += [
        f"CREATE TRIGGER IF NOT EXISTS api_key_update_rev AFTER UPDATE OF {', '.join(watched)} "
        f"ON api_key {bump}",
        f"CREATE TRIGGER IF NOT EXISTS setting_update_rev AFTER UPDATE ON setting {bump}",
        f"CREATE TRIGGER IF NOT EXISTS price_update_rev AFTER UPDATE ON price {bump}",
    ]
    return statements


def _create_schema() -> list[int]:
    """Create a new database at the latest schema or migrate an older one; return the steps applied."""
    # One write transaction, every statement idempotent: several processes may start at once.
    with database.atomic():
        version = migrations.current_version(database)
        applied = []
        if version is None:
            database.create_tables(MODELS, safe=True)
            migrations.set_version(database, migrations.LATEST)
        else:
            applied = migrations.upgrade(database, version)
        for statement in _revision_triggers(replace=bool(applied)):
            database.execute_sql(statement)
        Revision.insert(id=1, value=0).on_conflict_ignore().execute()
        # Seed only a new table: a seed price the operator deleted must stay deleted.
        if version is None and not Price.select().exists():
            rows = [{"model": row.model, **{n: getattr(row, n) for n in PRICE_FIELDS}} for row in SEED]
            Price.insert_many(rows).execute()
    return applied


def _sqlite_path(url: str, must_exist: bool) -> tuple[str, dict]:
    if not url.startswith("sqlite:"):
        raise ValueError(f"only sqlite:/// database URLs are supported, got {url!r}")
    params = parse_url(url)
    path = params.pop("database")
    if path != ":memory:":
        if must_exist and not Path(path).is_file():
            raise DatabaseMissing(f"no database at {Path(path).resolve()}")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return path, params


def open_database(url: str, must_exist: bool = False) -> Database:
    """Bind the models to the SQLite file in `url` (sqlite:///path), creating or migrating its schema.

    With `must_exist`, a missing file raises DatabaseMissing instead of being created. Connections
    are per thread: each thread connects on first use and should call close_database() when done.
    """
    path, params = _sqlite_path(url, must_exist)
    if not database.deferred and not database.is_closed():
        database.close()
    params.setdefault("timeout", 5)
    database.init(path, pragmas=list(PRAGMAS), **params)
    _create_schema()
    return database


def close_database() -> None:
    """Close the calling thread's connection, if it has one."""
    if not database.deferred and not database.is_closed():
        database.close()


def revision() -> int:
    """The change counter: it grows on every change of keys, settings and prices."""
    return database.execute_sql("SELECT value FROM revision WHERE id = 1").fetchone()[0]


def writable() -> bool:
    """Whether this process can take the write lock now (for health checks); writes nothing."""
    try:
        database.execute_sql("BEGIN IMMEDIATE")
    except OperationalError:
        return False
    database.execute_sql("ROLLBACK")
    return True

"""scripts/manage_keys.py through click's CliRunner, against a real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from scripts.manage_keys import cli
from storage import audit, config, keys, spend, usage
from storage.db import close_database, open_database, revision
from storage.usage import UsageRecord

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db_path(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    path = tmp_path / "gateway.db"
    open_database(f"sqlite:///{path}")
    yield path
    close_database()


@pytest.fixture
def run(db_path):
    runner = CliRunner()

    def invoke(*args, input=None):
        return runner.invoke(cli, ["--database-url", f"sqlite:///{db_path}", *args], input=input)

    return invoke


def stored_bytes(db_path) -> bytes:
    return b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))


def create(run, *args) -> dict:
    result = run("create", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_create_prints_the_key_once_with_a_warning(run, db_path):
    result = run("create", "--name", "n8n production", "--rate-limit", "30")
    assert result.exit_code == 0, result.output
    plaintext = next(word for word in result.output.split() if word.startswith("pmg_"))
    assert "only this once" in result.output
    (key,) = keys.list_keys()
    assert key.key_hash == keys.hash_key(plaintext)
    assert (key.name, key.rate_limit, key.source) == ("n8n production", 30, "cli")
    (entry,) = audit.recent()
    assert (entry.action, entry.detail) == (
        "key.created", f"key_id={key.key_id} name='n8n production' rate_limit=30"
    )
    assert plaintext.encode() not in stored_bytes(db_path)


def test_create_json_is_exactly_id_and_key(run):
    start = revision()
    document = create(run, "--name", "zapier", "--expires", "2099-12-31")
    assert set(document) == {"key_id", "api_key"}
    key = keys.get_key(document["key_id"])
    assert key.key_hash == keys.hash_key(document["api_key"])
    # Valid through that day, as in the admin.
    assert key.expires_at == datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert revision() == start + 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "x", "--expires", "soon"], "--expires"),
        (["--name", "x", "--expires", "2001-01-01"], "already past"),
        (["--name", "x" * 101], "at most 100"),
        (["--name", "x", "--rate-limit", "0"], "--rate-limit"),
        (["--name", "  "], "name"),
        ([], "--name"),
    ],
)
def test_create_refuses_bad_input(run, args, message):
    result = run("create", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert keys.list_keys() == []


def test_list(run):
    assert "No keys yet" in run("list").output
    first = create(run, "--name", "first")
    create(run, "--name", "second", "--expires", "2099-01-01T12:30:00+01:00")
    keys.revoke(first["key_id"])
    result = run("list")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].startswith("KEY ID")
    assert first["key_id"] in lines[1] and "revoked" in lines[1]
    assert "2099-01-01 11:30" in lines[2] and "active" in lines[2]
    assert first["api_key"] not in result.output
    listed = json.loads(run("list", "--json").stdout)
    assert [(k["name"], k["status"]) for k in listed] == [("first", "revoked"), ("second", "active")]
    assert listed[0]["prefix"] == first["api_key"][:12]
    assert "key_hash" not in listed[0] and "api_key" not in listed[0]


def test_revoke_and_enable(run):
    key_id = create(run, "--name", "k")["key_id"]
    result = run("revoke", key_id)
    assert result.exit_code == 0 and f"Revoked {key_id}" in result.output
    assert keys.key_status(keys.get_key(key_id)) == "revoked"
    assert json.loads(run("enable", key_id, "--json").stdout) == {"key_id": key_id, "status": "active"}
    assert json.loads(run("revoke", key_id, "--json").stdout) == {"key_id": key_id, "status": "revoked"}
    assert "Enabled" in run("enable", key_id).output
    actions = [e.action for e in audit.recent()]
    assert actions == ["key.enabled", "key.revoked", "key.enabled", "key.revoked", "key.created"]


@pytest.mark.parametrize("command", [["revoke"], ["enable"], ["rotate"], ["delete", "--yes"]])
def test_unknown_key_id(run, command):
    result = run(*command, "key_doesnotexist")
    assert result.exit_code == 1
    assert "no API key with id 'key_doesnotexist'" in result.output


def test_delete_asks_first(run):
    key_id = create(run, "--name", "k")["key_id"]
    result = run("delete", key_id, input="n\n")
    assert result.exit_code == 1 and "Aborted" in result.output
    assert keys.get_key(key_id)
    result = run("delete", key_id, input="y\n")
    assert result.exit_code == 0 and f"Deleted {key_id}" in result.output
    other = create(run, "--name", "other")["key_id"]
    assert json.loads(run("delete", other, "--yes", "--json").stdout) == {"key_id": other, "deleted": True}
    assert keys.list_keys() == []
    assert [e.action for e in audit.recent()] == ["key.deleted", "key.created", "key.deleted", "key.created"]


def test_rotate(run, db_path):
    first = create(run, "--name", "k")
    result = run("rotate", first["key_id"])
    assert result.exit_code == 0 and "only this once" in result.output
    plaintext = next(word for word in result.output.split() if word.startswith("pmg_"))
    assert keys.get_key(first["key_id"]).key_hash == keys.hash_key(plaintext)
    again = json.loads(run("rotate", first["key_id"], "--json").stdout)
    assert again["key_id"] == first["key_id"] and again["api_key"] not in (plaintext, first["api_key"])
    assert audit.recent(1)[0].detail == f"key_id={first['key_id']}"
    assert plaintext.encode() not in stored_bytes(db_path)


def test_import(run, tmp_path, db_path):
    path = tmp_path / "api_keys.json"
    secret = "pmg_from_the_seed_file_0123456789"
    entry = {"key_id": "key_seed", "api_key": secret, "name": "seed", "team": "a"}
    path.write_text(json.dumps({"keys": [entry]}))
    result = run("import", str(path))
    assert result.exit_code == 0, result.output
    assert "1 created, 0 skipped" in result.stdout
    assert "warning: " in result.stderr and "unknown field(s) 'team'" in result.stderr
    assert json.loads(run("import", str(path), "--json").stdout)["skipped"] == 1
    assert keys.get_key("key_seed").source == "cli", "an ordinary key: API_KEYS_FILE does not manage it"
    entry = audit.recent(1)[0]
    assert (entry.action, entry.detail, entry.client_addr) == (
        "key.created", "key_id=key_seed name='seed' from cli", "cli"
    )
    assert secret.encode() not in stored_bytes(db_path)


def test_import_bad_file(run, tmp_path):
    path = tmp_path / "api_keys.json"
    path.write_text(json.dumps({"keys": [{"key_id": "key_seed", "name": "no secret"}]}))
    result = run("import", str(path))
    assert result.exit_code == 1
    assert "entry 0 ('key_seed'): needs api_key (or key) or key_hash" in result.output
    assert run("import", str(tmp_path / "missing.json")).exit_code == 2
    assert audit.recent() == []


@pytest.fixture
def some_usage(run):
    key_id = create(run, "--name", "alice")["key_id"]
    today = datetime.now(UTC)
    usage.record_batch(
        [
            UsageRecord(
                today, key_id, "/v1/chat/completions", "gpt-oss-120b", 200, 21, 8, 0, 29, cost_eur=0.000145
            ),
            UsageRecord(today, key_id, "/v1/chat/completions", "gemma-3-27b", 500),
            UsageRecord(today - timedelta(days=40), key_id, "/v1/embeddings", "qwen3-embedding-4b", 200, 13),
        ]
    )
    return key_id


def test_usage_by_key_this_month(run, some_usage):
    result = run("usage")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith(some_usage))
    assert row.split()[1:5] == ["alice", "2", "1", "21"]
    assert "0.0001" in row
    assert any(line.startswith("TOTAL") for line in result.output.splitlines())


def test_usage_by_model_and_day_as_json(run, some_usage):
    since = (datetime.now(UTC) - timedelta(days=60)).date().isoformat()
    document = json.loads(run("usage", "--since", since, "--by", "model", "--json").stdout)
    assert document["by"] == "model" and document["since"] == since
    assert {r["model"]: r["requests"] for r in document["rows"]} == {
        "gpt-oss-120b": 1,
        "gemma-3-27b": 1,
        "qwen3-embedding-4b": 1,
    }
    assert document["totals"]["requests"] == 3 and document["totals"]["errors"] == 1
    days = json.loads(run("usage", "--since", since, "--by", "day", "--json").stdout)["rows"]
    assert len(days) == 2 and days[0]["day"] < days[1]["day"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "2026-13-01"], "--since"),
        (["--since", "2026-02-01", "--until", "2026-01-01"], "is after"),
        (["--by", "hour"], "--by"),
    ],
)
def test_usage_bad_input(run, args, message):
    result = run("usage", *args)
    assert result.exit_code == 2 and message in result.output


def test_database_url_from_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    # An unrelated bad variable must not stop key management.
    monkeypatch.setenv("LISTEN_PORT", "not a port")
    open_database(f"sqlite:///{tmp_path / 'data' / 'gateway.db'}")
    keys.create_key("in DATA_DIR")
    runner = CliRunner()
    assert "in DATA_DIR" in runner.invoke(cli, ["list"]).output
    url = f"sqlite:///{tmp_path / 'other.db'}"
    open_database(url)
    keys.create_key("in DATABASE_URL")
    assert "in DATABASE_URL" in runner.invoke(cli, ["list"], env={"DATABASE_URL": url}).output
    close_database()


@pytest.mark.parametrize("command", [["list"], ["usage"], ["create", "--name", "x"], ["revoke", "key_x"]])
def test_no_database_is_ever_created_where_no_gateway_runs(tmp_path, monkeypatch, command):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "elsewhere"))
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 1
    assert f"no database at {tmp_path / 'elsewhere' / 'gateway.db'}" in result.output
    assert "DATA_DIR" in result.output and "pmg_" not in result.output
    assert not (tmp_path / "elsewhere").exists()


def test_from_another_folder_it_looks_where_the_gateway_keeps_its_database(tmp_path):
    # Neither sets DATA_DIR: both use the data folder beside the code, not the current folder.
    env = {k: v for k, v in os.environ.items() if k not in ("DATA_DIR", "DATABASE_URL")}
    script = ROOT / "scripts" / "manage_keys.py"
    run = subprocess.run(
        [sys.executable, str(script), "list"], capture_output=True, text=True, timeout=30, cwd=tmp_path,
        env=env,
    )
    assert config.load({}).data_dir == ROOT / "data"
    assert not (tmp_path / "data").exists()
    if not (ROOT / "data" / "gateway.db").exists():  # a clean clone: refused, naming where it looked
        assert run.returncode == 1 and f"no database at {ROOT / 'data' / 'gateway.db'}" in run.stderr
    else:
        assert run.returncode == 0, run.stderr


def test_help_does_not_touch_the_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'never.db'}"
    result = CliRunner().invoke(cli, ["--database-url", url, "create", "--help"])
    assert result.exit_code == 0 and "--rate-limit" in result.output
    assert not (tmp_path / "never.db").exists()


def test_unusable_database_url(tmp_path):
    result = CliRunner().invoke(cli, ["--database-url", "postgres://db/gateway", "list"])
    assert result.exit_code == 1 and "cannot open the database" in result.output


def test_runs_as_a_script(tmp_path, db_path):
    url = f"sqlite:///{db_path}"
    script = ROOT / "scripts" / "manage_keys.py"
    run = subprocess.run(
        [sys.executable, str(script), "--database-url", url, "create", "--name", "s", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert set(json.loads(run.stdout)) == {"key_id", "api_key"}


def test_create_with_budget_models_and_token_limit(run):
    key_id = create(run, "--name", "capped", "--budget", "12.5", "--budget-period", "week",
                    "--models", "gpt-oss-120b, gemma-3-27b", "--tpm", "5000")["key_id"]
    key = keys.get_key(key_id)
    assert (key.budget_eur, key.budget_period, key.tpm) == (12.5, "week", 5000)
    assert keys.allowed_models(key) == ("gpt-oss-120b", "gemma-3-27b")
    (entry,) = audit.recent()
    assert entry.client_addr == "cli"
    assert entry.detail.endswith(
        "budget_eur=12.5 budget_period='week' models='[\"gpt-oss-120b\", \"gemma-3-27b\"]' tpm=5000"
    )
    # A budget without a period is a monthly one.
    assert keys.get_key(create(run, "--name", "monthly", "--budget", "3")["key_id"]).budget_period == "month"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "0"], "Invalid value for '--budget': a number of euros above 0"),
        (["--budget", "lots"], "'lots' is not a number"),
        (["--budget", "inf"], "a number of euros above 0"),
        (["--budget-period", "year"], "'year' is not one of 'day', 'week', 'month'"),
        (["--budget-period", "week"], "a period needs a budget: give --budget too"),
        (["--budget", "none", "--budget-period", "week"], "a period needs a budget"),
        (["--tpm", "0"], "Invalid value for '--tpm'"),
        (["--tpm", "1.5"], "'1.5' is not a whole number"),
        (["--models", "gpt oss"], "'gpt oss' is not a model name"),
        (["--models", " , "], "model ids separated by commas, or none"),
        (["--rate-limit", "ten"], "'ten' is not a whole number"),
    ],
)
def test_create_refuses_bad_limits(run, args, message):
    result = run("create", "--name", "x", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert keys.list_keys() == []


def test_update_changes_and_audits_only_what_differs(run):
    key_id = create(run, "--name", "k", "--budget", "5", "--budget-period", "week")["key_id"]
    result = run("update", key_id, "--budget", "5", "--tpm", "800", "--models", "gpt-oss-120b")
    assert result.exit_code == 0, result.output
    assert result.output == f"Updated {key_id}: models=gpt-oss-120b, tpm=800.\n"
    assert audit.recent(1)[0].detail == f"key_id={key_id} models='[\"gpt-oss-120b\"]' tpm=800"
    assert audit.recent(1)[0].client_addr == "cli"
    # The budget keeps its period when only the amount changes; the period alone can change too.
    run("update", key_id, "--budget", "7.5")
    run("update", key_id, "--budget-period", "day")
    key = keys.get_key(key_id)
    assert (key.budget_eur, key.budget_period) == (7.5, "day")
    assert run("update", key_id, "--name", "renamed").output == f"Updated {key_id}: name='renamed'.\n"


def test_update_clears_with_none(run):
    key_id = create(run, "--name", "k", "--budget", "5", "--models", "a,b", "--tpm", "9", "--rate-limit", "3",
                    "--expires", "2099-01-01")["key_id"]
    document = json.loads(run("update", key_id, "--budget", "none", "--models", "none", "--tpm", "NONE",
                              "--rate-limit", "none", "--expires", "none", "--json").stdout)
    key = keys.get_key(key_id)
    cleared = (key.budget_eur, key.budget_period, key.models, key.tpm, key.rate_limit, key.expires_at)
    assert cleared == (None,) * 6
    assert document["changed"] == ["expires_at", "rate_limit", "budget_eur", "budget_period", "models", "tpm"]
    assert (document["budget_eur"], document["models"], document["spend"]["period"]) == (None, [], "month")
    assert audit.recent(1)[0].detail == (
        f"key_id={key_id} expires_at=none rate_limit=none models=none tpm=none "
        "budget_eur=none budget_period=none"
    )


def test_update_with_the_same_values_writes_nothing(run):
    key_id = create(run, "--name", "k", "--tpm", "100")["key_id"]
    result = run("update", key_id, "--tpm", "100", "--name", "k")
    assert result.exit_code == 0 and "Nothing changed" in result.output
    assert [e.action for e in audit.recent()] == ["key.created"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ([], 2, "nothing to change"),
        (["--budget-period", "week"], 2, "the key has no budget: give --budget too"),
        (["--budget", "none", "--budget-period", "week"], 2, "--budget none clears the budget and its"),
        (["--tpm", "-1"], 2, "Invalid value for '--tpm'"),
        (["--name", "  "], 2, "name: must not be empty"),
        (["--expires", "2001-01-01"], 2, "already past"),
    ],
)
def test_update_refuses(run, args, code, message):
    key_id = create(run, "--name", "k")["key_id"]
    result = run("update", key_id, *args)
    assert (result.exit_code, message in result.output) == (code, True), result.output
    assert [e.action for e in audit.recent()] == ["key.created"]


def test_update_unknown_key(run):
    result = run("update", "key_doesnotexist", "--tpm", "5")
    assert result.exit_code == 1 and "no API key with id 'key_doesnotexist'" in result.output


def test_list_shows_limits_and_this_periods_spend(run):
    capped = create(run, "--name", "capped", "--budget", "2", "--budget-period", "week", "--models", "m1,m2",
                    "--tpm", "1500")["key_id"]
    plain = create(run, "--name", "plain")["key_id"]
    now = datetime.now(UTC)
    week = spend.period_at("week", now)
    chat = "/v1/chat/completions"
    usage.record_batch([
        UsageRecord(now, capped, chat, "m1", 200, cost_eur=0.25),
        UsageRecord(week.start - timedelta(seconds=1), capped, chat, "m1", 200, cost_eur=1.0),  # last week
        UsageRecord(now, plain, chat, "m1", 200, cost_eur=0.5),
    ])
    lines = run("list").output.splitlines()
    assert all(title in lines[0] for title in ("BUDGET EUR", "SPENT EUR", "MODELS", "TPM"))
    capped_line = next(line for line in lines if line.startswith(capped))
    plain_line = next(line for line in lines if line.startswith(plain))
    assert "2/week" in capped_line and "0.2500 this week" in capped_line
    assert "m1,m2" in capped_line and "1500" in capped_line
    assert "0.5000 this month" in plain_line and " all " in plain_line
    listed = {k["key_id"]: k for k in json.loads(run("list", "--json").stdout)}
    assert listed[capped]["spend"] == {
        "period": "week", "start": week.start.isoformat(), "end": week.end.isoformat(), "eur": 0.25,
    }
    assert (listed[capped]["budget_eur"], listed[capped]["models"], listed[capped]["tpm"]) == (
        2.0, ["m1", "m2"], 1500
    )
    assert (listed[plain]["budget_eur"], listed[plain]["models"], listed[plain]["spend"]["period"]) == (
        None, [], "month"
    )
    assert listed[plain]["spend"]["eur"] == 0.5


def test_update_runs_as_a_script(tmp_path, db_path):
    url = f"sqlite:///{db_path}"
    key, _ = keys.create_key("s")
    script = ROOT / "scripts" / "manage_keys.py"
    run = subprocess.run(
        [sys.executable, str(script), "--database-url", url, "update", key.key_id, "--budget", "9",
         "--budget-period", "day", "--json"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert (document["budget_eur"], document["budget_period"], document["changed"]) == (
        9.0, "day", ["budget_eur", "budget_period"]
    )
    assert (keys.get_key(key.key_id).budget_eur, audit.recent(1)[0].client_addr) == (9.0, "cli")

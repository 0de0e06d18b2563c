"""Keys as an operator expects them, through the real gateway and the real CLI.

A key works on its first request; API_KEYS_FILE never undoes a revocation or a rotation, not
even across a restart; a keys file that cannot be used stops start-up, and a bad edit while
running keeps the last good keys.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx
import pytest

from storage import audit, db
from tests import procs

CLI = [sys.executable, str(procs.ROOT / "scripts" / "manage_keys.py")]


def cli(gateway_or_url, *args: str) -> dict:
    url = gateway_or_url if isinstance(gateway_or_url, str) else gateway_or_url.database_url
    run = subprocess.run(
        [*CLI, "--database-url", url, *args, "--json"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def status(url: str, key: str) -> int:
    return httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=10).status_code


def test_a_key_works_on_the_very_first_request_after_create(gateway):
    # No wait, no retry: what the README's example does, ten times over.
    for n in range(10):
        created = cli(gateway, "create", "--name", f"first-request-{n}")
        assert status(gateway.url, created["api_key"]) == 200, f"attempt {n}"


def test_a_key_works_on_the_first_request_after_enable_and_rotate(gateway):
    created = cli(gateway, "create", "--name", "enable me")
    cli(gateway, "revoke", created["key_id"])
    # A revocation applies within the poll interval (a request never queries the database).
    procs.wait_until(lambda: status(gateway.url, created["api_key"]) == 401, timeout=5)
    cli(gateway, "enable", created["key_id"])
    assert status(gateway.url, created["api_key"]) == 200
    rotated = cli(gateway, "rotate", created["key_id"])
    assert status(gateway.url, rotated["api_key"]) == 200


def test_bad_keys_are_still_refused_when_many_arrive_at_once(gateway):
    # Each refusal waits for a fresh look at the database; concurrent ones share it.
    async def guesses() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            responses = await asyncio.gather(
                *[
                    client.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer pmg_guess{i}"})
                    for i in range(50)
                ]
            )
        return [r.status_code for r in responses]

    assert asyncio.run(guesses()) == [401] * 50
    assert status(gateway.url, cli(gateway, "create", "--name", "after the flood")["api_key"]) == 200


# -- API_KEYS_FILE --------------------------------------------------------------------------

FILE_KEY = {"key_id": "legacy", "api_key": "pm_legacy-secret-0123456789", "name": "from the old proxy"}


def write(path, *entries: dict) -> None:
    path.write_text(json.dumps({"keys": list(entries)}))


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


def start(data_dir, upstream, keys_file) -> procs.Proc:
    return procs.start_gateway(data_dir, upstream.port, API_KEYS_FILE=str(keys_file))


def gateway_url(proc: procs.Proc) -> str:
    return f"http://127.0.0.1:{proc.port}"


def test_a_revocation_and_a_rotation_survive_restarts_and_edits(upstream, data_dir, tmp_path):
    keys_file = tmp_path / "api_keys.json"
    other = {"key_id": "other", "api_key": "pm_other-secret-0123456789", "name": "other"}
    write(keys_file, FILE_KEY, other)
    url = f"sqlite:///{data_dir / 'gateway.db'}"
    proc = start(data_dir, upstream, keys_file)
    try:
        assert status(gateway_url(proc), FILE_KEY["api_key"]) == 200
        cli(url, "revoke", "legacy")
        new_secret = cli(url, "rotate", "other")["api_key"]
        assert status(gateway_url(proc), FILE_KEY["api_key"]) == 401
        assert status(gateway_url(proc), other["api_key"]) == 401
    finally:
        proc.stop()
    write(keys_file, {**FILE_KEY, "name": "renamed in the file"}, other)  # an edit, then a restart
    proc = start(data_dir, upstream, keys_file)
    try:
        assert status(gateway_url(proc), FILE_KEY["api_key"]) == 401, "the revocation came undone"
        assert status(gateway_url(proc), other["api_key"]) == 401, "the rotated-out secret works again"
        assert status(gateway_url(proc), new_secret) == 200, "the rotated key died"
    finally:
        proc.stop()


def test_a_key_removed_from_the_file_is_revoked_and_audited(upstream, data_dir, tmp_path):
    keys_file = tmp_path / "api_keys.json"
    write(keys_file, FILE_KEY)
    proc = start(data_dir, upstream, keys_file)
    try:
        assert status(gateway_url(proc), FILE_KEY["api_key"]) == 200
        write(keys_file, {"key_id": "new", "api_key": "pm_new-secret-0123456789"})
        procs.wait_until(lambda: status(gateway_url(proc), "pm_new-secret-0123456789") == 200)
        assert status(gateway_url(proc), FILE_KEY["api_key"]) == 401
        db.open_database(f"sqlite:///{data_dir / 'gateway.db'}")
        revoked = [e for e in audit.recent() if e.action == "key.revoked"]
        assert [(e.detail, e.client_addr) for e in revoked] == [
            ("key_id=legacy its entry left API_KEYS_FILE", "API_KEYS_FILE")
        ]
    finally:
        proc.stop()


def test_an_unknown_field_imports_the_key_and_names_the_field(upstream, data_dir, tmp_path):
    keys_file = tmp_path / "api_keys.json"
    write(keys_file, {**FILE_KEY, "owner": "team-a"})
    proc = start(data_dir, upstream, keys_file)
    try:
        assert status(gateway_url(proc), FILE_KEY["api_key"]) == 200
        assert "unknown field(s) 'owner' ignored" in proc.log()
    finally:
        proc.stop()


@pytest.mark.parametrize(
    ("content", "problem"),
    [("{not json", "not valid JSON"), ('{"keys": [{"key_id": "x"}]}', "needs api_key")],
)
def test_a_keys_file_that_cannot_be_used_stops_start_up_in_one_line(upstream, tmp_path, content, problem):
    keys_file = tmp_path / "api_keys.json"
    keys_file.write_text(content)
    last = procs.failed_start(tmp_path, upstream.port, API_KEYS_FILE=str(keys_file))
    assert last.startswith(f"gateway: configuration error: API_KEYS_FILE: {keys_file}") and problem in last


def test_a_keys_file_that_cannot_be_read_at_all_stops_start_up(upstream, tmp_path):
    keys_file = tmp_path / "api_keys.json"
    keys_file.mkdir()  # readable by nobody as a file, root included
    assert procs.failed_start(tmp_path, upstream.port, API_KEYS_FILE=str(keys_file)) == (
        f"gateway: configuration error: API_KEYS_FILE: {keys_file}: cannot read: Is a directory"
    )


def test_a_bad_edit_while_running_keeps_the_last_good_keys(upstream, data_dir, tmp_path):
    keys_file = tmp_path / "api_keys.json"
    write(keys_file, FILE_KEY)
    proc = start(data_dir, upstream, keys_file)
    try:
        assert status(gateway_url(proc), FILE_KEY["api_key"]) == 200
        keys_file.write_text('{"keys": [')  # an editor's half-written file
        procs.wait_until(lambda: "the last good keys stay in force" in proc.log())
        assert status(gateway_url(proc), FILE_KEY["api_key"]) == 200
        write(keys_file, {**FILE_KEY, "enabled": False})  # fixed: its edits apply again
        procs.wait_until(lambda: status(gateway_url(proc), FILE_KEY["api_key"]) == 401)
    finally:
        proc.stop()


def test_the_originals_api_keys_and_port_variables_work(upstream, tmp_path):
    port = procs.free_port()
    env = procs.gateway_env(
        tmp_path / "data", upstream.port, 0, procs.free_port(), API_KEYS="pm_env_a,pm_env_b"
    )
    del env["LISTEN_PORT"]
    env["PORT"] = str(port)
    proc = procs.Proc("gateway", [sys.executable, "-m", "addons"], env, tmp_path / "gw.log", port).start()
    try:
        proc.wait_port()
        assert status(gateway_url(proc), "pm_env_a") == 200
        assert status(gateway_url(proc), "pm_env_b") == 200
        assert status(gateway_url(proc), "pm_env_c") == 401
    finally:
        proc.stop()

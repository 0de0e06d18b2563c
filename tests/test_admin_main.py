"""`python -m admin`: refuses to start without a good password, serves on loopback, stops on SIGTERM."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from storage import admin_link, audit
from storage.db import close_database, open_database
from tests import procs
from tests.admin_helpers import PASSWORD

pytest_plugins = ("tests.admin_fixtures",)


def run_admin(tmp_path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "admin"], cwd=procs.ROOT, capture_output=True, text=True, timeout=30,
        env=procs.base_env(**{"DATA_DIR": str(tmp_path), "ADMIN_PORT": str(procs.free_port()), **env}),
    )


@pytest.mark.parametrize(
    "env, message",
    [
        ({}, "admin: ADMIN_PASSWORD is not set; the admin panel refuses to start without one"),
        ({"ADMIN_PASSWORD": "short-pw"}, "admin: ADMIN_PASSWORD is 8 characters long; use at least 12"),
        ({"ADMIN_PASSWORD": PASSWORD, "ADMIN_PORT": "eighty"}, "admin: ADMIN_PORT: expected a number"),
    ],
)
def test_refuses_to_start(tmp_path, env, message):
    result = run_admin(tmp_path, **env)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_create_app_refuses_a_short_password(settings):
    from dataclasses import replace

    from admin import create_app
    from admin.startup import StartupError

    with pytest.raises(StartupError, match="at least 12"):
        create_app(replace(settings, admin_password="x" * 11))
    with pytest.raises(StartupError, match="not set"):
        create_app(replace(settings, admin_password=None))


def listening_addresses(port: int) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if int(hex_port, 16) == port and state == "0A":  # LISTEN
                found.add(address)
    return found


def test_serves_on_loopback_only_and_stops_on_sigterm(tmp_path):
    port = procs.free_port()
    env = procs.base_env(DATA_DIR=str(tmp_path), ADMIN_PORT=str(port), ADMIN_PASSWORD=PASSWORD)
    proc = procs.Proc("admin", [sys.executable, "-m", "admin"], env, tmp_path / "admin.log", port)
    proc.start().wait_port()
    try:
        assert listening_addresses(port) == {"0100007F"}, "127.0.0.1 only"
        page = httpx.get(f"http://127.0.0.1:{port}/admin/login")
        assert page.status_code == 200 and "Log in" in page.text
        assert "server" not in page.headers
        # The gateway's X-Forwarded-* reach the app through waitress, believed with its secret only.
        shared = tmp_path / admin_link.FILE_NAME
        assert stat.S_IMODE(shared.stat().st_mode) == 0o600
        forwarded = {"X-Forwarded-For": "198.51.100.23", "X-Forwarded-Proto": "https"}
        for headers, secure in (({admin_link.HEADER: shared.read_text().strip(), **forwarded}, True),
                                (forwarded, False)):
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
            r = httpx.post(f"http://127.0.0.1:{port}/admin/login", cookies=page.cookies,
                           data={"csrf_token": token, "password": "not the password"}, headers=headers)
            assert r.status_code == 401
            assert ("Secure" in r.headers["set-cookie"]) is secure
        open_database(f"sqlite:///{tmp_path / 'gateway.db'}")
        try:
            assert [(e.action, e.client_addr) for e in audit.recent()] == [
                ("login.failed", "127.0.0.1"), ("login.failed", "198.51.100.23")]
        finally:
            close_database()
        secret = tmp_path / "admin_secret_key"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    finally:
        code = proc.stop()
    assert code == 0, proc.log()
    assert "Traceback" not in proc.log()

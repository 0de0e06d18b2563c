"""`make run` (scripts/run_local.sh) with real processes: the demo upstream dying is noticed.

Each test runs the real script in its own session, on free loopback ports and a temporary
DATA_DIR, and ends by signalling that whole session, so nothing it started outlives the test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests import procs

ROOT = procs.ROOT
RUN_LOCAL = ROOT / "scripts" / "run_local.sh"
# Hang guards only: a working script is done in a few seconds; these bound a broken one.
START_BOUND = 60
EXIT_BOUND = 60


def run_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The user's environment without any of the gateway's settings, plus free ports and `tmp`."""
    drop = ("PRIVATEMODE", "ADMIN_", "API_KEYS", "UPSTREAM_URL", "TLS_", "DATABASE_URL", "LISTEN_", "PORT",
            "DATA_DIR", "DEMO_UPSTREAM", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        DATA_DIR=str(tmp / "data"),
        LISTEN_PORT=str(procs.free_port()),
        ADMIN_PORT=str(procs.free_port()),
        DEMO_UPSTREAM_PORT=str(procs.free_port()),
        SHUTDOWN_TIMEOUT="5",
    )
    env.update(extra)
    return env


@dataclass
class RunLocal:
    """scripts/run_local.sh in a session of its own; stdout and stderr in separate files."""

    tmp: Path
    env: dict[str, str]
    popen: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return int(self.env["LISTEN_PORT"])

    @property
    def fake_log(self) -> str:
        return f"{self.env['DATA_DIR']}/fake-upstream.log"

    def start(self) -> RunLocal:
        with open(self.tmp / "stdout", "wb") as out, open(self.tmp / "stderr", "wb") as err:
            self.popen = subprocess.Popen(
                ["bash", str(RUN_LOCAL)], env=self.env, stdout=out, stderr=err,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        return self

    def stderr(self) -> str:
        return (self.tmp / "stderr").read_text(errors="replace")

    def output(self) -> str:
        return (self.tmp / "stdout").read_text(errors="replace") + self.stderr()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_BOUND
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"run_local.sh exited with {self.popen.returncode}:\n{self.output()}")
            try:
                if procs.health(self.port).status_code == 200:
                    return
            except httpx.HTTPError:  # not listening yet
                pass
            time.sleep(0.2)
        raise AssertionError(f"the gateway did not become healthy:\n{self.output()}")

    def wait(self) -> int:
        try:
            return self.popen.wait(EXIT_BOUND)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"run_local.sh still runs after {EXIT_BOUND} s:\n{self.output()}") from None

    def fake_pid(self) -> int:
        pids = procs.session_pids(self.popen.pid)
        pids = [p for p in pids if b"tests/fake_upstream.py" in procs.cmdline(p)]
        assert len(pids) == 1, f"demo upstream processes: {pids}\n{self.output()}"
        return pids[0]


@pytest.fixture
def run(tmp_path):
    started: list[RunLocal] = []

    def start(**extra: str) -> RunLocal:
        r = RunLocal(tmp_path, run_env(tmp_path, **extra)).start()
        started.append(r)
        return r

    yield start
    for r in started:
        procs.stop_session(r.popen)


def test_demo_upstream_that_cannot_start_is_reported(run):
    # Another process holds the demo upstream's port: the fake upstream cannot bind it.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        r = run(DEMO_UPSTREAM_PORT=str(holder.getsockname()[1]))
        status = r.wait()
    assert status != 0
    assert f"run: the demo upstream exited (status 1); see {r.fake_log}\n" in r.stderr()
    assert "address already in use" in Path(r.fake_log).read_text().lower()
    assert "started gateway" not in r.output(), "the gateway must not start without its upstream"
    assert procs.session_pids(r.popen.pid) == []


def test_demo_upstream_dying_later_stops_everything(run):
    r = run()
    r.wait_healthy()
    os.kill(r.fake_pid(), signal.SIGKILL)
    status = r.wait()
    assert status != 0
    assert f"run: the demo upstream exited (status 137); see {r.fake_log}\n" in r.stderr()
    assert "entrypoint: stopped" in r.stderr(), "the gateway and the admin are stopped, not left running"
    assert procs.session_pids(r.popen.pid) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_asked_for_stops_everything_quietly(run, signum):
    # Ctrl-C in a terminal and `kill -- -PGID` both signal the whole process group.
    r = run()
    r.wait_healthy()
    os.killpg(r.popen.pid, signum)
    assert r.wait() == 0, r.output()
    assert "demo upstream exited" not in r.stderr()
    assert procs.session_pids(r.popen.pid) == []


def test_a_gateway_that_cannot_start_stops_the_demo_upstream(run):
    r = run(LISTEN_PORT="not-a-port")
    assert r.wait() == 2
    assert "LISTEN_PORT" in r.stderr()
    assert procs.session_pids(r.popen.pid) == []



def test_shellcheck_is_clean():
    # shellcheck comes with requirements-dev.txt, beside this Python.
    shellcheck = Path(sys.executable).parent / "shellcheck"
    result = subprocess.run(
        [str(shellcheck), "--severity=info", str(RUN_LOCAL)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr

"""entrypoint.sh as the container runs it: settings checks, the three processes, signals, lint.

The real script runs under bash with a stub `privatemode-proxy` (tests/stubs/) first on PATH;
the stub records how it was started and then serves the fake upstream, so the admin and the
gateway started by the script really work through it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trustme

from storage import db, keys
from storage.models import Usage
from tests import procs

ROOT = procs.ROOT
ENTRYPOINT = ROOT / "entrypoint.sh"
STUBS = ROOT / "tests" / "stubs"
VENV_BIN = Path(sys.executable).parent
KEY = "pm-test-key-0123456789abcdef"
PASSWORD = "correct horse battery"


def entry_env(tmp: Path, *, stub: bool = True, **extra: str | None) -> dict[str, str]:
    """Everything the script needs to run here, on free loopback ports, inside `tmp`."""
    path = [str(VENV_BIN), os.environ.get("PATH", "/usr/bin:/bin")]
    if stub:
        path.insert(0, str(STUBS))
    env = procs.base_env(
        PATH=os.pathsep.join(path),
        PYTHON=sys.executable,
        DATA_DIR=str(tmp / "data"),
        LISTEN_HOST="127.0.0.1",
        LISTEN_PORT=str(procs.free_port()),
        ADMIN_PORT=str(procs.free_port()),
        PRIVATEMODE_PORT=str(procs.free_port()),
        API_KEYS_FILE=str(tmp / "api_keys.json"),
        STUB_RECORD=str(tmp / "stub.json"),
        PRIVATEMODE_API_KEY=KEY,
        ADMIN_PASSWORD=PASSWORD,
        SHUTDOWN_TIMEOUT="20",
    )
    for name in ("UPSTREAM_URL", "TLS_CERT_FILE", "TLS_KEY_FILE", "DATABASE_URL"):
        env.pop(name, None)
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


@dataclass
class Entrypoint:
    """entrypoint.sh running in its own session, with its output in a file."""

    tmp: Path
    env: dict[str, str]
    popen: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return int(self.env["LISTEN_PORT"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.tmp / "entrypoint.log"

    def start(self) -> Entrypoint:
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                ["bash", str(ENTRYPOINT)], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 60) -> None:
        def healthy():
            if self.popen.poll() is not None:
                raise AssertionError(f"entrypoint.sh exited with {self.popen.returncode}:\n{self.log()}")
            return procs.health(self.port).status_code == 200

        try:
            procs.wait_until(healthy, timeout, interval=0.2)
        except TimeoutError:
            raise AssertionError(f"the gateway did not become healthy:\n{self.log()}") from None

    def wait(self, timeout: float = 90) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"entrypoint.sh did not exit within {timeout} s:\n{self.log()}") from None

    def children(self) -> dict[str, int]:
        """The running children by role: privatemode-proxy, admin, gateway."""
        out = subprocess.run(
            ["ps", "-o", "pid=,args=", "--ppid", str(self.popen.pid)], capture_output=True, text=True
        ).stdout
        roles = {}
        for line in out.splitlines():
            pid, _, args = line.strip().partition(" ")
            if "fake_upstream.py" in args or "privatemode-proxy" in args:
                roles["privatemode-proxy"] = int(pid)
            elif args.endswith("-m admin"):
                roles["admin"] = int(pid)
            elif args.endswith("-m addons"):
                roles["gateway"] = int(pid)
        return roles

    def stub_record(self) -> dict:
        return json.loads(Path(self.env["STUB_RECORD"]).read_text())

    def kill(self) -> None:
        """Whatever is left, at the end of a test: the whole session."""
        if self.popen and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)


@pytest.fixture
def run(tmp_path):
    started: list[Entrypoint] = []

    def start(stub: bool = True, **env: str | None) -> Entrypoint:
        entry = Entrypoint(tmp_path, entry_env(tmp_path, stub=stub, **env)).start()
        started.append(entry)
        return entry

    yield start
    for entry in started:
        entry.kill()


def alive(pid: int) -> bool:
    """Still running. A zombie counts as ended: whoever inherited it reaps it, not the script."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def chat(url: str, api_key: str, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions", timeout=30,
        headers={"authorization": f"Bearer {api_key}", **headers},
        json={"model": "gpt-oss-120b", "messages": [{"role": "user", "content": "hi"}]},
    )


def healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess:
    """What the image's HEALTHCHECK runs."""
    return subprocess.run(["bash", str(ENTRYPOINT), "healthcheck"], env=env, capture_output=True, text=True)


def new_key(data_dir: Path) -> tuple[str, str]:
    db.open_database(f"sqlite:///{data_dir / 'gateway.db'}")
    key, plaintext = keys.create_key("entrypoint test")
    return key.key_id, plaintext


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "lines"),
    [
        ({"ADMIN_PASSWORD": None}, ["ADMIN_PASSWORD is not set"]),
        ({"ADMIN_PASSWORD": "short"}, ["ADMIN_PASSWORD is too short: 5 characters, at least 12"]),
        ({"PRIVATEMODE_API_KEY": None}, ["PRIVATEMODE_API_KEY is not set"]),
        (
            {"PRIVATEMODE_API_KEY": None, "ADMIN_PASSWORD": None, "TLS_CERT_FILE": "/nonexistent/cert.pem"},
            ["PRIVATEMODE_API_KEY is not set", "ADMIN_PASSWORD is not set", "TLS_KEY_FILE is not set",
             "TLS_CERT_FILE: cannot read /nonexistent/cert.pem"],
        ),
        (
            {"TLS_CERT_FILE": "/nonexistent/cert.pem", "TLS_KEY_FILE": "/nonexistent/key.pem"},
            ["TLS_CERT_FILE: cannot read /nonexistent/cert.pem",
             "TLS_KEY_FILE: cannot read /nonexistent/key.pem"],
        ),
        ({"ADMIN_PASSWORD": None, "ADMIN_PASSWORD_FILE": "/nonexistent/pw"},
         ["ADMIN_PASSWORD_FILE: cannot read /nonexistent/pw"]),
        ({"PRIVATEMODE_API_KEY_FILE": "/etc/hostname"}, ["PRIVATEMODE_API_KEY and PRIVATEMODE_API_KEY_FILE"]),
        ({"PRIVATEMODE_PORT": "80a"}, ["PRIVATEMODE_PORT: not a TCP port: 80a"]),
        ({"DATA_DIR": "/proc/version/data"}, ["DATA_DIR: /proc/version/data is not a folder"]),
        ({"RATE_LIMIT_REQUESTS": "0"}, ["RATE_LIMIT_REQUESTS: must be at least 1"]),
        ({"UPSTREAM_URL": "ftp://example"}, ["UPSTREAM_URL: expected http://host:port"]),
    ],
    ids=["no-password", "short-password", "no-key", "several", "tls-unreadable", "password-file",
         "key-twice", "port", "data-dir", "rate-limit", "upstream-url"],
)
def test_bad_settings_stop_before_anything_starts(run, env, lines):
    entry = run(**env)
    assert entry.wait(30) == 2
    errors = [line for line in entry.log().splitlines() if line.startswith("entrypoint: error: ")]
    assert len(errors) == len(lines), entry.log()
    for expected in lines:
        assert any(expected in line for line in errors), f"{expected!r} not in:\n{entry.log()}"
    assert "nothing started" in entry.log()
    assert "started" not in entry.log().replace("nothing started", "")
    assert not Path(entry.env["STUB_RECORD"]).exists()
    assert KEY not in entry.log()


def test_missing_privatemode_proxy_is_named(run):
    entry = run(stub=False)
    assert entry.wait(30) == 2
    assert "entrypoint: error: privatemode-proxy: not found on PATH" in entry.log()


# -- a full run ----------------------------------------------------------------------------


def test_privatemode_proxy_gets_the_key_as_a_private_file(run, tmp_path):
    log_file = tmp_path / "data" / "privatemode-proxy.log"
    log_file.parent.mkdir(parents=True)
    log_file.write_bytes(b"old line\n" * 200_000)  # 1.8 MB, above the 1 MB limit set below
    entry = run(PRIVATEMODE_LOG_MAX_MB="1")
    entry.wait_healthy()
    record = entry.stub_record()
    data = tmp_path / "data"

    assert record["argv"] == [
        "--apiKey", f"@{record['key_file']}", "--port", entry.env["PRIVATEMODE_PORT"],
        "--workspace", f"{data}/privatemode",
    ]
    assert record["key"] == KEY
    assert record["key_file_mode"] == 0o600 and record["key_dir_mode"] == 0o700
    assert "PRIVATEMODE_API_KEY" not in record["env_names"]
    assert "ADMIN_PASSWORD" not in record["env_names"]
    assert Path(record["key_file"]).exists()

    children = entry.children()
    assert set(children) == {"privatemode-proxy", "admin", "gateway"}, children
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert KEY not in ps
    for role in ("admin", "gateway"):
        environ = Path(f"/proc/{children[role]}/environ").read_bytes().split(b"\0")
        assert not [v for v in environ if KEY.encode() in v], f"the key is in the {role}'s environment"
        has_password = any(v == f"ADMIN_PASSWORD={PASSWORD}".encode() for v in environ)
        assert has_password == (role == "admin"), f"{role}: ADMIN_PASSWORD given: {has_password}"

    # privatemode-proxy's output goes to its log, where the admin reads attestation; the old
    # log moved aside because it was over the limit.
    assert "Validate succeeded" in log_file.read_text()
    assert "old line" not in log_file.read_text()
    assert (data / "privatemode-proxy.log.1").read_bytes().startswith(b"old line\n")

    # The gateway works through it, and the image's health check sees that.
    _, api_key = new_key(data)
    procs.wait_until(lambda: chat(entry.url, api_key).status_code == 200, timeout=10)
    check = healthcheck(entry.env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["status"] == "ok"

    entry.popen.send_signal(signal.SIGTERM)
    assert entry.wait() == 0, entry.log()
    assert not Path(record["key_file"]).parent.exists(), "the key file outlives the container"


def test_key_and_password_from_files(run, tmp_path):
    """With *_FILE, not even the entrypoint's own environment holds the secrets."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "key").write_text(KEY + "\n")
    (secrets / "password").write_text(PASSWORD + "\n")
    entry = run(
        PRIVATEMODE_API_KEY=None, ADMIN_PASSWORD=None,
        PRIVATEMODE_API_KEY_FILE=str(secrets / "key"), ADMIN_PASSWORD_FILE=str(secrets / "password"),
        PRIVATEMODE_KEY_DIR=str(tmp_path),
    )
    entry.wait_healthy()
    assert entry.stub_record()["key"] == KEY
    assert Path(entry.stub_record()["key_file"]).parent.parent == tmp_path
    fs_type = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout
    assert ("is not a tmpfs" in entry.log()) == (fs_type.strip() != "tmpfs")
    children = entry.children()
    for pid in (entry.popen.pid, *children.values()):
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert KEY.encode() not in environ
    admin_environ = Path(f"/proc/{children['admin']}/environ").read_bytes().split(b"\0")
    assert f"ADMIN_PASSWORD={PASSWORD}".encode() in admin_environ
    entry.popen.send_signal(signal.SIGTERM)
    assert entry.wait() == 0, entry.log()


# -- stopping ------------------------------------------------------------------------------


def test_sigterm_lets_the_gateway_finish_streams_and_flush_usage(run, tmp_path):
    (tmp_path / "data").mkdir()
    key_id, api_key = new_key(tmp_path / "data")
    entry = run()
    entry.wait_healthy()
    assert chat(entry.url, api_key).status_code == 200
    mine = Usage.key_id == key_id
    procs.wait_until(lambda: Usage.select().where(mine).count() == 1)
    before = Usage.select().where(mine).get().id
    children = entry.children()

    # A stream that is still running when SIGTERM arrives: 10 events, 300 ms apart.
    first_chunk = threading.Event()
    streamed: list[bytes] = []

    def stream():
        with httpx.stream(
            "POST", f"{entry.url}/v1/chat/completions", timeout=60,
            headers={"authorization": f"Bearer {api_key}"},
            params={"fake-scenario": "hold-stream", "fake-chunk-delay-ms": "300"},
            json={"model": "gpt-oss-120b", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        ) as r:
            for chunk in r.iter_bytes():
                streamed.append(chunk)
                first_chunk.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert first_chunk.wait(20), entry.log()
    # And a request answered just before the signal: its usage row is still queued.
    assert chat(entry.url, api_key).status_code == 200
    assert b"[DONE]" not in b"".join(streamed), "the stream must still run when the signal comes"
    entry.popen.send_signal(signal.SIGTERM)

    reader.join(60)
    assert entry.wait() == 0, entry.log()
    assert b"data: [DONE]" in b"".join(streamed), "the stream was cut off"
    rows = list(Usage.select().where(mine, Usage.id > before).order_by(Usage.id))
    assert len(rows) == 2, entry.log()
    assert sorted(r.streamed for r in rows) == [False, True]
    assert all(r.complete and r.status == 200 and r.total_tokens > 0 for r in rows)
    assert not [role for role, pid in children.items() if alive(pid)]
    log = entry.log()
    assert log.index("gateway stopped") < log.index("admin stopped") < log.index("privatemode-proxy stopped")


@pytest.mark.parametrize("victim", ["privatemode-proxy", "admin", "gateway"])
def test_a_child_that_dies_ends_the_others(run, victim):
    entry = run()
    entry.wait_healthy()
    children = entry.children()
    os.kill(children[victim], signal.SIGKILL)
    assert entry.wait() == 1, entry.log()
    assert f"{victim} exited by itself (status 137)" in entry.log()
    assert not [role for role, pid in children.items() if alive(pid)]


def test_privatemode_proxy_failing_at_start_starts_nothing_else(run):
    entry = run(STUB_FAIL="1")
    assert entry.wait() == 1
    log = entry.log()
    assert "privatemode-proxy exited during start" in log
    assert "stub: failing at start as asked" in log  # the tail of its log is shown
    assert "started admin" not in log and "started gateway" not in log


# -- without privatemode-proxy -------------------------------------------------------------


def test_other_upstream_runs_without_privatemode_proxy_and_over_tls(run, upstream, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("gateway.example", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    entry = run(
        UPSTREAM_URL=f"http://127.0.0.1:{upstream.port}", PRIVATEMODE_API_KEY=None,
        TLS_CERT_FILE=str(tmp_path / "cert.pem"), TLS_KEY_FILE=str(tmp_path / "key.pem"),
    )

    def healthy():
        assert entry.popen.poll() is None, entry.log()
        return httpx.get(f"https://127.0.0.1:{entry.port}/health", verify=False, timeout=5).status_code == 200

    procs.wait_until(healthy, timeout=60, interval=0.2)
    assert "privatemode-proxy is not started" in entry.log()
    assert not Path(entry.env["STUB_RECORD"]).exists()
    assert set(entry.children()) == {"admin", "gateway"}
    check = healthcheck(entry.env)
    assert check.returncode == 0, check.stdout + check.stderr

    entry.popen.send_signal(signal.SIGTERM)
    assert entry.wait() == 0, entry.log()


def test_healthcheck_fails_when_nothing_answers(tmp_path):
    env = entry_env(tmp_path, LISTEN_PORT=str(procs.free_port()))
    check = healthcheck(env)
    assert check.returncode == 1
    assert check.stdout.startswith("unhealthy:")


# -- lint ----------------------------------------------------------------------------------


def test_container_files_pass_shellcheck_and_hadolint():
    """Fails, never skips, when a linter is missing: both come from requirements-dev.txt."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "check_container.sh")], capture_output=True, text=True,
        env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_certbot_deploy_hook_places_the_renewed_files(tmp_path):
    lineage = tmp_path / "live" / "gw.example.com"
    lineage.mkdir(parents=True)
    (lineage / "fullchain.pem").write_text("chain v2\n")
    (lineage / "privkey.pem").write_text("key v2\n")
    certs = tmp_path / "certs"
    env = {**os.environ, "RENEWED_LINEAGE": str(lineage), "GATEWAY_CERT_DIR": str(certs),
           "GATEWAY_UID": str(os.getuid())}
    hook = ROOT / "docs" / "certbot-deploy-hook.sh"
    result = subprocess.run(["bash", str(hook)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (certs / "fullchain.pem").read_text() == "chain v2\n"
    assert (certs / "privkey.pem").read_text() == "key v2\n"
    assert (certs / "privkey.pem").stat().st_mode & 0o777 == 0o400
    assert sorted(p.name for p in certs.iterdir()) == ["fullchain.pem", "privkey.pem"]
    skipped = subprocess.run(["bash", str(hook)], env={**env, "GATEWAY_DOMAIN": "other.example.com"})
    assert skipped.returncode == 0

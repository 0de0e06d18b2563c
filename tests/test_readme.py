"""The README the way a user gets it: a copy of the repository alone in an empty folder.

The copy holds the working-tree versions of the tracked files and of the untracked ones git
does not ignore (`git archive HEAD` would miss uncommitted work), nothing beside it, and a
symlink to this project's .venv so that `make run`'s setup step finds it up to date instead of
installing. `make run` runs there in the background on free ports (LISTEN_PORT, ADMIN_PORT and
DEMO_UPSTREAM_PORT, which scripts/run_local.sh and entrypoint.sh honour), and the README's own
example blocks, read from the copy's README.md, run against it with `bash -euo pipefail`.

The README's examples name the default ports (the gateway's 8080, the demo upstream's 9081,
mitmweb's 8090 and 8091): the copy's examples run with each replaced by the free port chosen
here, and with nothing else changed unless said so below.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests import procs

ROOT = procs.ROOT
# Hang guards only: each step takes seconds when all is well.
START_BOUND = 60
EXAMPLE_BOUND = 60
USAGE_BOUND = 10
# What make run holds by default (gateway, admin, demo upstream), and mitmweb's page by default.
MAKE_RUN_PORTS = {8080, 8082, 9081}
MITMWEB_WEB_PORT = 8081
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def bash_block(readme: str, *needles: str) -> str:
    """The one ```bash block of the README that holds every needle."""
    blocks = [b for b in BASH_BLOCK.findall(readme) if all(n in b for n in needles)]
    assert len(blocks) == 1, f"README.md: {len(blocks)} bash blocks hold {needles}"
    return blocks[0]


def with_port(block: str, default: int, port: int) -> str:
    assert f"127.0.0.1:{default}" in block or f"={default}" in block, f"no port {default} in:\n{block}"
    return re.sub(rf"(?<=127\.0\.0\.1:){default}\b|(?<==){default}\b", str(port), block)


def copy_repository(target: Path) -> None:
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, names):
        if name.split("/")[0] == ".venv":
            continue  # a .venv that is a symlink escapes the ignore rule `.venv/`; linked below
        source = ROOT / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree, not yet in git
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name, follow_symlinks=False)


def user_env(**ports: str) -> dict[str, str]:
    """A user's shell: none of the gateway's settings, no make or Python state of ours."""
    drop = ("PRIVATEMODE", "ADMIN_", "API_KEYS", "UPSTREAM_URL", "TLS_", "DATABASE_URL", "LISTEN_", "PORT",
            "DATA_DIR", "DEMO_UPSTREAM", "PYTHON", "VIRTUAL_ENV", "MAKE", "MFLAGS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(ports)
    return env


@dataclass
class Clone:
    root: Path
    env: dict[str, str]
    popen: subprocess.Popen | None = field(default=None, repr=False)

    def port(self, name: str) -> int:
        return int(self.env[name])

    def output(self) -> str:
        return (self.root.parent / "make-run.log").read_text(errors="replace")

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_BOUND
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"make run exited with {self.popen.returncode}:\n{self.output()}")
            try:
                if procs.health(self.port("LISTEN_PORT")).status_code == 200:
                    return
            except httpx.HTTPError:  # not listening yet
                pass
            time.sleep(0.2)
        raise AssertionError(f"make run's gateway did not become healthy:\n{self.output()}")

    def run_block(self, block: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block], cwd=self.root, env=self.env,
            capture_output=True, text=True, timeout=EXAMPLE_BOUND,
        )


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    # The copy's folder holds only make run's output beside it: nothing outside the copy to lean on.
    root = tmp_path_factory.mktemp("user") / "privatemode-gateway"
    root.mkdir()
    copy_repository(root)
    requirements = (root / "requirements.txt").read_bytes() + (root / "requirements-dev.txt").read_bytes()
    stamp = (ROOT / ".venv" / ".requirements.sha256").read_text().strip()
    if stamp != hashlib.sha256(requirements).hexdigest():
        pytest.fail("the project's .venv is not up to date with the requirements (run `make setup`): "
                    "make run in the copy would install into it through the symlink")
    (root / ".venv").symlink_to(ROOT / ".venv")

    env = user_env(
        LISTEN_PORT=str(procs.free_port()),
        ADMIN_PORT=str(procs.free_port()),
        DEMO_UPSTREAM_PORT=str(procs.free_port()),
    )
    c = Clone(root, env)
    with open(root.parent / "make-run.log", "wb") as log:
        c.popen = subprocess.Popen(
            ["make", "run"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    try:
        c.wait_healthy()
        yield c
    finally:
        # SIGTERM to make run's whole process group, SIGKILL to what is left after a bound.
        procs.stop_session(c.popen)


def usage_row(table: str, model: str) -> dict[str, str] | None:
    """The row of `model` in manage_keys.py's usage table, by column header; None without one."""
    lines = table.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["MODEL"])
    names = lines[header].split()
    rows = [line.split() for line in lines[header + 1 :] if line.split()[:1] == [model]]
    assert len(rows) <= 1, table
    return dict(zip(names, rows[0], strict=False)) if rows else None


def test_the_readme_example_works_in_a_fresh_copy(clone):
    readme = (clone.root / "README.md").read_text()
    block = bash_block(readme, "manage_keys.py create", "/v1/chat/completions", "manage_keys.py usage")
    result = clone.run_block(with_port(block, 8080, clone.port("LISTEN_PORT")))
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\nmake run:\n{clone.output()}"

    # curl printed the chat completion (an error would be an {"error": ...} body) ...
    start = result.stdout.index("{")
    answer, end = json.JSONDecoder().raw_decode(result.stdout, start)
    assert answer.get("object") == "chat.completion", result.stdout
    assert answer["choices"][0]["message"]["content"]
    # ... and the usage command lists that one request, without an error, with its tokens. The
    # gateway writes usage in batches a fraction of a second after the answer, as the README
    # says: when the block's own usage command came too soon, that command alone runs again.
    table = result.stdout[end:]
    usage_command = next(line for line in block.splitlines() if "manage_keys.py usage" in line)
    deadline = time.monotonic() + USAGE_BOUND
    while usage_row(table, "gpt-oss-120b") is None and time.monotonic() < deadline:
        time.sleep(0.2)
        again = clone.run_block(usage_command)
        assert again.returncode == 0, again.stderr
        table = again.stdout
    row = usage_row(table, "gpt-oss-120b")
    assert row is not None, f"usage does not list the request:\n{table}"
    assert (row["REQUESTS"], row["ERRORS"], row["PROMPT"], row["COMPLETION"]) == ("1", "0", "21", "8"), table


def test_the_readme_mitmweb_command_works_beside_make_run(clone, tmp_path):
    readme = (clone.root / "README.md").read_text()
    block = bash_block(readme, ".venv/bin/mitmweb")
    # The README's own ports must not clash with those make run holds on a user's machine.
    readme_listen = int(re.search(r"@127\.0\.0\.1:(\d+)", block).group(1))
    found = re.search(r"web_port=(\d+)", block)
    readme_web = int(found.group(1)) if found else MITMWEB_WEB_PORT
    assert not {readme_listen, readme_web} & MAKE_RUN_PORTS, (readme_listen, readme_web, block)
    listen, web = procs.free_port(), procs.free_port()
    block = with_port(block, 9081, clone.port("DEMO_UPSTREAM_PORT"))
    block = with_port(with_port(block, readme_listen, listen), readme_web, web)
    # Not a change to what it does: no browser window opens during a test run.
    block = block.replace(" -s addons/gateway.py", " --set web_open_browser=false -s addons/gateway.py")
    # A second shell of the same user: make run's ports are not set there, but its admin, on 8082
    # for a user (the default the README relies on), is on a free port here.
    env = {k: v for k, v in clone.env.items() if k not in ("LISTEN_PORT", "DEMO_UPSTREAM_PORT")}
    log_path = tmp_path / "mitmweb.log"
    with open(log_path, "wb") as log:
        mitmweb = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", block], cwd=clone.root, env=env, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_BOUND
        answer = None
        # Under mitmweb the proxy may answer before the addon's first health probe (checked_at 0):
        # /health then says 503 for a moment, and the probe decides within seconds.
        while (answer is None or answer.json().get("checked_at") == 0) and time.monotonic() < deadline:
            if mitmweb.poll() is not None:
                raise AssertionError(f"mitmweb exited with {mitmweb.returncode}:\n{log_path.read_text()}")
            try:
                answer = procs.health(listen)
            except httpx.HTTPError:  # not listening yet
                pass
            time.sleep(0.2)
        assert answer is not None, f"mitmweb does not listen on {listen}:\n{log_path.read_text()}"
        # The gateway addon answers /health itself (the demo upstream has no such route).
        assert answer.status_code == 200, answer.text
        assert set(answer.json()) >= {"status", "upstream", "database"}
        assert httpx.get(f"http://127.0.0.1:{web}/", timeout=5).status_code in (200, 403)
        # The keys are make run's: one made with the CLI works through mitmweb too.
        created = clone.run_block(".venv/bin/python scripts/manage_keys.py create --name mitmweb --json")
        assert created.returncode == 0, created.stderr
        chat = httpx.post(
            f"http://127.0.0.1:{listen}/v1/chat/completions",
            headers={"Authorization": f"Bearer {json.loads(created.stdout)['api_key']}"},
            json={"model": "gpt-oss-120b", "messages": [{"role": "user", "content": "Hello"}]},
            timeout=10,
        )
        assert chat.status_code == 200, chat.text
        assert chat.json()["object"] == "chat.completion"
        # make run is unharmed: its gateway still answers, and nothing of it exited.
        assert procs.health(clone.port("LISTEN_PORT")).status_code == 200
        assert clone.popen.poll() is None, clone.output()
    finally:
        procs.stop_session(mitmweb, timeout=20)

"""Start our real processes (fake upstream, gateway, admin) on loopback for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "tests" / "samples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], object], timeout: float = 10.0, interval: float = 0.05):
    """Poll `check` until it returns something truthy; return that, or raise after `timeout`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception as e:  # the thing polled is not ready yet
            last_error = e
        else:
            if result:
                return result
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout} s (last error: {last_error!r})")


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    port: int
    popen: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> Proc:
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            self.args,
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_port(self, timeout: float = 15.0) -> Proc:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not listen on {self.port}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.popen is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            return self.popen.wait(5)
        finally:
            self._log.close()


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRIVATEMODE", "ADMIN_", "API_KEYS"))}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def start_fake_upstream(tmp: Path, port: int | None = None) -> Proc:
    port = port or free_port()
    args = [sys.executable, str(ROOT / "tests" / "fake_upstream.py"), "--port", str(port)]
    return (
        Proc("fake upstream", args, base_env(), tmp / f"fake-upstream-{port}.log", port).start().wait_port()
    )


def gateway_env(data_dir: Path, upstream_port: int, listen_port: int, admin_port: int, **extra: str) -> dict:
    env = {
        "DATA_DIR": str(data_dir),
        "UPSTREAM_URL": f"http://127.0.0.1:{upstream_port}",
        "LISTEN_HOST": "127.0.0.1",
        "LISTEN_PORT": str(listen_port),
        "ADMIN_PORT": str(admin_port),
        "API_KEYS_FILE": str(data_dir / "api_keys.json"),
    }
    return base_env(**{**env, **extra})


def start_gateway(data_dir: Path, upstream_port: int, admin_port: int | None = None, **extra: str) -> Proc:
    data_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        port = free_port()
        env = gateway_env(data_dir, upstream_port, port, admin_port or free_port(), **extra)
        proc = Proc("gateway", [sys.executable, "-m", "addons"], env, data_dir / "gateway.log", port)
        try:
            return proc.start().wait_port()
        except RuntimeError:
            # Another process took the free port between our check and the gateway's bind.
            if attempt == 2 or "in use" not in proc.log():
                raise
            proc.stop()
    raise AssertionError("unreachable")


def health(port: int, scheme: str = "http", **kwargs) -> httpx.Response:
    return httpx.get(f"{scheme}://127.0.0.1:{port}/health", timeout=5, **kwargs)


def session_pids(sid: int) -> list[int]:
    """The processes still running in session `sid` (a Popen started with start_new_session)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it ended while we looked
            continue
        # Fields after the command name, which may hold spaces: state ppid pgrp session ...
        fields = stat.rpartition(")")[2].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def stop_session(popen: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGTERM to the whole session's process group, SIGKILL to what is left after `timeout`."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(popen.pid, signum)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while session_pids(popen.pid) and time.monotonic() < deadline:
            popen.poll()
            time.sleep(0.1)
        if not session_pids(popen.pid):
            break
    try:
        popen.wait(5)
    except subprocess.TimeoutExpired:
        pass


def failed_start(folder: Path, upstream_port: int, **extra: str) -> str:
    """Start a gateway that must refuse to start: check it exits 2, and return its last log line."""
    env = gateway_env(folder / "data", upstream_port, free_port(), free_port(), **extra)
    proc = Proc("gateway", [sys.executable, "-m", "addons"], env, folder / "refused-gateway.log", 0).start()
    try:
        assert proc.popen.wait(30) == 2, proc.log()
        assert "Traceback" not in proc.log(), proc.log()
        return proc.log().strip().splitlines()[-1]
    finally:
        proc.stop()

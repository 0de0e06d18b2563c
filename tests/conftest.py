"""Shared fixtures: a fake upstream process, gateway processes, and their database."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from storage import db, keys
from storage.models import Usage
from tests import procs


@pytest.fixture
def db_path(tmp_path):
    """A fresh database of our own in the test's folder, opened for this process."""
    path = tmp_path / "gateway.db"
    db.open_database(f"sqlite:///{path}")
    yield path
    db.close_database()


@pytest.fixture(scope="session")
def upstream(tmp_path_factory):
    proc = procs.start_fake_upstream(tmp_path_factory.mktemp("upstream"))
    yield proc
    proc.stop()


@dataclass
class Gateway:
    """A running gateway process and the database it shares with the test."""

    proc: procs.Proc
    data_dir: Path
    upstream_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proc.port}"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'gateway.db'}"

    def use_database(self) -> None:
        db.open_database(self.database_url)

    def new_key(self, name: str = "test", **kwargs) -> tuple[str, str]:
        """Create a key through storage and wait until the gateway accepts it: (key_id, plaintext)."""
        self.use_database()
        key, plaintext = keys.create_key(name, **kwargs)
        self.wait_for_key(plaintext)
        # The probe made a usage row; remove it so tests see only their own requests.
        self.usage_rows(key.key_id)
        Usage.delete().where(Usage.key_id == key.key_id).execute()
        return key.key_id, plaintext

    def wait_for_key(self, plaintext: str, accepted: bool = True) -> None:
        def settled():
            r = httpx.get(f"{self.url}/v1/models", headers={"authorization": f"Bearer {plaintext}"})
            return (r.status_code == 200) == accepted

        procs.wait_until(settled, timeout=10)  # within a second, but CI machines can be busy

    def usage_rows(self, key_id: str, count: int = 1, timeout: float = 10.0) -> list[Usage]:
        """The key's usage rows, oldest first, once at least `count` are written."""
        self.use_database()

        def written():
            rows = list(Usage.select().where(Usage.key_id == key_id).order_by(Usage.id))
            return rows if len(rows) >= count else None

        return procs.wait_until(written, timeout)

    def upstream_requests(self) -> list[dict]:
        return httpx.get(f"http://127.0.0.1:{self.upstream_port}/_fake/requests").json()

    def stop(self) -> int | None:
        return self.proc.stop()


@pytest.fixture(scope="module")
def start_gateway(upstream, tmp_path_factory):
    """Start gateways with extra environment; each is stopped at the end of the module."""
    started: list[Gateway] = []

    def start(upstream_port: int | None = None, **env: str) -> Gateway:
        data_dir = tmp_path_factory.mktemp("gateway")
        port = upstream_port or upstream.port
        gateway = Gateway(procs.start_gateway(data_dir, port, **env), data_dir, port)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="module")
def gateway(start_gateway) -> Gateway:
    """One gateway per test module, with limits wide enough not to interfere."""
    return start_gateway(
        RATE_LIMIT_REQUESTS="100000",
        RATE_LIMIT_WINDOW="3600",
        GLOBAL_RATE_LIMIT_REQUESTS="100000",
        IP_RATE_LIMIT_REQUESTS="100000",
        MAX_BODY_MB="2",
    )


@pytest.fixture
def api_key(gateway) -> tuple[str, str]:
    return gateway.new_key()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A private CA for a TLS gateway (a module may define its own)."""
    return trustme.CA()


@pytest.fixture(scope="module")
def certificate(ca, tmp_path_factory) -> dict[str, str]:
    """TLS_CERT_FILE and TLS_KEY_FILE for localhost and 127.0.0.1, signed by `ca`."""
    folder = tmp_path_factory.mktemp("certs")
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file = folder / "fullchain.pem", folder / "privkey.pem"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_file.write_bytes(cert.private_key_pem.bytes())
    return {"TLS_CERT_FILE": str(cert_file), "TLS_KEY_FILE": str(key_file)}

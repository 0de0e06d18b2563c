"""HTTPS with the operator's certificate: forced HTTPS, HTTP/2 concurrency, renewal without restart."""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
from pathlib import Path

import httpx
import pytest
import trustme

from storage import keys
from tests import procs


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def write_certificate(ca: trustme.CA, folder) -> tuple[str, str]:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file = folder / "fullchain.pem", folder / "privkey.pem"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_file.write_bytes(cert.private_key_pem.bytes())
    return str(cert_file), str(key_file)


@pytest.fixture(scope="module")
def tls_gateway(start_gateway, ca, tmp_path_factory):
    cert_file, key_file = write_certificate(ca, tmp_path_factory.mktemp("certs"))
    gateway = start_gateway(TLS_CERT_FILE=cert_file, TLS_KEY_FILE=key_file, RATE_LIMIT_REQUESTS="100000")
    gateway.cert_file, gateway.key_file = cert_file, key_file
    return gateway


def https(gateway) -> str:
    return f"https://localhost:{gateway.proc.port}"


class PreferHttp2(ssl.SSLContext):
    """httpx offers ALPN as [http/1.1, h2] and mitmproxy honours the client's order: ask for h2 first."""

    def set_alpn_protocols(self, protocols):
        super().set_alpn_protocols(["h2", "http/1.1"])


def _ctx(ca: trustme.CA, http2: bool = False) -> ssl.SSLContext:
    context = PreferHttp2(ssl.PROTOCOL_TLS_CLIENT) if http2 else ssl.create_default_context()
    ca.configure_trust(context)
    return context


def test_https_with_the_operators_certificate(tls_gateway, ca):
    r = httpx.get(f"{https(tls_gateway)}/health", verify=_ctx(ca))
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_plain_http_is_refused_when_tls_is_on(tls_gateway):
    r = httpx.get(
        f"http://127.0.0.1:{tls_gateway.proc.port}/v1/models", headers={"authorization": "Bearer x"}
    )
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "https_required" and r.json()["error"]["message"] == "HTTPS required."


def test_the_key_bundle_is_private(tls_gateway):
    folder = tls_gateway.data_dir / ".tls"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    bundles = list(folder.glob("*.pem"))
    assert len(bundles) == 1 and stat.S_IMODE(bundles[0].stat().st_mode) == 0o600


def test_twenty_concurrent_streams_on_one_http2_connection_all_progress(tls_gateway, ca):
    """mitmproxy alone lets 5 upstream connections per client connection; the gateway lifts that."""
    procs.wait_until(lambda: httpx.get(f"{https(tls_gateway)}/health", verify=_ctx(ca)).status_code == 200)
    key = _key(tls_gateway, ca)
    upstream = f"http://127.0.0.1:{tls_gateway.upstream_port}"
    httpx.post(f"{upstream}/_fake/reset")
    headers = {"authorization": f"Bearer {key}"}
    fake = {"fake-scenario": "hold-stream", "fake-chunk-delay-ms": "150"}
    body = {"model": "gpt-oss-120b", "messages": [], "stream": True}

    async def twenty() -> tuple[set[str], list[int]]:
        async with httpx.AsyncClient(http2=True, verify=_ctx(ca, http2=True), timeout=60) as client:
            responses = await asyncio.gather(
                *[
                    client.post(
                        f"{https(tls_gateway)}/v1/chat/completions", headers=headers, params=fake, json=body
                    )
                    for _ in range(20)
                ]
            )
        return {r.http_version for r in responses}, [r.status_code for r in responses]

    versions, statuses = asyncio.run(twenty())
    assert versions == {"HTTP/2"} and statuses == [200] * 20
    stats = httpx.get(f"{upstream}/_fake/stats").json()
    assert stats["max_in_flight"] >= 20, stats  # all twenty at once (plus, maybe, a health probe)


def _key(gateway, ca) -> str:
    gateway.use_database()
    _, plaintext = keys.create_key("tls")
    procs.wait_until(
        lambda: (
            httpx.get(
                f"{https(gateway)}/v1/models",
                verify=_ctx(ca),
                headers={"authorization": f"Bearer {plaintext}"},
            ).status_code
            == 200
        )
    )
    return plaintext


def test_renewed_certificate_is_served_without_restart(tls_gateway, tmp_path):
    renewed_ca = trustme.CA()
    cert_file, key_file = write_certificate(renewed_ca, tmp_path)
    # certbot's deploy hook copies the renewed files over the mounted ones.
    os.replace(cert_file, tls_gateway.cert_file)
    os.replace(key_file, tls_gateway.key_file)
    leaf = ssl.PEM_cert_to_DER_cert(
        Path(tls_gateway.cert_file).read_text().split("-----END CERTIFICATE-----")[0]
        + "-----END CERTIFICATE-----\n"
    )

    def served() -> bool:
        return (
            ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", tls_gateway.proc.port))) == leaf
        )

    procs.wait_until(served, timeout=60, interval=0.5)
    r = httpx.get(f"{https(tls_gateway)}/health", verify=_ctx(renewed_ca))
    assert r.status_code == 200
    assert tls_gateway.proc.popen.poll() is None, "no restart"

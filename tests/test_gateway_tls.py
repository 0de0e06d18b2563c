"""HTTPS with the operator's certificate: forced HTTPS, HTTP/2 concurrency, renewal without restart."""

from __future__ import annotations

import asyncio
import os
import socket
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


def served_leaf(gateway) -> bytes:
    return ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", gateway.proc.port)))


def leaf_of(cert_file) -> bytes:
    pem = Path(cert_file).read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    return ssl.PEM_cert_to_DER_cert(pem)


def test_a_half_done_renewal_keeps_the_current_certificate(start_gateway, tmp_path):
    first_ca = trustme.CA()
    cert_file, key_file = write_certificate(first_ca, tmp_path)
    gateway = start_gateway(TLS_CERT_FILE=cert_file, TLS_KEY_FILE=key_file)
    current = leaf_of(cert_file)
    procs.wait_until(lambda: served_leaf(gateway) == current)
    # The renewal's first rename: a new chain, but still the old key.
    renewed_ca = trustme.CA()
    (tmp_path / "new").mkdir()
    new_cert, new_key = write_certificate(renewed_ca, tmp_path / "new")
    os.replace(new_cert, cert_file)
    procs.wait_until(
        lambda: "the new TLS certificate is not served" in gateway.proc.log(), timeout=60, interval=0.5
    )
    assert served_leaf(gateway) == current, "not mitmproxy's own certificate, not a broken pair"
    assert "mitmproxy" not in ssl.get_server_certificate(("127.0.0.1", gateway.proc.port))
    # The second rename completes the pair: now it is served.
    os.replace(new_key, key_file)
    procs.wait_until(lambda: served_leaf(gateway) == leaf_of(cert_file), timeout=60, interval=0.5)
    r = httpx.get(f"{https(gateway)}/health", verify=_ctx(renewed_ca))
    assert r.status_code == 200


def test_a_pair_that_does_not_match_stops_start_up(upstream, tmp_path):
    cert_file, _ = write_certificate(trustme.CA(), tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = write_certificate(trustme.CA(), other)
    assert procs.failed_start(tmp_path, upstream.port, TLS_CERT_FILE=cert_file, TLS_KEY_FILE=other_key) == (
        "gateway: configuration error: TLS_CERT_FILE, TLS_KEY_FILE: "
        "the private key does not belong to the first certificate"
    )


def test_hsts_on_every_answer_over_tls_and_never_over_plain_http(start_gateway, tmp_path):
    # A gateway of its own: the renewal test above swaps tls_gateway's certificate.
    ca = trustme.CA()
    cert_file, key_file = write_certificate(ca, tmp_path)
    tls_gateway = start_gateway(TLS_CERT_FILE=cert_file, TLS_KEY_FILE=key_file)
    key = _key(tls_gateway, ca)
    ok = httpx.get(f"{https(tls_gateway)}/health", verify=_ctx(ca))
    refused = httpx.get(f"{https(tls_gateway)}/v1/models", verify=_ctx(ca))
    forwarded = httpx.get(
        f"{https(tls_gateway)}/v1/models", verify=_ctx(ca), headers={"authorization": f"Bearer {key}"}
    )
    streamed = httpx.post(
        f"{https(tls_gateway)}/v1/chat/completions",
        verify=_ctx(ca),
        headers={"authorization": f"Bearer {key}"},
        json={"model": "gpt-oss-120b", "messages": [], "stream": True},
    )
    assert [r.status_code for r in (ok, refused, forwarded, streamed)] == [200, 401, 200, 200]
    for r in (ok, refused, forwarded, streamed):
        assert r.headers["strict-transport-security"] == "max-age=31536000", r
    plain = start_gateway()
    assert "strict-transport-security" not in httpx.get(f"{plain.url}/health").headers


@pytest.fixture(scope="module")
def rsa_gateway(start_gateway, tmp_path_factory):
    """An RSA certificate: the suites refused below would otherwise fail for want of an RSA key."""
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    cert = ca.issue_cert("localhost", key_type=trustme.KeyType.RSA)
    folder = tmp_path_factory.mktemp("rsa")
    cert.private_key_pem.write_to_path(folder / "privkey.pem")
    (folder / "fullchain.pem").write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    gateway = start_gateway(
        TLS_CERT_FILE=str(folder / "fullchain.pem"), TLS_KEY_FILE=str(folder / "privkey.pem")
    )
    return gateway, ca


@pytest.mark.parametrize(
    ("cipher", "accepted"),
    [
        ("ECDHE-RSA-AES128-GCM-SHA256", True),
        ("ECDHE-RSA-CHACHA20-POLY1305", True),
        ("AES128-GCM-SHA256", False),  # no forward secrecy
        ("ECDHE-RSA-AES128-SHA", False),  # CBC
        ("AES128-SHA", False),
    ],
)
def test_tls12_offers_only_forward_secret_aead_suites(rsa_gateway, cipher, accepted):
    gateway, ca = rsa_gateway
    context = _ctx(ca)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(cipher)
    with socket.create_connection(("127.0.0.1", gateway.proc.port), timeout=10) as raw:
        if accepted:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.cipher()[0] == cipher
        else:
            with pytest.raises(ssl.SSLError):
                context.wrap_socket(raw, server_hostname="localhost")

"""Twenty concurrent streams on one HTTP/2 connection: the bare mitmproxy engine against the gateway.

    .venv/bin/python scripts/bench_http2.py

mitmproxy opens at most 5 upstream connections per client connection; the upstream speaks
HTTP/1.1, so the 6th stream on one HTTP/2 connection waits for one of the first five to end.
Each stream here lasts about 1.5 s (10 events, 150 ms apart). Prints the wall time for all 20
and the most requests the upstream saw at once, for the engine as it comes and for the gateway.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trustme

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import procs  # noqa: E402

STREAMS = 20
HEADERS = {"x-fake-scenario": "hold-stream", "x-fake-chunk-delay-ms": "150"}
BODY = {"model": "gpt-oss-120b", "messages": [], "stream": True}


class PreferHttp2(ssl.SSLContext):
    def set_alpn_protocols(self, protocols):  # httpx offers http/1.1 first; ask for h2 first
        super().set_alpn_protocols(["h2", "http/1.1"])


async def twenty(port: int, ca: trustme.CA, key: str | None) -> float:
    context = PreferHttp2(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    headers = {**HEADERS, **({"authorization": f"Bearer {key}"} if key else {})}
    async with httpx.AsyncClient(http2=True, verify=context, timeout=120) as client:
        started = time.perf_counter()
        responses = await asyncio.gather(
            *[
                client.post(f"https://localhost:{port}/v1/chat/completions", headers=headers, json=BODY)
                for _ in range(STREAMS)
            ]
        )
        elapsed = time.perf_counter() - started
    assert {r.http_version for r in responses} == {"HTTP/2"}, "not one HTTP/2 connection"
    assert all(r.status_code == 200 for r in responses), [r.status_code for r in responses]
    return elapsed


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-h2-"))
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert_file, key_file, bundle = tmp / "cert.pem", tmp / "key.pem", tmp / "bundle.pem"
    cert.cert_chain_pems[0].write_to_path(cert_file)
    cert.private_key_pem.write_to_path(key_file)
    bundle.write_bytes(key_file.read_bytes() + cert_file.read_bytes())

    upstream = procs.start_fake_upstream(tmp)
    stats = f"http://127.0.0.1:{upstream.port}/_fake/stats"
    engine_port = procs.free_port()
    engine = (
        procs.Proc(
            "bare engine",
            [
                sys.executable,
                str(ROOT / "scripts" / "bench.py"),
                "--bare-engine",
                str(upstream.port),
                str(engine_port),
            ],
            procs.base_env(BENCH_CERTS=str(bundle)),
            tmp / "engine.log",
            engine_port,
        )
        .start()
        .wait_port()
    )
    gateway = procs.start_gateway(
        tmp / "gateway", upstream.port, TLS_CERT_FILE=str(cert_file), TLS_KEY_FILE=str(key_file)
    )
    from storage import db, keys

    db.open_database(f"sqlite:///{tmp / 'gateway' / 'gateway.db'}")
    _, key = keys.create_key("bench")
    time.sleep(1)
    try:
        print(f"{STREAMS} streams of ~1.5 s on one HTTP/2 connection")
        for name, port, secret in (("bare engine", engine_port, None), ("gateway", gateway.port, key)):
            httpx.post(f"http://127.0.0.1:{upstream.port}/_fake/reset")
            elapsed = asyncio.run(twenty(port, ca, secret))
            most = httpx.get(stats).json()["max_in_flight"]
            print(f"  {name:12} all done in {elapsed:5.2f} s, at most {most} upstream requests at once")
    finally:
        for proc in (gateway, engine, upstream):
            proc.stop()


if __name__ == "__main__":
    main()

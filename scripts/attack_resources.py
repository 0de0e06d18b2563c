"""Memory, connections and stalls under attack, measured against the real processes.

    .venv/bin/python scripts/attack_resources.py header [--mb 100] [--count 1]
    .venv/bin/python scripts/attack_resources.py bodies [--mb 29] [--count 20] [--key] [--path P] [--chunked]
    .venv/bin/python scripts/attack_resources.py idle [--count 2000] [--nofile 1024]
    .venv/bin/python scripts/attack_resources.py slowloris [--count 50] [--seconds 40]
    .venv/bin/python scripts/attack_resources.py stall [--seconds 30]
    .venv/bin/python scripts/attack_resources.py http2-reconnect

Each run starts the fake upstream and a fresh gateway (`python -m addons`) in a temporary
folder, on loopback only, sends a bounded load and prints the gateway's memory (VmRSS and
VmHWM of /proc/PID/status, in MB) and what clients saw. Extra gateway settings may be given as
NAME=VALUE arguments after `--env`. The figures in docs/security.md ("Tried as an attacker")
come from here.

- header: --count connections each send a request head with one header of --mb MB, no key.
- bodies: --count concurrent POSTs of --mb MB to /v1/chat/completions (or --path), without a
  key or (with --key) with a valid one and a JSON body; --chunked: without Content-Length.
- idle: --count connections that send nothing, against a gateway whose open-file limit is
  --nofile (soft and hard); then whether a new client is answered, and the log's growth.
- slowloris: --count connections that send a request head a byte every few seconds.
- stall: a streamed chat whose upstream sends headers, then nothing: how long the client is held.
- http2-reconnect: one HTTP/2 connection across an upstream outage: what it gets once the
  upstream is back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage import db, keys  # noqa: E402
from tests import procs  # noqa: E402

WIDE_LIMITS = {
    "RATE_LIMIT_REQUESTS": "1000000",
    "RATE_LIMIT_WINDOW": "3600",
    "IP_RATE_LIMIT_REQUESTS": "1000000",
}
CHAT = "/v1/chat/completions"


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = round(int(value.split()[0]) / 1024, 1)
    return found


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Setup:
    def __init__(self, tmp: Path, env: dict[str, str], nofile: int | None = None, tls: bool = False) -> None:
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.upstream = procs.start_fake_upstream(tmp)
        extra = {**WIDE_LIMITS, **env}
        if tls:
            extra.update(self._certificates())
        self.scheme = "https" if tls else "http"
        self.gateway = procs.start_gateway(self.data_dir, self.upstream.port, **extra)
        self.pid = self.gateway.popen.pid
        if nofile:
            # How many files the running gateway may open, soft and hard alike.
            resource.prlimit(self.pid, resource.RLIMIT_NOFILE, (nofile, nofile))
        db.open_database(f"sqlite:///{self.data_dir / 'gateway.db'}")

    def _certificates(self) -> dict[str, str]:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        files = {"TLS_CERT_FILE": self.tmp / "cert.pem", "TLS_KEY_FILE": self.tmp / "key.pem"}
        files["TLS_CERT_FILE"].write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
        files["TLS_KEY_FILE"].write_bytes(cert.private_key_pem.bytes())
        self.ca_file = self.tmp / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        return {k: str(v) for k, v in files.items()}

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.gateway.port}"

    def key(self) -> str:
        _, plaintext = keys.create_key("attack")

        def accepted():
            headers = {"authorization": f"Bearer {plaintext}"}
            return httpx.get(f"{self.url}/v1/models", headers=headers, verify=False).status_code == 200

        procs.wait_until(accepted, timeout=20)
        return plaintext

    def memory(self) -> dict[str, float]:
        return memory(self.pid)

    def stop(self) -> None:
        self.gateway.stop(timeout=60)
        self.upstream.stop()
        db.close_database()


def report(label: str, s: Setup) -> None:
    print(f"{label}: {json.dumps(s.memory())} open files: {open_files(s.pid)}", flush=True)


async def send_raw(
    port: int, head: bytes, payload_mb: float, then: bytes = b"", timeout: float = 60
) -> tuple[bytes, int]:
    """Send `head`, `payload_mb` MB of 'a' in 1 MB writes, then `then`, stopping once answered.

    Returns the answer's head and how many bytes of the payload had been sent when it came.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    sent = 0
    reading = asyncio.create_task(reader.readuntil(b"\r\n\r\n"))
    try:
        writer.write(head)
        block = b"a" * (1 << 20)
        for _ in range(int(payload_mb)):
            if reading.done():
                break
            writer.write(block)
            await writer.drain()
            sent += len(block)
        if not reading.done():
            writer.write(then)
            await writer.drain()
        answer = await asyncio.wait_for(reading, timeout)
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
        answered = reading.done() and not reading.cancelled() and not reading.exception()
        answer = reading.result() if answered else f"<{type(e).__name__}>".encode()
    finally:
        reading.cancel()
        writer.close()
    return answer, sent


def status_of(answer: bytes) -> str:
    line = answer.split(b"\r\n", 1)[0]
    return line.decode("latin-1")[:60] or "<no answer>"


def header(s: Setup, args) -> None:
    report("before", s)
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: "

    async def run():
        return await asyncio.gather(
            *(send_raw(s.gateway.port, head, args.mb, b"\r\n\r\n", timeout=120) for _ in range(args.count))
        )

    answers = asyncio.run(run())
    print("answers:", sorted({status_of(a) for a, _ in answers}))
    print("MB of each header sent before its answer:", sorted(round(sent / (1 << 20)) for _, sent in answers))
    time.sleep(2)
    report("after", s)
    r = httpx.get(f"{s.url}/health", timeout=10)
    print("a new client's /health:", r.status_code)


def bodies(s: Setup, args) -> None:
    key = s.key() if args.key else None
    report("before", s)
    size = int(args.mb * (1 << 20))
    if key and args.path == CHAT:
        filler = size - 100
        prefix = b'{"model": "gpt-oss-120b", "messages": [{"role": "user", "content": "'
        body_head, body_tail = prefix, b'"}]}'
        fill_mb = (filler - len(prefix) - len(body_tail)) / (1 << 20)
    else:
        body_head, body_tail, fill_mb = b"", b"", args.mb
    total = len(body_head) + int(fill_mb) * (1 << 20) + len(body_tail)
    auth = f"Authorization: Bearer {key}\r\n".encode() if key else b""
    kind = b"application/json" if args.path == CHAT else b"application/octet-stream"
    head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\n%s" % (args.path.encode(), kind, auth)
    if args.chunked:  # one chunk of the whole body: its size is not declared up front
        head += b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % total
        body_tail += b"\r\n0\r\n\r\n"
    else:
        head += b"Content-Length: %d\r\n\r\n" % total
    peak = {}

    async def watch(done: asyncio.Event):
        while not done.is_set():
            m = s.memory()
            peak["VmRSS"] = max(peak.get("VmRSS", 0), m["VmRSS"])
            await asyncio.sleep(0.05)

    async def run():
        done = asyncio.Event()
        watcher = asyncio.create_task(watch(done))
        started = time.monotonic()
        port = s.gateway.port
        sends = [send_raw(port, head + body_head, fill_mb, body_tail, 120) for _ in range(args.count)]
        answers = await asyncio.gather(*sends)
        done.set()
        await watcher
        return answers, time.monotonic() - started

    answers, seconds = asyncio.run(run())
    counts: dict[str, int] = {}
    for a, _ in answers:
        counts[status_of(a)] = counts.get(status_of(a), 0) + 1
    print(f"answers in {seconds:.1f} s:", counts)
    print("MB of each body sent before its answer:", sorted(round(sent / (1 << 20)) for _, sent in answers))
    print("highest VmRSS seen while sending:", peak.get("VmRSS"))
    time.sleep(2)
    report("after", s)


def idle(s: Setup, args) -> None:
    report("before", s)
    log_size, log_since = s.gateway.log_path.stat().st_size, time.monotonic()
    sockets = []
    for _ in range(args.count):
        try:
            sockets.append(socket.create_connection(("127.0.0.1", s.gateway.port), timeout=5))
        except OSError as e:
            print("connect failed:", e)
            break
    print(f"opened {len(sockets)} idle connections")
    time.sleep(3)
    report("with them", s)
    for source in ("127.0.0.1", "127.0.0.2"):  # the attacker's address, then another one
        started = time.monotonic()
        try:
            with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=10) as c:
                answer = c.get(f"{s.url}/health").status_code
        except httpx.HTTPError as e:
            answer = type(e).__name__
        print(f"a new client's /health from {source}: {answer} after {time.monotonic() - started:.2f} s")
    time.sleep(5)
    grown, seconds = s.gateway.log_path.stat().st_size - log_size, time.monotonic() - log_since
    print(f"log grew by {grown} bytes in {seconds:.0f} s ({grown / seconds / 1000:.1f} kB/s)")
    if args.hold:
        time.sleep(args.hold)
        alive = 0
        for sock in sockets:
            sock.setblocking(False)
            try:
                alive += sock.recv(1) != b""
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        print(f"after {args.hold} s more: {alive} of {len(sockets)} still open")
        report("then", s)
    for sock in sockets:
        sock.close()


def slowloris(s: Setup, args) -> None:
    report("before", s)
    sockets = [socket.create_connection(("127.0.0.1", s.gateway.port)) for _ in range(args.count)]
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 1000
    started = time.monotonic()
    closed_at: dict[int, float] = {}
    i = 0
    while time.monotonic() - started < args.seconds and len(closed_at) < len(sockets):
        for n, sock in enumerate(sockets):
            if n in closed_at:
                continue
            try:
                sock.send(head[i % len(head) : i % len(head) + 1])
            except OSError:
                closed_at[n] = time.monotonic() - started
        i += 1
        time.sleep(2)
    print(f"{len(closed_at)} of {len(sockets)} closed by the gateway within {args.seconds} s", end="")
    if closed_at:
        first, last = min(closed_at.values()), max(closed_at.values())
        print(f", the first after {first:.0f} s, the last after {last:.0f} s")
    else:
        print()
    report("after", s)
    for sock in sockets:
        sock.close()


def stall(s: Setup, args) -> None:
    key = s.key()
    body = {"model": "gpt-oss-120b", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    params = {"fake-scenario": "hold-stream", "fake-chunk-delay-ms": str(args.seconds * 1000)}
    started = time.monotonic()
    outcome = "complete"
    try:
        with httpx.stream(
            "POST", s.url + CHAT, json=body, params=params, timeout=args.seconds * 3,
            headers={"authorization": f"Bearer {key}"},
        ) as r:
            print(f"headers after {time.monotonic() - started:.1f} s: {r.status_code}")
            for _ in r.iter_bytes():
                break
    except httpx.HTTPError as e:
        outcome = type(e).__name__
    print(f"the client was let go after {time.monotonic() - started:.1f} s ({outcome})")
    time.sleep(1)
    print("gateway log:", [line for line in s.gateway.log().splitlines() if CHAT in line][-1:])


class PreferHttp2(ssl.SSLContext):
    """httpx offers ALPN as [http/1.1, h2] and mitmproxy honours the client's order: ask for h2 first."""

    def set_alpn_protocols(self, protocols):
        super().set_alpn_protocols(["h2", "http/1.1"])


def http2_reconnect(s: Setup, args) -> None:
    key = s.key()
    context = PreferHttp2(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(s.ca_file))
    headers = {"authorization": f"Bearer {key}"}
    url = f"https://localhost:{s.gateway.port}/v1/models"
    with httpx.Client(http2=True, verify=context, timeout=10) as c:
        r = c.get(url, headers=headers)
        print("upstream up:", r.status_code, r.http_version)
        port = s.upstream.port
        s.upstream.stop()
        print("upstream down:", c.get(url, headers=headers).status_code)
        s.upstream = procs.Proc(
            "fake upstream",
            [sys.executable, str(ROOT / "tests" / "fake_upstream.py"), "--port", str(port)],
            procs.base_env(), s.tmp / "fake-upstream-2.log", port,
        ).start().wait_port()
        answers = [c.get(url, headers=headers).status_code for _ in range(5)]
        print("upstream back, same connection:", answers)
    with httpx.Client(http2=True, verify=context, timeout=10) as c:
        print("upstream back, new connection:", c.get(url, headers=headers).status_code)


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    sub = parser.add_subparsers(dest="attack", required=True)
    p = sub.add_parser("header")
    p.add_argument("--mb", type=float, default=100)
    p.add_argument("--count", type=int, default=1)
    p = sub.add_parser("bodies")
    p.add_argument("--mb", type=float, default=29)
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--key", action="store_true")
    p.add_argument("--path", default=CHAT, help="e.g. /v1/audio/transcriptions: an upload")
    p.add_argument("--chunked", action="store_true", help="no Content-Length")
    p = sub.add_parser("idle")
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--nofile", type=int, default=1024)
    p.add_argument("--hold", type=float, default=0, help="then wait this long and count the survivors")
    p = sub.add_parser("slowloris")
    p.add_argument("--count", type=int, default=50)
    p.add_argument("--seconds", type=float, default=40)
    p = sub.add_parser("stall")
    p.add_argument("--seconds", type=int, default=30)
    sub.add_parser("http2-reconnect")
    for p in sub.choices.values():
        p.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory() as tmp:
        nofile = args.nofile if args.attack == "idle" else None
        s = Setup(Path(tmp), env, nofile=nofile, tls=args.attack == "http2-reconnect")
        try:
            globals()[args.attack.replace("-", "_")](s, args)
        finally:
            s.stop()


if __name__ == "__main__":
    main()

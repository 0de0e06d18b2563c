"""Usage rows lost under attack and faults, measured against the real processes.

    .venv/bin/python scripts/attack_usage.py surrogate [--rate 100] [--bad-rate 5] [--seconds 10]
    .venv/bin/python scripts/attack_usage.py lock [--rate 100] [--lock-seconds 20]
    .venv/bin/python scripts/attack_usage.py sigkill [--rate 200] [--seconds 5]
    .venv/bin/python scripts/attack_usage.py shutdown [--streams 20]
    .venv/bin/python scripts/attack_usage.py control

Each run starts the fake upstream and a fresh gateway (`python -m addons`) in a temporary
folder, on loopback only, sends a bounded load and prints what was expected, what the database
holds and what was lost. The figures in docs/security.md ("Tried as an attacker") come from here.

- surrogate: a victim key at --rate requests/s while another key sends --bad-rate requests/s
  whose model is a lone surrogate ("\\ud800" in the JSON).
- lock: requests at --rate while another connection holds the database's write lock
  (BEGIN EXCLUSIVE) for --lock-seconds, well past the gateway's busy timeout.
- sigkill: requests at --rate, one in ten a stream of about 2 s, each stream with a key of its
  own; SIGKILL after --seconds, then a restart on the same DATA_DIR.
- shutdown: --streams streams longer than SHUTDOWN_TIMEOUT (2 s), then SIGTERM.
- control: model names with a newline and terminal escapes, and of 1 MB: the gateway's log,
  `manage_keys.py usage --by model` and the database's growth.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage import db, keys  # noqa: E402
from storage.models import Usage  # noqa: E402
from tests import procs  # noqa: E402

WIDE_LIMITS = {
    "RATE_LIMIT_REQUESTS": "1000000",
    "RATE_LIMIT_WINDOW": "3600",
    "IP_RATE_LIMIT_REQUESTS": "1000000",
    "MAX_BODY_MB": "4",
}
CHAT = "/v1/chat/completions"


def chat(model: str, stream: bool = False) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return json.dumps(body).encode()


class Setup:
    """The fake upstream and one gateway on a DATA_DIR of their own."""

    def __init__(self, tmp: Path, **env: str) -> None:
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.env = {**WIDE_LIMITS, **env}
        self.upstream = procs.start_fake_upstream(tmp)
        self.gateway = procs.start_gateway(self.data_dir, self.upstream.port, **self.env)
        db.open_database(f"sqlite:///{self.data_dir / 'gateway.db'}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"

    def restart(self) -> None:
        self.gateway = procs.start_gateway(self.data_dir, self.upstream.port, **self.env)

    def keys(self, count: int) -> list[tuple[str, str]]:
        made = [keys.create_key(f"attack {i}") for i in range(count)]

        def accepted():
            r = httpx.get(f"{self.url}/v1/models", headers={"authorization": f"Bearer {made[-1][1]}"})
            return r.status_code == 200

        procs.wait_until(accepted, timeout=20)
        settle_rows()
        Usage.delete().execute()  # the probe's row
        return [(key.key_id, plaintext) for key, plaintext in made]

    def health(self) -> tuple[int, dict]:
        try:
            r = procs.health(self.gateway.port)
        except httpx.HTTPError as e:
            return 0, {"error": type(e).__name__}
        return r.status_code, r.json()

    def stop(self) -> None:
        self.gateway.stop(timeout=60)
        self.upstream.stop()
        db.close_database()


def settle_rows(quiet_seconds: float = 3.0, timeout: float = 120.0) -> int:
    """The number of usage rows once it has not changed for `quiet_seconds`."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = Usage.select().count()
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet_seconds:
            return count
        time.sleep(0.2)
    return last


async def paced(rate: float, count: int, send) -> list:
    """Start send(i) at `rate` per second, `count` times; the results in order."""
    start = time.monotonic()
    tasks = []
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(i)))
    return await asyncio.gather(*tasks, return_exceptions=True)


async def post(client: httpx.AsyncClient, url: str, key: str, body: bytes, **params) -> int:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    r = await client.post(url, content=body, headers=headers, params=params or None)
    return r.status_code


def client() -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
    return httpx.AsyncClient(timeout=60, limits=limits)


def surrogate(s: Setup, args) -> None:
    (victim_id, victim), (bad_id, bad) = s.keys(2)
    victims = int(args.rate * args.seconds)
    bads = int(args.bad_rate * args.seconds)
    bad_body = b'{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}'

    async def run():
        async with client() as c:
            return await asyncio.gather(
                paced(args.rate, victims, lambda i: post(c, s.url + CHAT, victim, chat("gpt-oss-120b"))),
                paced(args.bad_rate, bads, lambda i: post(c, s.url + CHAT, bad, bad_body)),
            )

    good, evil = asyncio.run(run())
    answered = sum(1 for status in good if status == 200)
    settle_rows()
    written = Usage.select().where(Usage.key_id == victim_id).count()
    bad_rows = Usage.select().where(Usage.key_id == bad_id).count()
    status, body = s.health()
    print(f"victim requests answered 200: {answered} of {victims}; their rows written: {written}")
    print(f"victim rows lost: {answered - written}")
    print(f"bad requests: {bads} (answered {sum(1 for x in evil if x == 200)}), their rows: {bad_rows}")
    print(f"/health: {status} {json.dumps(body)}")


def lock(s: Setup, args) -> None:
    [(key_id, key)] = s.keys(1)
    seconds = args.lock_seconds + 10
    count = int(args.rate * seconds)
    held = threading.Event()

    def hold():
        time.sleep(3)
        conn = sqlite3.connect(s.data_dir / "gateway.db", timeout=30, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        held.set()
        time.sleep(args.lock_seconds)
        conn.execute("ROLLBACK")
        conn.close()
        held.clear()

    holder = threading.Thread(target=hold)
    holder.start()
    reports = []

    def watch():
        while holder.is_alive():
            if held.is_set():
                reports.append(s.health())
            time.sleep(1)

    watcher = threading.Thread(target=watch)
    watcher.start()

    async def run():
        async with client() as c:
            return await paced(args.rate, count, lambda i: post(c, s.url + CHAT, key, chat("gpt-oss-120b")))

    results = asyncio.run(run())
    holder.join()
    watcher.join()
    answered = sum(1 for status in results if status == 200)
    written = settle_rows()
    print(f"lock held {args.lock_seconds} s; requests answered 200: {answered} of {count}")
    print(f"rows written: {written}; lost: {answered - written}")
    if reports:
        worst = max(reports, key=lambda r: r[1].get("usage", {}).get("waiting", 0))
        print(f"/health during the lock (most waiting): {worst[0]} {json.dumps(worst[1])}")
    status, body = s.health()
    print(f"/health after: {status} {json.dumps(body)}")


def sigkill(s: Setup, args) -> None:
    count = int(args.rate * args.seconds) + args.rate  # more than are sent before the kill
    streams = count // 10
    made = s.keys(streams + 1)
    plain_id, plain = made[0]
    stream_keys = made[1:]
    answered: set[str] = set()
    started_streams: set[str] = set()

    async def send(i: int, c: httpx.AsyncClient):
        if i % 10 == 9:
            key_id, key = stream_keys[i // 10]
            headers = {"authorization": f"Bearer {key}"}
            params = {"fake-scenario": "hold-stream", "fake-chunk-delay-ms": "200"}
            async with c.stream("POST", s.url + CHAT, content=chat("gpt-oss-120b", stream=True),
                                headers=headers, params=params) as r:
                started_streams.add(key_id)
                async for _ in r.aiter_bytes():
                    pass
        else:
            tag = f"req-{i}"
            if await post(c, s.url + CHAT, plain, chat(tag)) == 200:
                answered.add(tag)

    async def run():
        async with client() as c:
            load = asyncio.create_task(paced(args.rate, count, lambda i: send(i, c)))
            await asyncio.sleep(args.seconds)
            s.gateway.popen.kill()
            s.gateway.popen.wait()
            await load

    asyncio.run(run())
    s.gateway._log.close()
    s.restart()
    settle_rows()
    tags = {row.model for row in Usage.select(Usage.model).where(Usage.key_id == plain_id)}
    per_stream = {}
    for row in Usage.select().where(Usage.key_id.in_([k for k, _ in stream_keys])):
        per_stream.setdefault(row.key_id, []).append(row)
    lost_rows = answered - tags
    lost_streams = started_streams - set(per_stream)
    doubled = sum(1 for rows in per_stream.values() if len(rows) > 1)
    interrupted = sum(1 for rows in per_stream.values() if not rows[0].complete)
    with_usage = sum(1 for rows in per_stream.values() if rows[0].total_tokens > 0)
    print(f"SIGKILL after {args.seconds} s at {args.rate} requests/s")
    print(f"answered requests: {len(answered)}; rows lost: {len(lost_rows)}")
    print(f"streams that got their headers: {len(started_streams)}; lost: {len(lost_streams)}; "
          f"rows: {len(per_stream)} ({interrupted} interrupted, {with_usage} with usage, {doubled} doubled)")


def shutdown(s: Setup, args) -> None:
    stream_keys = s.keys(args.streams)
    started: set[str] = set()

    async def one(key_id: str, key: str, c: httpx.AsyncClient):
        params = {"fake-scenario": "hold-stream", "fake-chunk-delay-ms": "1000"}
        try:
            async with c.stream("POST", s.url + CHAT, content=chat("gpt-oss-120b", stream=True),
                                headers={"authorization": f"Bearer {key}"}, params=params) as r:
                started.add(key_id)
                async for _ in r.aiter_bytes():
                    pass
        except httpx.HTTPError:
            pass

    async def run():
        async with client() as c:
            tasks = [asyncio.create_task(one(k, p, c)) for k, p in stream_keys]
            while len(started) < len(stream_keys):
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.5)  # each has seen a few usage chunks
            s.gateway.signal(signal.SIGTERM)
            await asyncio.gather(*tasks)

    asyncio.run(run())
    code = s.gateway.popen.wait(60)
    rows = list(Usage.select().where(Usage.key_id.in_([k for k, _ in stream_keys])))
    print(f"SIGTERM with {len(started)} streams running, SHUTDOWN_TIMEOUT=2: exit status {code}")
    print(f"rows: {len(rows)}; lost: {len(started) - len({r.key_id for r in rows})}; "
          f"interrupted with usage: {sum(1 for r in rows if not r.complete and r.total_tokens)}")


def control(s: Setup, args) -> None:
    [(key_id, key)] = s.keys(1)
    evil = "evil\n2030-01-01 00:00:00,000 INFO gateway: POST /v1/chat/completions 200 key=forged"
    evil += "\x1b]0;owned\x07\x1b[2J"
    big = "m" * (1 << 20)
    db_file = s.data_dir / "gateway.db"

    def size() -> int:
        conn = sqlite3.connect(db_file)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        return db_file.stat().st_size + (s.data_dir / "gateway.db-wal").stat().st_size

    before = size()
    with httpx.Client(timeout=60) as c:
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        assert c.post(s.url + CHAT, content=chat(evil), headers=headers).status_code == 200
        for _ in range(2):
            assert c.post(s.url + CHAT, content=chat(big), headers=headers).status_code == 200
    settle_rows()
    after = size()
    log = s.gateway.log_path.read_bytes()
    cli = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "manage_keys.py"), "usage", "--by", "model"],
        env=procs.base_env(DATA_DIR=str(s.data_dir)), capture_output=True, check=True,
    ).stdout
    print(f"log: raw ESC bytes {log.count(b'\x1b')}; forged lines {log.count(b'\n2030-01-01')}; "
          f"longest line {max(len(line) for line in log.splitlines())} bytes")
    print(f"manage_keys.py usage --by model: raw ESC bytes {cli.count(b'\x1b')}, "
          f"lines {len(cli.splitlines())}, longest {max(len(line) for line in cli.splitlines())} bytes")
    print(f"database grew by {(after - before) / 1e6:.2f} MB for two requests with a 1 MB model")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", choices=["surrogate", "lock", "sigkill", "shutdown", "control"])
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--bad-rate", type=float, default=5)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--lock-seconds", type=float, default=20)
    parser.add_argument("--streams", type=int, default=20)
    args = parser.parse_args()
    args.rate = args.rate or (200 if args.scenario == "sigkill" else 100)
    args.seconds = args.seconds or (5 if args.scenario == "sigkill" else 10)
    env = {"SHUTDOWN_TIMEOUT": "2"} if args.scenario == "shutdown" else {}
    with tempfile.TemporaryDirectory(prefix="attack-usage-") as tmp:
        s = Setup(Path(tmp), **env)
        try:
            globals()[args.scenario](s, args)
        finally:
            s.stop()


if __name__ == "__main__":
    main()

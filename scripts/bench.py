"""Benchmark: the gateway against the bare mitmproxy engine and the upstream called directly.

    .venv/bin/python scripts/bench.py [--seconds 10] [--limits]

Starts the fake upstream, a lean mitmproxy `Master` with no addon of ours, and the full
gateway (`python -m addons`), then prints requests/s at 16 connections, p50/p99 latency at one
connection (wrk, keep-alive) and streaming time to first byte, each with its ratio to the bare
engine and to the upstream. Needs `wrk` (Debian: apt-get install wrk).

With `--limits`, every target is sent a small chat completion (POST, a JSON body naming the
model) instead of GET /v1/models, and the gateway is measured twice: with a plain key, and with
a key that has a budget, a model list and a token limit (never reached), so that the model
check, the budget and token checks, the token headers and the pricing at each answer's end are
all on the path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import procs  # noqa: E402

FAST = "x-fake-scenario: fast"
SETTLE_SECONDS = 1.0  # between runs: the gateway's writer stores the last run's usage rows
CHAT_BODY = '{"model":"gpt-oss-120b","messages":[{"role":"user","content":"hi"}]}'
# wrk sends one request shape per run; a POST needs its Lua script.
POST_SCRIPT = f"""wrk.method = "POST"
wrk.body = '{CHAT_BODY}'
wrk.headers["Content-Type"] = "application/json"
"""


def bare_engine(upstream_port: int, port: int) -> None:
    """mitmproxy with the same core addons as the gateway's launcher, and nothing of ours."""
    from mitmproxy import options
    from mitmproxy.master import Master

    from addons.__main__ import engine_addons

    async def run():
        master = Master(options.Options())
        master.addons.add(*engine_addons())
        master.options.update(
            mode=[f"reverse:http://127.0.0.1:{upstream_port}@127.0.0.1:{port}"],
            connection_strategy="lazy",
            confdir=tempfile.mkdtemp(),
            # scripts/bench_http2.py serves it over TLS, for HTTP/2.
            certs=[f"*={os.environ['BENCH_CERTS']}"] if os.environ.get("BENCH_CERTS") else [],
        )
        await master.run()

    asyncio.run(run())


def wrk(port: int, connections: int, seconds: int, key: str | None, post: Path | None = None
        ) -> dict[str, float]:
    """GET /v1/models; with `post` (the Lua script), POST /v1/chat/completions."""
    args = [
        "wrk",
        "-t",
        "1" if connections == 1 else "2",
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--latency",
        "-H",
        FAST,
    ]
    if key:
        args += ["-H", f"Authorization: Bearer {key}"]
    if post:
        args += ["-s", str(post)]
    # In the query string, the fake upstream's switch to its small answer reaches it through the
    # gateway too, which forwards only the headers an API call needs.
    path = "/v1/chat/completions?fake-scenario=fast" if post else "/v1/models?fake-scenario=fast"
    url = f"http://127.0.0.1:{port}{path}"
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        raise SystemExit(f"port {port}: {non_2xx.group(1)} failed responses\n{out}")
    return {
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),
        "p99": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def time_to_first_byte(port: int, key: str | None, runs: int) -> float:
    """Median milliseconds from sending a streamed chat request to its first body byte."""
    body = b'{"model":"gpt-oss-120b","messages":[],"stream":true}'
    auth = f"Authorization: Bearer {key}\r\n".encode() if key else b""
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        + auth
        + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    samples = []
    for _ in range(runs):
        with socket.create_connection(("127.0.0.1", port)) as s:
            started = time.perf_counter()
            s.sendall(request)
            data = b""
            while len(data) <= data.find(b"\r\n\r\n") + 4 or b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    raise SystemExit(f"port {port}: the stream closed before its first byte")
                data += chunk
            samples.append((time.perf_counter() - started) * 1000)
            # The rest of the stream, to its last chunk: the gateway keeps the connection open
            # despite `Connection: close` (it drops that header from the request it forwards).
            while not data.endswith(b"0\r\n\r\n") and (chunk := s.recv(65536)):
                data += chunk
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the targets")
    parser.add_argument(
        "--limits",
        action="store_true",
        help="POST chat completions; the gateway also with a key that has a budget, models and a token limit",
    )
    parser.add_argument(
        "--bare-engine", nargs=2, type=int, metavar=("UPSTREAM_PORT", "PORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.bare_engine:
        return bare_engine(*args.bare_engine)
    if not shutil.which("wrk"):
        raise SystemExit("bench: wrk not found (Debian: apt-get install wrk)")

    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    upstream = procs.start_fake_upstream(tmp)
    engine_port = procs.free_port()
    engine = (
        procs.Proc(
            "bare engine",
            [sys.executable, __file__, "--bare-engine", str(upstream.port), str(engine_port)],
            procs.base_env(),
            tmp / "engine.log",
            engine_port,
        )
        .start()
        .wait_port()
    )
    wide = {
        name: "100000000"
        for name in ("RATE_LIMIT_REQUESTS", "IP_RATE_LIMIT_REQUESTS", "GLOBAL_RATE_LIMIT_REQUESTS")
    }
    gateway = procs.start_gateway(tmp / "gateway", upstream.port, **wide)
    from storage import db, keys

    db.open_database(f"sqlite:///{tmp / 'gateway' / 'gateway.db'}")
    _, key = keys.create_key("bench")
    targets = {
        "upstream": (upstream, None),
        "bare engine": (engine, None),
        "gateway": (gateway, key),
    }
    post = None
    if args.limits:
        post = tmp / "post.lua"
        post.write_text(POST_SCRIPT)
        # Limits far above what the run reaches: checked on every request, never refusing one.
        _, limited = keys.create_key(
            "bench-limits", budget_eur=1e8, budget_period="month", models=["gpt-oss-120b"], tpm=10**9
        )
        targets["gateway, limits"] = (gateway, limited)
    time.sleep(1)  # the gateway picks the keys up within a second

    samples: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    try:
        for proc, secret in targets.values():
            wrk(proc.port, 16, 2, secret, post)  # warm up
        # Rounds alternate between the targets, so that a busy moment of the machine does not
        # land on one of them only; each figure is the median of its rounds.
        order = list(targets.items())
        for round_ in range(args.rounds):
            # Each round starts one target later: no target always follows the same one (the
            # gateway's two keys share a process, whose writer is still storing the rows of
            # the run before for a moment).
            for name, (proc, secret) in order[round_ % len(order) :] + order[: round_ % len(order)]:
                time.sleep(SETTLE_SECONDS)
                cpu_before = cpu_seconds(proc.popen.pid)
                many = wrk(proc.port, 16, args.seconds, secret, post)
                cpu_us = (cpu_seconds(proc.popen.pid) - cpu_before) * 1e6 / many["requests"]
                one = wrk(proc.port, 1, args.seconds, secret, post)
                ttfb = time_to_first_byte(proc.port, secret, 100)
                samples[name].append(
                    {**many, "p50": one["p50"], "p99": one["p99"], "ttfb": ttfb, "cpu": cpu_us}
                )
    finally:
        for proc in (gateway, engine, upstream):
            proc.stop()
    report(
        {
            name: {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
            for name, rounds in samples.items()
        }
    )


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far: a cost per request that a busy machine
    changes far less than it changes requests per second."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(results: dict[str, dict[str, float]]) -> None:
    up, bare, gw = results["upstream"], results["bare engine"], results["gateway"]
    limited = results.get("gateway, limits")  # with --limits only
    gateways = [("gateway", gw)] + ([("gateway, limits", limited)] if limited else [])
    heads = [("upstream", 12), ("bare engine", 13), ("gateway", 12)]
    heads += [("gw, limits", 12)] if limited else []
    heads += [("gw/engine", 13)] + ([("limits/engine", 15)] if limited else []) + [("gw/upstream", 13)]
    print("\n" + " " * 24 + "".join(f"{name:>{width}}" for name, width in heads))
    rows = [
        ("requests/s, 16 conns", "rps", "{:.0f}"),
        ("p50 latency ms, 1 conn", "p50", "{:.2f}"),
        ("p99 latency ms, 1 conn", "p99", "{:.2f}"),
        ("stream TTFB ms (median)", "ttfb", "{:.2f}"),
        ("CPU us per request", "cpu", "{:.0f}"),
    ]
    for label, field, fmt in rows:
        values = [fmt.format(r[field]) for r in (up, bare, *(r for _, r in gateways))]
        ratios = [f"{r[field] / bare[field]:.2f}" for _, r in gateways] + [f"{gw[field] / up[field]:.2f}"]
        cells = [f"{v:>{w}}" for v, (_, w) in zip(values + ratios, heads, strict=True)]
        print(f"{label:24}" + "".join(cells))
    for name, r in gateways:
        print(f"\n{name} keeps {r['rps'] / bare['rps']:.0%} of the bare engine's throughput (target >= 85%)")
        print(f"{name} spends {r['cpu'] - bare['cpu']:+.0f} us of CPU per request over the bare engine")
        print(f"{name} adds {r['p50'] - bare['p50']:+.2f} ms at p50 over the bare engine (target < 2 ms)")
        print(f"{name} adds {r['ttfb'] - bare['ttfb']:+.2f} ms to a stream's first byte over the bare engine")


if __name__ == "__main__":
    main()

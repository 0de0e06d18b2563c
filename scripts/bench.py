"""Benchmark: the gateway against the bare mitmproxy engine and the upstream called directly.

    .venv/bin/python scripts/bench.py [--seconds 10]

Starts the fake upstream, a lean mitmproxy `Master` with no addon of ours, and the full
gateway (`python -m addons`), then prints requests/s at 16 connections, p50/p99 latency at one
connection (wrk, keep-alive) and streaming time to first byte, each with its ratio to the bare
engine and to the upstream. Needs `wrk` (Debian: apt-get install wrk).
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


def wrk(port: int, connections: int, seconds: int, key: str | None) -> dict[str, float]:
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
    out = subprocess.run(
        [*args, f"http://127.0.0.1:{port}/v1/models"], capture_output=True, text=True, check=True
    ).stdout
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
            while s.recv(65536):  # the rest of the stream, until the server closes
                pass
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the three targets")
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
    time.sleep(1)  # the gateway picks the key up within a second

    targets = {
        "upstream": (upstream, None),
        "bare engine": (engine, None),
        "gateway": (gateway, key),
    }
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    try:
        for proc, secret in targets.values():
            wrk(proc.port, 16, 2, secret)  # warm up
        # Rounds alternate between the targets, so that a busy moment of the machine does not
        # land on one of them only; each figure is the median of its rounds.
        for _ in range(args.rounds):
            for name, (proc, secret) in targets.items():
                cpu_before = cpu_seconds(proc.popen.pid)
                many = wrk(proc.port, 16, args.seconds, secret)
                cpu_us = (cpu_seconds(proc.popen.pid) - cpu_before) * 1e6 / many["requests"]
                one = wrk(proc.port, 1, args.seconds, secret)
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
    print(f"\n{'':24}{'upstream':>12}{'bare engine':>13}{'gateway':>12}{'gw/engine':>11}{'gw/upstream':>13}")
    rows = [
        ("requests/s, 16 conns", "rps", "{:.0f}"),
        ("p50 latency ms, 1 conn", "p50", "{:.2f}"),
        ("p99 latency ms, 1 conn", "p99", "{:.2f}"),
        ("stream TTFB ms (median)", "ttfb", "{:.2f}"),
        ("CPU us per request", "cpu", "{:.0f}"),
    ]
    for label, field, fmt in rows:
        values = [fmt.format(r[field]) for r in (up, bare, gw)]
        print(
            f"{label:24}{values[0]:>12}{values[1]:>13}{values[2]:>12}"
            f"{gw[field] / bare[field]:>11.2f}{gw[field] / up[field]:>13.2f}"
        )
    print(f"\ngateway keeps {gw['rps'] / bare['rps']:.0%} of the bare engine's throughput (target >= 85%)")
    print(f"gateway spends {gw['cpu'] - bare['cpu']:+.0f} us of CPU per request over the bare engine")
    print(f"gateway adds {gw['p50'] - bare['p50']:+.2f} ms at p50 over the bare engine (target < 2 ms)")
    print(f"gateway adds {gw['ttfb'] - bare['ttfb']:+.2f} ms to a stream's first byte over the bare engine")


if __name__ == "__main__":
    main()

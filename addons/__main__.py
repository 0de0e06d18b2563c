"""`python -m addons`: the production gateway, mitmproxy embedded with only the addons it needs."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time

from mitmproxy import exceptions, options
from mitmproxy.addons import core, errorcheck, next_layer, proxyserver
from mitmproxy.master import Master

from addons import resources
from addons.connections import ClientConnections
from addons.gateway import Gateway
from addons.running import RunningStreams, cut_connections
from addons.tls import CIPHERS_TLS12, OperatorCertificates
from storage import config, untrusted

log = logging.getLogger("gateway")
CUT_SECONDS = 5.0  # for mitmproxy to report the requests cut at SHUTDOWN_TIMEOUT


def engine_addons() -> list:
    """mitmproxy's own addons that a reverse proxy needs, and no more: each addon loaded costs
    every request a call per hook (all of mitmdump's defaults halve the throughput)."""
    return [
        core.Core(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        OperatorCertificates(),  # tlsconfig's, never falling back to a generated certificate
        errorcheck.ErrorCheck(),
    ]


def mitmproxy_options(s: config.Settings) -> dict:
    return {
        "mode": [f"reverse:{s.upstream_url}@{s.listen_host}:{s.listen_port}"],
        # With eager connections a dead upstream gives clients an empty reply and no hook runs.
        "connection_strategy": "lazy",
        # The admin needs the Host clients used (its pages show this deployment's URL);
        # the gateway sets the upstream's Host itself.
        "keep_host_header": True,
        "body_size_limit": f"{s.max_body_mb}m",
        "ciphers_client": CIPHERS_TLS12,
        "confdir": str(s.data_dir / ".mitmproxy"),
        # mitmproxy's own inactivity timeout, now only for connections with a request in progress
        # (addons/connections.py closes the others): after ours, which answer and meter.
        "tcp_timeout": int(max(s.upstream_timeout, s.upstream_idle_timeout)) + 30,
    } | ({"ssl_verify_upstream_trusted_ca": str(s.upstream_ca_file)} if s.upstream_ca_file else {})


def client_connections(s: config.Settings) -> ClientConnections:
    # Behind a trusted proxy every connection comes from its address: no cap per address then.
    per_client = None if s.trust_proxy else s.max_connections_per_client
    return ClientConnections(per_client, s.client_idle_timeout, s.header_timeout)


async def serve(s: config.Settings) -> int:
    master = Master(options.Options(), with_termlog=False)
    gateway = Gateway(s)
    streams = RunningStreams()  # after the gateway: it sees the gateway's SSE tap
    master.addons.add(*engine_addons(), gateway, streams)
    gateway.writer.running = streams.rows  # journaled every window: what SIGKILL would lose
    master.addons.add(client_connections(s))
    master.options.update(**mitmproxy_options(s))
    await gateway.health.probe()  # so that /health is right from the first request
    # Everything loaded so far lives as long as the process: keep it out of the garbage
    # collector's full passes, which otherwise stall the event loop for milliseconds.
    gc.freeze()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    run = asyncio.create_task(master.run())
    stop = asyncio.create_task(stopping.wait())
    await asyncio.wait([run, stop], return_when=asyncio.FIRST_COMPLETED)
    if run.done():
        return 1  # mitmproxy stopped on its own: a port in use, a bad option
    log.info("stopping: no new connections, waiting for %d request(s)", gateway.in_flight)
    await master.addons.get("proxyserver").servers.update([])
    deadline = time.monotonic() + s.shutdown_timeout
    while gateway.in_flight > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if gateway.in_flight:
        log.warning("shutdown timeout: %d request(s) still running are cut off", gateway.in_flight)
        # Cut them now, not when the event loop ends: mitmproxy then calls the gateway's error
        # hook for each, which meters it as interrupted with the last usage seen, before the
        # done hook flushes the writer.
        cut_connections(master.addons.get("proxyserver"))
        deadline = time.monotonic() + CUT_SECONDS
        while gateway.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    master.shutdown()
    await run  # the done hook flushes the usage writer
    log.info("stopped")
    return 0


def main() -> int:
    # Escaping: a client's string quoted in any record cannot forge a line (storage/untrusted.py).
    formatter = untrusted.EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    logging.getLogger().handlers[0].setFormatter(formatter)
    # mitmproxy turns every record that reaches the root logger into a hook call on every addon;
    # our per-request lines go straight to stderr instead.
    ours = logging.StreamHandler(sys.stderr)
    ours.setFormatter(formatter)
    log.addHandler(ours)
    log.propagate = False
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)
    quiet = resources.ResourceErrorFilter()  # out of files: one line a second, not 1.5 MB
    for handler in (*logging.getLogger().handlers, ours):
        handler.addFilter(quiet)
    log.info("open files: %d", resources.raise_open_file_limit())
    try:
        settings = config.load()
        resources.check_event_loop()
        return asyncio.run(serve(settings), loop_factory=resources.EventLoop)
    except (config.ConfigError, exceptions.OptionsError) as e:
        print(f"gateway: configuration error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

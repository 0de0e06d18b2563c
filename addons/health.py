"""Whether the upstream answers and the database takes writes, probed in the background."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

from addons.writer import Status
from storage import db

log = logging.getLogger("gateway.health")
PROBE_SECONDS = 2.0
PROBE_TIMEOUT = 1.5


def upstream_tls_context(s) -> ssl.SSLContext:
    """How an https upstream is checked: against UPSTREAM_CA_FILE, else the system's roots."""
    return ssl.create_default_context(cafile=str(s.upstream_ca_file) if s.upstream_ca_file else None)


async def upstream_answers(host: str, port: int, tls: ssl.SSLContext | None = None) -> bool:
    """Any HTTP status line counts: privatemode-proxy has no /health and answers 404."""
    try:
        opening = asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None)
        reader, writer = await asyncio.wait_for(opening, PROBE_TIMEOUT)
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: upstream\r\nConnection: close\r\n\r\n")
        line = await asyncio.wait_for(reader.readline(), PROBE_TIMEOUT)
        return line.startswith(b"HTTP/")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


class Health:
    def __init__(self, upstream: tuple[str, int], tls: ssl.SSLContext | None = None) -> None:
        self.upstream = upstream
        self.tls = tls
        self.upstream_ok = False
        self.database_ok = False
        self.checked_at = 0.0
        self._task: asyncio.Task | None = None

    async def probe(self) -> None:
        self.upstream_ok = await upstream_answers(*self.upstream, self.tls)
        self.database_ok = await asyncio.to_thread(db.writable)
        self.checked_at = time.time()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            try:
                await self.probe()
            except Exception:
                log.exception("health probe failed")
            await asyncio.sleep(PROBE_SECONDS)

    def report(self, writer: Status) -> tuple[int, dict]:
        """200 while the gateway serves and keeps every usage row; 503 when it cannot serve (the
        upstream does not answer) or new usage rows are being lost (memory full, journal failing).

        A database that cannot be written is "degraded" but 200: requests are served and their
        rows wait in memory and in the journal (addons/writer.py) until it works again; a health
        check that restarted the container for it would help nothing and stop the service.
        """
        database_ok = self.database_ok and writer.error is None
        serving = self.upstream_ok and not writer.losing
        well = serving and database_ok and not writer.journaled
        return (200 if serving else 503), {
            "status": "ok" if well else "degraded",
            "upstream": "ok" if self.upstream_ok else "unreachable",
            "database": "ok" if database_ok else "not writable",
            "usage": {"waiting": writer.waiting, "journaled": writer.journaled, "lost": writer.lost},
            "checked_at": round(self.checked_at, 3),
        }

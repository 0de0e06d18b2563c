"""Finished requests become log lines and usage rows in batches; a thread writes them.

The Python part of a batch (reading usage from bodies, pricing, formatting) runs on the event
loop, a slice at a time, every FLUSH_SECONDS; the thread does the SQLite work, which releases the
GIL. Python work on a second thread would fight the event loop for the GIL: measured, that
costs more than the work itself.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable

from addons.metering import Finished, access_line, make_record
from storage import prices, usage

log = logging.getLogger("gateway.writer")
FLUSH_SECONDS = 0.2
SLICE = 100  # finished requests prepared between two turns of the event loop
MAX_BATCH = 500


class UsageWriter:
    def __init__(self, price_table: Callable[[], dict[str, prices.PriceRow]]) -> None:
        self.price_table = price_table
        self._pending: list[Finished] = []
        self._queue: queue.SimpleQueue[tuple[str, list[usage.UsageRecord]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
        self._task: asyncio.Task | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        """Called on the event loop."""
        self._thread.start()
        self._task = asyncio.get_running_loop().create_task(self._prepare_batches())

    def put(self, request: Finished) -> None:
        """Called on the event loop: never blocks."""
        self._pending.append(request)

    def close(self, timeout: float = 10.0) -> None:
        """Write everything finished so far, then stop the thread."""
        if self._task:
            self._task.cancel()
        if not self._thread.is_alive():
            return
        batch, self._pending = self._pending, []
        self._queue.put(self._prepare(batch))
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("usage writer did not finish within %.0f s", timeout)

    async def _prepare_batches(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            batch, self._pending = self._pending, []
            for start in range(0, len(batch), SLICE):
                self._queue.put(self._prepare(batch[start : start + SLICE]))
                await asyncio.sleep(0)  # let requests through between slices

    def _prepare(self, batch: list[Finished]) -> tuple[str, list[usage.UsageRecord]]:
        batch = [f.with_body_read() for f in batch]
        table = self.price_table()
        return "".join(map(access_line, batch)), [make_record(f, table) for f in batch if f.metered]

    def _run(self) -> None:
        records: list[usage.UsageRecord] = []
        while (item := self._queue.get()) is not None:
            lines, prepared = item
            if lines:
                sys.stderr.write(lines)
                sys.stderr.flush()
            records += prepared
            if self._queue.empty() or len(records) >= MAX_BATCH:  # one transaction for what is ready
                self._write(records)
                records = []
        if records:
            self._write(records)

    def _write(self, batch: list[usage.UsageRecord]) -> None:
        for attempt in range(3):
            try:
                usage.record_batch(batch)
            except Exception as e:  # a locked or full database: retry, then report and drop
                self.last_error = type(e).__name__
                log.warning(
                    "writing %d usage rows failed (%s), attempt %d", len(batch), type(e).__name__, attempt + 1
                )
                time.sleep(0.2 * (attempt + 1))
            else:
                self.last_error = None
                return
        log.error("dropped %d usage rows after 3 failed attempts", len(batch))

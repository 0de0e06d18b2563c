"""Finished requests leave the event loop through a queue; a thread writes their usage rows and
log lines in batches, so that pricing, SQL and log formatting cost the event loop nothing."""

from __future__ import annotations

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
MAX_BATCH = 500


class UsageWriter:
    def __init__(self, price_table: Callable[[], dict[str, prices.PriceRow]]) -> None:
        self.price_table = price_table
        self._queue: queue.SimpleQueue[Finished] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
        self.last_error: str | None = None
        self.written = 0

    def start(self) -> None:
        self._thread.start()

    def put(self, request: Finished) -> None:
        """Called on the event loop: never blocks."""
        self._queue.put(request)

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued so far, then stop the thread."""
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("usage writer did not finish within %.0f s", timeout)

    def _run(self) -> None:
        # Wake on a timer, not on every record: a thread woken per request would take the GIL
        # from the event loop hundreds of times a second.
        stopping = False
        while not stopping:
            stopping = self._stop.wait(FLUSH_SECONDS)
            batch = [f.with_body_read() for f in self._drain()]
            if batch:
                sys.stderr.write("".join(map(access_line, batch)))
                sys.stderr.flush()
            table = self.price_table()
            records = [make_record(f, table) for f in batch if f.metered]
            for start in range(0, len(records), MAX_BATCH):
                self._write(records[start : start + MAX_BATCH])

    def _drain(self) -> list[Finished]:
        batch = []
        while True:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                return batch

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
                self.written += len(batch)
                self.last_error = None
                return
        log.error("dropped %d usage rows after 3 failed attempts", len(batch))

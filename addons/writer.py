"""Usage rows leave the event loop through a queue; a thread writes them in batches."""

from __future__ import annotations

import logging
import queue
import threading
import time

from storage import usage

log = logging.getLogger("gateway.writer")
FLUSH_SECONDS = 0.2
MAX_BATCH = 500


class UsageWriter:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[usage.UsageRecord | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
        self.last_error: str | None = None
        self.written = 0

    def start(self) -> None:
        self._thread.start()

    def put(self, record: usage.UsageRecord) -> None:
        """Called on the event loop: never blocks."""
        self._queue.put(record)

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued so far, then stop the thread."""
        if not self._thread.is_alive():
            return
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("usage writer did not finish within %.0f s", timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[usage.UsageRecord] = []
            deadline = time.monotonic() + FLUSH_SECONDS
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            if batch:
                self._write(batch)

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

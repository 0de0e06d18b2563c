"""Finished requests become log lines and usage rows in batches; a thread writes them.

The Python part of a batch (reading usage from bodies, pricing, formatting) runs on the event
loop, a slice at a time, every FLUSH_SECONDS; the thread does the SQLite and file work, which
releases the GIL. Python work on a second thread would fight the event loop for the GIL:
measured, that costs more than the work itself.

No row is dropped for another's sake, nor because the database is down for a while:
- The thread first appends a window's rows to the journal (addons/journal.py), with the rows the
  streams still running would leave: a SIGKILL loses at most the window being prepared.
- A batch that fails because of a row (one that cannot be stored: a bug, or a client string the
  sanitiser missed) is split in halves until the row is found; that row alone is counted lost
  and logged, without its content.
- A batch that fails because the database cannot be written now (locked, full, read-only, an I/O
  error) waits in memory, up to MAX_WAITING_ROWS rows and MAX_WAITING_BYTES, and is tried again
  with backoff; rows beyond that bound are in the journal only and are read back once the
  database works. A row is lost only when it is neither kept in memory nor journaled, and then
  it is counted: `status()` (for /health) and a log line at most once a second say so.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import peewee

from addons import journal
from addons.metering import Finished, access_line, make_record
from storage import prices, usage
from storage.models import database

log = logging.getLogger("gateway.writer")
FLUSH_SECONDS = 0.2
SLICE = 100  # finished requests prepared between two turns of the event loop
MAX_BATCH = 500
# What waits in memory while the database cannot be written, whichever bound comes first: 50,000
# rows (measured: 18 MB of Python objects for ordinary rows, under 40 MB with 256-character model
# names) or 32 MiB counted as the rows' journal lines (about 150 bytes for an ordinary row).
MAX_WAITING_ROWS = 50_000
MAX_WAITING_BYTES = 32 << 20
# The writer's own connection waits this long for another process's write lock (the others
# wait 5 s): a write that waits blocks the journal appends of the windows behind it.
BUSY_TIMEOUT_MS = 200
RETRY_SECONDS = (0.2, 5.0)  # backoff while the database cannot be written: first, longest
REPLAY_CHUNKS = 10  # journal chunks read back per turn of the thread, between the new windows
REPORT_SECONDS = 1.0  # at most one log line a second on waiting and lost rows

# Errors caused by a row's values, not by the database's state: the row is isolated.
# Everything else (sqlite3's OperationalError and DatabaseError: locked, full, read-only, I/O,
# corrupt) means the database cannot be written now: the rows wait.
ROW_ERRORS = (
    UnicodeError,
    ValueError,
    OverflowError,
    TypeError,
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    peewee.IntegrityError,
    peewee.DataError,
    peewee.InterfaceError,
    peewee.ProgrammingError,
)


class Prepared(NamedTuple):
    """One slice of a window, as the event loop hands it to the thread."""

    lines: str  # access log lines
    rows: list[tuple[usage.UsageRecord, bytes]]  # each row with its journal line
    running: bytes | None  # journal lines of the streams running now; None: not part of this slice


class Status(NamedTuple):
    """What /health and the log say of usage rows."""

    error: str | None  # why the database cannot be written now; None when it can
    waiting: int  # rows in memory not yet in the database
    journaled: int  # rows only in the journal, not yet in the database
    lost: int  # rows dropped since the start: unstorable, or neither kept nor journaled
    losing: bool  # new rows are being lost now: memory is full and the journal fails


class UsageWriter:
    def __init__(
        self,
        price_table: Callable[[], dict[str, prices.PriceRow]],
        journal_folder: Path | None = None,
        max_waiting_rows: int = MAX_WAITING_ROWS,
        max_waiting_bytes: int = MAX_WAITING_BYTES,
    ) -> None:
        self.price_table = price_table
        # Interrupted rows of the streams running now, with the last usage seen (addons/running.py).
        self.running: Callable[[], list[Finished]] = list
        self.journal_folder = journal_folder
        self.max_waiting_rows = max_waiting_rows
        self.max_waiting_bytes = max_waiting_bytes
        self.journal: journal.Journal | None = None
        self._pending: list[Finished] = []
        self._queue: queue.SimpleQueue[Prepared | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
        self._task: asyncio.Task | None = None
        self._running_lines: dict[int | None, tuple[tuple, bytes]] = {}
        # The thread's state; the event loop only reads it, through status().
        self._waiting: deque[tuple[usage.UsageRecord, bool, int]] = deque()  # row, journaled, size
        self._waiting_bytes = 0
        self._spilled = 0  # rows in the active journal file only
        self._journaled = 0  # rows in closed journal files, to read back
        self._closed: list[Path] = []  # this process's closed journal files, to read back
        self._reader: journal.Reader | None = None
        self._chunk: list[usage.UsageRecord] | None = None  # read back, not yet stored
        self._error: str | None = None
        self._retry_at = 0.0
        self._backoff = RETRY_SECONDS[0]
        self._lost = 0
        self._losing = False
        self._unreported: dict[str, int] = {}  # rows lost since the last log line, by cause
        self._reported_at = 0.0
        self._last_running: bytes = b""  # the running streams' lines last written
        self._close_by = 0.0
        self._lost_preparing = 0  # rows lost on the event loop (a bug in preparing them)

    # -- the event loop's side ---------------------------------------------------------------

    def start(self) -> None:
        """Called on the event loop."""
        if self.journal_folder is None and database.database not in (None, ":memory:"):
            # DATA_DIR/usage-journal with the default DATABASE_URL: beside the database.
            self.journal_folder = Path(database.database).resolve().parent / "usage-journal"
        if self.journal_folder is not None:
            try:
                self.journal = journal.Journal(self.journal_folder)
            except OSError as e:
                log.error("usage journal %s unusable (%s): rows wait in memory only", self.journal_folder, e)
        self._thread.start()
        self._task = asyncio.get_running_loop().create_task(self._prepare_batches())

    def put(self, request: Finished) -> None:
        """Called on the event loop: never blocks."""
        self._pending.append(request)

    def status(self) -> Status:
        return Status(
            self._error,
            len(self._waiting),
            self._spilled + self._journaled,
            self._lost + self._lost_preparing,
            self._losing,
        )

    def close(self, timeout: float = 10.0) -> None:
        """Write everything finished so far, then stop the thread. What the database does not take
        within `timeout` stays in the journal for the next start."""
        if self._task:
            self._task.cancel()
        if not self._thread.is_alive():
            return
        batch, self._pending = self._pending, []
        self._close_by = time.monotonic() + max(0.0, timeout - 1.0)
        self._hand_over(batch, self._streams())
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("usage writer did not finish within %.0f s", timeout)

    async def _prepare_batches(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            batch, self._pending = self._pending, []
            streams = self._streams()
            if not batch:
                if streams or self._running_lines:  # ...or streams have just ended
                    self._hand_over([], streams)
                continue
            for start in range(0, len(batch), SLICE):
                last = start + SLICE >= len(batch)
                self._hand_over(batch[start : start + SLICE], streams if last else None)
                await asyncio.sleep(0)  # let requests through between slices

    def _streams(self) -> list[Finished]:
        try:
            return self.running()
        except Exception:  # a bug: the streams' rows are not journaled this window, nothing else
            log.exception("listing the running streams failed")
            return []

    def _hand_over(self, batch: list[Finished], streams: list[Finished] | None) -> None:
        try:
            self._queue.put(self._prepare(batch, streams))
        except Exception:  # a bug: lose this slice's rows, counted, but keep metering the others
            log.exception("preparing %d usage row(s) failed; they are lost", len(batch))
            self._lost_preparing += len(batch)

    def _prepare(self, batch: list[Finished], streams: list[Finished] | None) -> Prepared:
        batch = [f.with_body_read() for f in batch]
        table = self.price_table()
        rows = [make_record(f, table) for f in batch if f.metered]
        return Prepared(
            "".join(map(access_line, batch)),
            [(r, journal.encode(r)) for r in rows],
            None if streams is None else self._running_journal(streams, table),
        )

    def _running_journal(self, streams: list[Finished], table: dict[str, prices.PriceRow]) -> bytes:
        """The journal lines of the streams running now; a line is made again only when its
        stream's usage or model changed since the last window."""
        before, self._running_lines = self._running_lines, {}
        for f in streams:
            seen = (f.usage, f.model, f.status)
            kept = before.get(f.uid)
            if kept is None or kept[0] != seen:
                kept = (seen, journal.encode(make_record(f, table), running=True))
            self._running_lines[f.uid] = kept
        return b"".join(line for _, line in self._running_lines.values())

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        self._connect()
        if self.journal is not None and (self.journal.inherited or self.journal.inherited_running):
            self._read_back_inherited()
        closing = False
        while not closing:
            timeout = max(0.0, self._retry_at - time.monotonic()) if self._work_left() else None
            if self._unreported:
                timeout = min(timeout if timeout is not None else REPORT_SECONDS, REPORT_SECONDS)
            try:
                items = [self._queue.get(timeout=timeout)]
            except queue.Empty:
                items = []
            while not self._queue.empty():
                items.append(self._queue.get())
            for item in items:
                if item is None:
                    closing = True
                else:
                    self._take(item)
            self._store()
            self._report()
        self._finish()
        try:
            database.close()  # this thread's connection
        except Exception:
            pass

    def _connect(self) -> None:
        try:
            database.connect(reuse_if_open=True)
            database.execute_sql(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        except Exception as e:  # the database cannot be opened now: rows wait, tried later
            self._error = _describe(e)

    def _read_back_inherited(self) -> None:
        j = self.journal
        try:
            self._journaled += journal.count_rows(j.inherited + j.inherited_running)
        except OSError:
            pass
        log.info(
            "usage journal: %d file(s) left by an earlier run, written to the database now",
            len(j.inherited) + len(j.inherited_running),
        )
        self._reader = journal.Reader(j.inherited, MAX_BATCH, running=j.inherited_running)

    def _work_left(self) -> bool:
        return bool(self._waiting or self._spilled or self._closed or self._reader or self._chunk)

    def _take(self, item: Prepared) -> None:
        if item.lines:
            try:
                sys.stderr.write(item.lines)
                sys.stderr.flush()
            except (OSError, ValueError):
                pass  # the log's reader is gone: the rows still count
        data = b"".join(line for _, line in item.rows)
        journaled = False
        if self.journal is not None:
            fresh = not self._waiting and not self._spilled  # all the active file holds is stored
            journaled = self.journal.append(data, fresh, sync=self._error is not None)
            if item.running is not None:
                self.journal.write_running(item.running)
                self._last_running = item.running
        lost = 0
        for record, line in item.rows:
            size = len(line)
            room = len(self._waiting) < self.max_waiting_rows
            if room and self._waiting_bytes + size <= self.max_waiting_bytes:
                self._waiting.append((record, journaled, size))
                self._waiting_bytes += size
            elif journaled:
                self._spilled += 1
            else:
                lost += 1
        if item.rows:
            self._losing = lost > 0
        if lost:
            self._lose(lost, "memory full and the journal failing")

    def _store(self) -> None:
        """Write what waits, then what the journal holds; stop at the first sign the database
        cannot be written, and try again after a backoff."""
        if time.monotonic() < self._retry_at:
            return
        while self._waiting:
            batch = [record for record, _, _ in itertools.islice(self._waiting, MAX_BATCH)]
            settled, error = self._settle(batch)
            for _ in range(settled):
                _, _, size = self._waiting.popleft()
                self._waiting_bytes -= size
            if error:
                return self._failed(error)
        if self._spilled and self.journal is not None:
            # Rows the memory could not hold are in the active file: read it back from the start.
            self._journaled += self.journal.active_rows
            closed = self.journal.close_active()
            self._closed += [closed] if closed else []
            self._spilled = 0
        for _ in range(REPLAY_CHUNKS):
            if self._chunk is None:
                self._chunk = self._next_chunk()
                if self._chunk is None:
                    break
            settled, error = self._settle(self._chunk)
            self._journaled = max(0, self._journaled - settled)
            self._chunk = self._chunk[settled:] or None
            if error:
                return self._failed(error)
        self._recovered()

    def _next_chunk(self) -> list[usage.UsageRecord] | None:
        while True:
            if self._reader is None:
                if not self._closed:
                    return None
                self._reader, self._closed = journal.Reader(self._closed, MAX_BATCH), []
            chunk = self._reader.next_chunk()
            if chunk is not None:
                return chunk
            # Everything in those files is stored now.
            if self._reader.unreadable:
                self._lose(self._reader.unreadable, "unreadable lines in the usage journal")
            self.journal.remove(self._reader.paths)
            self._reader = None
            if not self._closed:
                self._journaled = 0

    def _settle(self, batch: list[usage.UsageRecord]) -> tuple[int, str | None]:
        """Store `batch`; (rows settled from its start: stored, or lost alone; why the database
        failed, or None)."""
        try:
            usage.record_batch(batch)
        except ROW_ERRORS as e:
            if len(batch) == 1:
                self._lose(1, f"a usage row could not be stored ({type(e).__name__})")
                return 1, None
            middle = len(batch) // 2
            settled, error = self._settle(batch[:middle])
            if error:
                return settled, error
            more, error = self._settle(batch[middle:])
            return settled + more, error
        except Exception as e:  # the database cannot be written now
            return 0, _describe(e)
        return len(batch), None

    def _failed(self, error: str) -> None:
        if self._error is None:
            log.warning("usage rows cannot be written to the database (%s); they wait", error)
            self._reported_at = time.monotonic()
        self._error = error
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, RETRY_SECONDS[1])

    def _recovered(self) -> None:
        if self._error is not None:
            log.info("usage rows are written to the database again")
        self._error = None
        self._retry_at = 0.0
        self._backoff = RETRY_SECONDS[0]

    def _lose(self, count: int, why: str) -> None:
        """Count rows lost (never their content); the log says so at the next report."""
        self._lost += count
        self._unreported[why] = self._unreported.get(why, 0) + count
        self._report()

    def _report(self, force: bool = False) -> None:
        """At most once a second: rows lost since the last report, or rows waiting."""
        now = time.monotonic()
        if not force and now - self._reported_at < REPORT_SECONDS:
            return
        s = self.status()
        if self._unreported:
            for why, count in self._unreported.items():
                log.error("%d usage row(s) lost: %s (%d since the start)", count, why, s.lost)
            self._unreported = {}
        elif s.error is None:
            return
        if s.error is not None:
            log.warning(
                "usage rows wait for the database (%s): %d in memory, %d journaled",
                s.error, s.waiting, s.journaled,
            )
        self._reported_at = now

    def _finish(self) -> None:
        """At close: keep trying until the deadline close() set; what is left stays journaled."""
        while self._error is not None and self._waiting and time.monotonic() < self._close_by:
            time.sleep(max(0.0, min(self._retry_at, self._close_by) - time.monotonic()))
            self._store()
        if self.journal is not None and self._error is None and not self._work_left():
            if not self._last_running:  # nothing runs on: the journal is not needed
                self.journal.discard_active()
        elif self._waiting or self._spilled or self._journaled:
            kept = [journaled for _, journaled, _ in self._waiting]
            if unjournaled := kept.count(False):
                self._lose(unjournaled, "the database and the journal failed at the stop")
            log.error(
                "stopping with usage rows not in the database: %d in the journal (%s), written "
                "at the next start", kept.count(True) + self._spilled + self._journaled,
                self.journal.folder if self.journal else "none",
            )
        if self.journal is not None:
            self.journal.release()
        self._report(force=True)


def _describe(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"

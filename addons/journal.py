"""The usage journal: rows not yet safe in the database, on disk in DATA_DIR/usage-journal/.

Every flush window, before it writes to the database, the writer thread appends to the active
file (`NNNNNN.jsonl` in a folder of this process's own) the rows of the requests finished in that
window, and rewrites `running.jsonl` there with the interrupted row each stream still running
would leave, with the last usage seen. So a SIGKILL,
or a database that cannot be written, leaves the rows on disk: they are written at the next
start, or once the database works again, and the files are then removed. A replay is idempotent
(usage.uid is unique): a row the database already has costs nothing.

One line per row: b"d " (a finished request) or b"r " (a stream still running), then a JSON
array of the row's fields (LINE_FIELDS). Metadata only, as in the database: never content.

The active file is emptied by the next append once everything in it is in the database, so in
normal operation it holds about one window of rows. While the database fails it grows, up to
MAX_BYTES for all files together; it is then closed, and read back once the database works.

fsync: an append is fdatasync'd only while the database fails (the journal is then the rows'
only copy). Otherwise the rows reach SQLite milliseconds later, and SQLite itself runs with
synchronous=NORMAL: a power cut may lose the last moments either way; a SIGKILL loses nothing
that was written (the kernel holds it).
"""

from __future__ import annotations

import fcntl
import json
import logging
import operator
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from storage.usage import UsageRecord

log = logging.getLogger("gateway.journal")
MAX_BYTES = 1 << 30  # 1 GiB, all files: about seven million ordinary rows (150 bytes a line)
DONE, RUNNING = b"d ", b"r "
_NUMBERED = 6  # digits of a file's number
RUNNING_FILE = "running.jsonl"


# A line's fields, in this order (a JSON array: a third cheaper to make than an object). Fixed
# here, not taken from UsageRecord: a release that changes them must name a new line format.
LINE_FIELDS = (
    "ts", "key_id", "endpoint", "model", "status", "prompt_tokens", "completion_tokens", "cached_tokens",
    "total_tokens", "audio_seconds", "request_bytes", "cost_eur", "duration_ms", "streamed", "complete",
    "default_price", "uid", "refused",
)
_values = operator.attrgetter(*LINE_FIELDS[1:])
# One encoder, made once: json.dumps() with any option builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode(record: UsageRecord, running: bool = False) -> bytes:
    """One journal line; made on the event loop with the rest of a row's Python work (about 4 µs).
    The time as Unix seconds: exact to the microsecond, and cheaper than formatting it."""
    line = _ENCODER.encode((record.ts.timestamp(), *_values(record)))
    return (RUNNING if running else DONE) + line.encode() + b"\n"


def decode(line: bytes) -> tuple[UsageRecord, bool] | None:
    """(row, running) from a journal line; None for a torn or foreign line."""
    kind = line[:2]
    if kind not in (DONE, RUNNING):
        return None
    try:
        values = json.loads(line[2:])
        if not isinstance(values, list) or len(values) != len(LINE_FIELDS):
            return None
        row = dict(zip(LINE_FIELDS, values, strict=True))
        row["ts"] = datetime.fromtimestamp(row["ts"], UTC)
        return UsageRecord(**row), kind == RUNNING
    except (ValueError, TypeError, OverflowError, OSError):
        return None


class Journal:
    """This process's journal files, and the ones dead processes left.

    Each process writes in a folder of its own under `root`, holding an exclusive lock (flock) on
    its `lock` file while it lives; the kernel lets the lock go however the process ends, SIGKILL
    included. A folder whose lock can be taken is a dead process's: its files are read back by
    whoever takes it (`inherited`, `inherited_running`) and the folder is removed afterwards. So
    two gateways on one DATA_DIR (a debugging mitmweb beside `make run`) never read each other's
    live files.
    """

    def __init__(self, root: Path, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        root.mkdir(parents=True, exist_ok=True)
        self.folder = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"
        self.folder.mkdir()
        self._lock: int | None = _locked(self.folder)
        if self._lock is None:
            raise OSError(f"cannot lock {self.folder}")
        self._inherited_folders: list[tuple[Path, int]] = []
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and p != self.folder):
            if (fd := _locked(folder)) is not None:
                self._inherited_folders.append((folder, fd))
        # What dead processes left, read back first: their running streams' rows, their rows.
        folders = [folder for folder, _ in self._inherited_folders]
        self.inherited_running = [f / RUNNING_FILE for f in folders if (f / RUNNING_FILE).exists()]
        self.inherited = sorted(p for f in folders for p in f.glob("*.jsonl") if p.name != RUNNING_FILE)
        self._closed_bytes = sum(p.stat().st_size for p in self.inherited + self.inherited_running)
        self._number = 1
        self._active_bytes = 0
        self.active_rows = 0  # rows appended to the active file since it was last emptied
        self._running_bytes = 0

    @property
    def active(self) -> Path:
        return self.folder / f"{self._number:0{_NUMBERED}d}.jsonl"

    def append(self, data: bytes, fresh: bool, sync: bool) -> bool:
        """Add lines to the active file, emptying it first if `fresh` (all it holds is stored).

        False when they could not be written (a full disk, MAX_BYTES reached): they are then
        only in memory. Opened for each append, once a window: a file removed or replaced
        meanwhile is simply made anew.
        """
        if not data and not fresh:
            return True
        kept = 0 if fresh else self._active_bytes
        if self._closed_bytes + self._running_bytes + kept + len(data) > self.max_bytes:
            return False
        try:
            with open(self.active, "wb" if fresh else "ab") as f:
                f.write(data)
                f.flush()
                if sync:
                    os.fdatasync(f.fileno())
        except OSError as e:
            log.debug("journal append failed: %s", e)
            # A torn line may remain; it is skipped when read back.
            self._active_bytes = kept + len(data)
            self.active_rows = 0 if fresh else self.active_rows
            return False
        self._active_bytes = kept + len(data)
        self.active_rows = (0 if fresh else self.active_rows) + data.count(b"\n")
        return True

    def write_running(self, data: bytes) -> None:
        """Replace running.jsonl with the rows of the streams running now (renamed into place:
        a crash leaves the old version or the new one)."""
        path = self.folder / RUNNING_FILE
        try:
            if not data:
                if self._running_bytes:
                    path.unlink(missing_ok=True)
                    self._running_bytes = 0
                return
            temporary = path.with_suffix(".tmp")
            temporary.write_bytes(data)
            os.replace(temporary, path)
            self._running_bytes = len(data)
        except OSError as e:
            log.debug("writing %s failed: %s", path, e)

    def close_active(self) -> Path | None:
        """Close the active file so that it can be read back; the next append starts a new one."""
        path = self.active
        self._number += 1
        self._closed_bytes += self._active_bytes
        self._active_bytes = self.active_rows = 0
        return path if path.exists() else None

    def remove(self, paths: list[Path]) -> None:
        """Remove files read back and stored, and the dead processes' folders once emptied."""
        for path in paths:
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            self._closed_bytes = max(0, self._closed_bytes - size)
        for folder, fd in list(self._inherited_folders):
            if not any(folder.glob("*.jsonl")):  # all read back: the dead process's folder goes
                _remove_folder(folder, fd)
                self._inherited_folders.remove((folder, fd))

    def discard_active(self) -> None:
        """Everything in the active file is stored and no stream runs: remove this process's
        folder (a clean stop)."""
        self._active_bytes = self.active_rows = self._running_bytes = 0
        _remove_folder(self.folder, self._lock)
        self._lock = None

    def release(self) -> None:
        """The writer has stopped: let the next process take what is left here."""
        for _, fd in self._inherited_folders:
            os.close(fd)
        self._inherited_folders = []
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _locked(folder: Path) -> int | None:
    """An open descriptor holding `folder`'s lock, or None if a live process holds it."""
    try:
        fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _remove_folder(folder: Path, fd: int) -> None:
    try:
        for path in folder.iterdir():
            path.unlink(missing_ok=True)
        folder.rmdir()
    except OSError as e:
        log.debug("removing %s failed: %s", folder, e)
    os.close(fd)


def count_rows(paths: list[Path]) -> int:
    """The rows in journal files, counted without parsing them (for /health)."""
    count = 0
    for path in paths:
        with open(path, "rb") as f:
            count += sum(1 for line in f if line[:2] in (DONE, RUNNING))
    return count


class Reader:
    """Reads journal files back in chunks of rows, oldest first.

    `running` files are an earlier process's running.jsonl: a stream it left running has no row
    but its line there, given (after every finished row) as an interrupted row, unless a
    finished row of the same request turns up, or is in the database already.
    """

    def __init__(self, paths: list[Path], chunk: int, running: list[Path] = ()) -> None:
        self.paths = [*running, *paths]
        self.unreadable = 0  # torn or foreign lines skipped
        self._chunks = self._read(list(running), paths, chunk)

    def next_chunk(self) -> list[UsageRecord] | None:
        return next(self._chunks, None)

    def _lines(self, path: Path) -> Iterator[tuple[UsageRecord, bool]]:
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return
        with f:
            for line in f:
                if (decoded := decode(line)) is not None:
                    yield decoded
                elif line.strip():
                    self.unreadable += 1

    def _read(self, running: list[Path], paths: list[Path], chunk: int) -> Iterator[list[UsageRecord]]:
        cut = {record.uid: record for path in running for record, _ in self._lines(path)}
        batch: list[UsageRecord] = []
        for path in paths:
            for record, _ in self._lines(path):
                cut.pop(record.uid, None)  # it finished after all: this is its row
                batch.append(record)
                if len(batch) >= chunk:
                    yield batch
                    batch = []
        batch += [replace(record, complete=False) for record in cut.values()]
        for start in range(0, len(batch), chunk):
            yield batch[start : start + chunk]

"""addons/writer.py and addons/journal.py in-process, against a real SQLite file and real journal
files: rows wait out an unwritable database, spill to the journal beyond the memory bound, are
counted when both fail, and a journal left behind is written at the next start.

The database is made unwritable the way another process would: it holds the write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from dataclasses import fields

import pytest

from addons import journal
from addons.health import Health
from addons.metering import Finished
from addons.usage import Usage as Tokens
from addons.writer import UsageWriter
from storage import usage
from storage.models import Usage, utcnow

BASE = 2**61


def finished(i: int, model: str = "gpt-oss-120b", tokens: int = 2) -> Finished:
    tokens_used = Tokens(1, tokens - 1, 0, tokens)
    return Finished(time.time(), "POST", "/v1/chat/completions", "key_a", 200, tokens_used, model,
                    True, False, 10, 5, True, uid=BASE + i)


@contextlib.contextmanager
def write_lock(path):
    """Another process's write lock, held past the writer's busy timeout."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


async def until(check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not met within {timeout} s")
        await asyncio.sleep(0.05)
    return result


@pytest.fixture
def folder(db_path):
    return db_path.parent / "usage-journal"


def test_beyond_the_memory_bound_rows_wait_in_the_journal_and_all_arrive(db_path, folder):
    writer = UsageWriter(dict, journal_folder=folder, max_waiting_rows=10)

    async def scenario():
        writer.start()
        with write_lock(db_path):
            for i in range(30):
                writer.put(finished(i))
            s = await until(lambda: (s := writer.status()).error and s.waiting + s.journaled == 30 and s)
            assert (s.waiting, s.journaled, s.lost) == (10, 20, 0), "beyond 10 rows: in the journal only"
        await until(lambda: Usage.select().count() == 30)
        await until(lambda: writer.status()[1:] == (0, 0, 0, False))
        writer.close()

    asyncio.run(scenario())
    assert sorted(u.uid - BASE for u in Usage.select()) == list(range(30)), "each row once"
    assert not list(folder.iterdir()), "the journal is removed once written"


def test_a_row_is_lost_only_when_memory_and_journal_both_fail_and_then_it_is_counted(db_path, folder):
    writer = UsageWriter(dict, journal_folder=folder, max_waiting_rows=5)
    health = Health(("127.0.0.1", 9))
    health.upstream_ok = health.database_ok = True

    async def scenario():
        writer.start()
        with write_lock(db_path):
            for i in range(5):
                writer.put(finished(i))
            await until(lambda: writer.status().waiting == 5)
            assert health.report(writer.status())[0] == 200, "waiting rows: degraded, still serving"
            active = writer.journal.active
            active.unlink()
            active.mkdir()  # the journal cannot be written any more
            for i in range(5, 8):
                writer.put(finished(i))
            s = await until(lambda: (s := writer.status()).lost and s)
            assert (s.waiting, s.journaled, s.lost, s.losing) == (5, 0, 3, True)
            status, body = health.report(s)
            assert status == 503 and body["usage"] == {"waiting": 5, "journaled": 0, "lost": 3}
        await until(lambda: Usage.select().count() == 5)
        active.rmdir()
        writer.put(finished(8))
        await until(lambda: Usage.select().count() == 6)
        assert writer.status().lost == 3 and not writer.status().losing
        writer.close()

    asyncio.run(scenario())


def test_rows_the_database_refuses_at_the_stop_stay_in_the_journal_for_the_next_start(db_path, folder):
    async def first_run():
        writer = UsageWriter(dict, journal_folder=folder)
        writer.start()
        with write_lock(db_path):
            for i in range(5):
                writer.put(finished(i))
            writer.close(timeout=2)
        return writer.status()

    stopped = asyncio.run(first_run())
    assert Usage.select().count() == 0 and stopped.lost == 0

    async def next_run():
        writer = UsageWriter(dict, journal_folder=folder)
        writer.start()
        await until(lambda: Usage.select().count() == 5)
        await until(lambda: writer.status().journaled == 0)
        writer.close()

    asyncio.run(next_run())
    assert sorted(u.uid - BASE for u in Usage.select()) == list(range(5))


def record(i: int, tokens: int = 2, complete: bool = True) -> usage.UsageRecord:
    return usage.UsageRecord(ts=utcnow(), key_id="key_a", endpoint="/v1/chat/completions", model="m",
                             status=200, total_tokens=tokens, streamed=True, complete=complete, uid=BASE + i)


def test_a_journal_left_by_a_crash_is_written_once_with_the_streams_it_cut(db_path, folder):
    # What a SIGKILL leaves: finished rows (one already stored), the running streams' last usage
    # (one of them finished after all), and a torn last line.
    usage.record_batch([record(1)])
    dead = folder / "20261120-101010-4242-abcdef"  # a process that is gone: nobody holds its lock
    dead.mkdir(parents=True)
    (dead / "000001.jsonl").write_bytes(
        journal.encode(record(1)) + journal.encode(record(2)) + journal.encode(record(3, tokens=9))
        + journal.encode(record(5))[:40]
    )
    (dead / journal.RUNNING_FILE).write_bytes(
        journal.encode(record(3, tokens=4, complete=False), running=True)
        + journal.encode(record(4, tokens=3, complete=False), running=True)
    )

    async def scenario():
        writer = UsageWriter(dict, journal_folder=folder)
        writer.start()
        await until(lambda: Usage.select().count() == 4)
        await until(lambda: writer.status().journaled == 0)
        writer.close()
        return writer.status()

    status = asyncio.run(scenario())
    rows = {u.uid - BASE: u for u in Usage.select()}
    assert sorted(rows) == [1, 2, 3, 4]
    assert rows[3].complete and rows[3].total_tokens == 9, "the finished row, not the stream's last snapshot"
    assert not rows[4].complete and rows[4].total_tokens == 3, "a cut stream: interrupted, its last usage"
    assert status.lost == 1, "the torn line is counted"
    assert not dead.exists() and not list(folder.iterdir()), "read back, then removed"


def test_a_journal_line_carries_every_field_of_a_usage_row():
    # A field added to UsageRecord must be added to the journal's line format too.
    assert set(journal.LINE_FIELDS) == {f.name for f in fields(usage.UsageRecord)}
    row = record(1, tokens=7, complete=False)
    assert journal.decode(journal.encode(row, running=True)) == (row, True)
    assert journal.decode(b"d [1, 2]\n") is None and journal.decode(b"x\n") is None


def test_a_live_process_journal_is_never_read_back_by_another(tmp_path):
    # Two gateways on one DATA_DIR (a debugging mitmweb beside `make run`): each keeps its own.
    first = journal.Journal(tmp_path)
    assert first.append(journal.encode(record(1)), fresh=True, sync=False)
    second = journal.Journal(tmp_path)
    assert second.inherited == [], "the first still runs"
    first.release()  # as its process ending would
    third = journal.Journal(tmp_path)
    assert third.inherited == [first.active]
    fourth = journal.Journal(tmp_path)
    assert fourth.inherited == [], "taken by the third already"
    for j in (second, third, fourth):
        j.release()

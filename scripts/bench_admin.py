"""Benchmark the admin's usage tab on a database with many usage rows (default 1,000,000).

    .venv/bin/python scripts/bench_admin.py [--rows N] [--days D] [--keys K]

Fills a temporary database through storage.usage.record_batch, as the gateway's writer does
(so the daily rollup is kept the same way), then times the usage page for the last 30 days,
its CSV export and the keys page with Flask's test client, logged in.
"""

from __future__ import annotations

import random
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from admin import create_app  # noqa: E402
from storage import config, keys, usage  # noqa: E402
from storage.db import close_database, open_database  # noqa: E402
from storage.models import DailyUsage  # noqa: E402
from storage.usage import UsageRecord  # noqa: E402

PASSWORD = "benchmark-password"
MODELS = ("gpt-oss-120b", "gemma-3-27b", "qwen3-coder-30b-a3b", "qwen3-embedding-4b", "whisper-large-v3")
BATCH = 10_000


def fill(rows: int, days: int, key_count: int) -> None:
    key_ids = [keys.create_key(f"bench key {i}")[0].key_id for i in range(key_count)]
    now = datetime.now(UTC)
    rnd = random.Random(42)
    written = 0
    started = time.perf_counter()
    while written < rows:
        batch = []
        for _ in range(min(BATCH, rows - written)):
            prompt, completion = rnd.randint(10, 4000), rnd.randint(0, 1000)
            batch.append(
                UsageRecord(
                    ts=now - timedelta(seconds=rnd.uniform(0, days * 86400)),
                    key_id=rnd.choice(key_ids),
                    endpoint="/v1/chat/completions",
                    model=rnd.choice(MODELS),
                    status=200 if rnd.random() > 0.02 else 502,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    total_tokens=prompt + completion,
                    cost_eur=(prompt + completion) * 5e-6,
                    duration_ms=rnd.randint(50, 5000),
                )
            )
        usage.record_batch(batch)
        written += len(batch)
        if written % 100_000 == 0:
            click.echo(f"  {written:,} rows ({time.perf_counter() - started:.0f} s)")


def timed(client, url: str, runs: int) -> tuple[float, float, int]:
    """Median and max in milliseconds, and the response size."""
    client.get(url)  # warm: templates compiled, pages cached by SQLite
    times, size = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (url, response.status_code)
        size = len(response.data)
    return statistics.median(times), max(times), size


@click.command()
@click.option("--rows", default=1_000_000, show_default=True, help="Usage rows to write.")
@click.option("--days", default=90, show_default=True, help="Spread the rows over this many past days.")
@click.option("--keys", "key_count", default=50, show_default=True, help="Number of API keys.")
@click.option("--runs", default=20, show_default=True, help="Timed requests per page.")
def main(rows: int, days: int, key_count: int, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = config.load(
            {"DATA_DIR": tmp, "ADMIN_PASSWORD": PASSWORD, "UPSTREAM_URL": "http://127.0.0.1:9"}
        )
        open_database(settings.database_url)
        click.echo(f"writing {rows:,} usage rows over {days} days for {key_count} keys ...")
        start = time.perf_counter()
        fill(rows, days, key_count)
        click.echo(
            f"written in {time.perf_counter() - start:.0f} s; "
            f"daily rollup rows: {DailyUsage.select().count():,}"
        )

        app = create_app(settings, {"TESTING": True})
        client = app.test_client()
        page = client.get("/admin/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        login = client.post("/admin/login", data={"csrf_token": token, "password": PASSWORD})
        assert login.status_code == 302, login.status_code

        today = datetime.now(UTC).date()
        everything = f"/admin/usage?period=custom&start={today - timedelta(days=days)}&end={today}"
        click.echo(f"timing {runs} requests each (median / max):")
        for url in (
            "/admin/usage?period=30d",
            "/admin/usage?period=month",
            everything,
            "/admin/usage.csv?period=30d",
            "/admin/keys",
        ):
            median, worst, size = timed(client, url, runs)
            click.echo(f"  {url:<60} {median:7.1f} ms / {worst:7.1f} ms  ({size:,} bytes)")
        close_database()


if __name__ == "__main__":
    main()

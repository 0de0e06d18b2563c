"""The key CLI against a running gateway, and uploads that stream through without being held."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from tests import procs


def cli(gateway, *args: str) -> dict | list:
    result = subprocess.run(
        [sys.executable, "scripts/manage_keys.py", *args, "--json"],
        cwd=procs.ROOT,
        env=procs.base_env(DATABASE_URL=gateway.database_url),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_keys_made_by_the_cli_apply_in_the_running_gateway(gateway):
    created = cli(gateway, "create", "--name", "from the cli")
    gateway.wait_for_key(created["api_key"])
    r = httpx.post(
        f"{gateway.url}/v1/embeddings",
        headers={"authorization": f"Bearer {created['api_key']}"},
        json={"model": "qwen3-embedding-4b", "input": "x"},
    )
    assert r.status_code == 200

    def mine():  # the gateway writes usage in batches, a fraction of a second later
        rows = cli(gateway, "usage", "--by", "key")["rows"]
        return [row for row in rows if row["key_id"] == created["key_id"] and row["requests"] >= 1]

    assert procs.wait_until(mine, timeout=5), "the usage the gateway wrote is what the CLI reads"

    cli(gateway, "revoke", created["key_id"])
    gateway.wait_for_key(created["api_key"], accepted=False)
    rotated = cli(gateway, "enable", created["key_id"]) and cli(gateway, "rotate", created["key_id"])
    gateway.wait_for_key(rotated["api_key"])
    gateway.wait_for_key(created["api_key"], accepted=False)


def peak_rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


def test_a_25_mb_upload_streams_through_without_being_held(start_gateway, tmp_path):
    gateway = start_gateway()  # MAX_BODY_MB defaults to 30
    key_id, plaintext = gateway.new_key()
    before = peak_rss_kb(gateway.proc.popen.pid)
    audio = tmp_path / "long.mp3"
    audio.write_bytes(b"\x01" * (25 * 1024 * 1024))
    with audio.open("rb") as f:
        r = httpx.post(
            f"{gateway.url}/v1/audio/transcriptions",
            headers={"authorization": f"Bearer {plaintext}"},
            files={"file": ("long.mp3", f)},
            data={"model": "whisper-large-v3"},
            timeout=60,
        )
    assert r.status_code == 200
    [row] = gateway.usage_rows(key_id)
    assert row.request_bytes > 25 * 1024 * 1024 and row.model == "whisper-large-v3"
    grown_mb = (peak_rss_kb(gateway.proc.popen.pid) - before) / 1024
    assert grown_mb < 12, f"the gateway's peak memory grew by {grown_mb:.0f} MB for a 25 MB upload"

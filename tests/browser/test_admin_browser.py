"""The admin in a real browser, through the real gateway: the operator's whole daily loop."""

from __future__ import annotations

import csv
import time
from datetime import UTC, datetime

import openai
import pytest
from openai import OpenAI
from playwright.sync_api import expect

from tests.browser.conftest import ADMIN_PASSWORD, SCREENSHOTS

CHAT_COST = "€0.000145"  # 29 tokens of the fake upstream's sample at €5 per 1M


def shoot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


def chat(base_url: str, key: str):
    client = OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=10)
    return client.chat.completions.create(model="gpt-oss-120b", messages=[{"role": "user", "content": "Hi"}])


def wait_for_text(page, url: str, selector: str, text: str, timeout: float = 10.0) -> None:
    """Reload `url` until `selector` shows `text`: the gateway writes usage in batches."""
    deadline = time.monotonic() + timeout
    while True:
        page.goto(url)
        if text in page.inner_text(selector):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{selector} never showed {text!r}: {page.inner_text(selector)!r}")
        time.sleep(0.3)


def test_operator_daily_loop(page, stack):
    problems = []
    # A refused login answers 401, which the console reports; anything else is a fault (a CSP
    # violation, a script error).
    def console(message):
        if message.type == "error" and "status of 401" not in message.text:
            problems.append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda e: problems.append(str(e)))
    admin = f"{stack.url}/admin"

    # Log in through the gateway's /admin route.
    page.goto(admin)
    assert page.url.startswith(f"{admin}/login")
    shoot(page, "0-login")
    page.fill("#password", "wrong password here")
    page.click("button:has-text('Log in')")
    assert "Wrong password" in page.inner_text(".flashes")
    page.fill("#password", ADMIN_PASSWORD)
    page.click("button:has-text('Log in')")
    assert page.url == f"{admin}/keys"

    # Create a key: shown once, with a copy button that works.
    page.fill("#name", "browser test")
    page.fill("#rate_limit", "50")
    page.click("#create-key button[type=submit]")
    key = page.input_value("#new-key")
    assert key.startswith("pmg_") and len(key) == 47
    page.click("button[data-copy='new-key']")
    expect(page.locator("button[data-copy='new-key']")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == key
    assert f"{stack.url}/v1/models" in page.inner_text("#try-curl"), "examples use the gateway's address"
    shoot(page, "1-key-created")
    page.click("text=Done, back to the keys")
    row = page.locator("tr", has_text="browser test")
    assert "active" in row.inner_text() and key not in page.content()

    # Use it with the openai package through the gateway.
    answer = chat(stack.url, key)
    assert answer.choices[0].message.content == "Hello there! How can I help?"

    # The request and its cost appear on the usage tab and in the key list.
    wait_for_text(page, f"{admin}/usage?period=today", "#total-spend", CHAT_COST)
    assert page.inner_text("#total-requests") == "1"
    by_key = page.inner_text("#by-key")
    assert "browser test" in by_key and CHAT_COST in by_key
    assert "gpt-oss-120b" in page.inner_text("#by-model")
    page.goto(f"{admin}/usage")
    shoot(page, "2-usage")
    page.goto(f"{admin}/keys")
    row = page.locator("tr", has_text="browser test")
    assert CHAT_COST in row.inner_text() and datetime.now(UTC).strftime("%Y-%m-%d") in row.inner_text()
    shoot(page, "3-keys")

    # Revoke it: the next call fails with 401 within a second.
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button:has-text('Revoke')").click()
    assert "Revoked browser test" in page.inner_text(".flashes")
    assert "revoked" in page.locator("tr", has_text="browser test").inner_text()
    revoked_at, calls = time.monotonic(), 1
    while True:
        try:
            chat(stack.url, key)
        except openai.AuthenticationError as exc:
            assert exc.status_code == 401
            break
        # Accepted in the moment before the gateway saw the change: metered like any call.
        calls += 1
        assert time.monotonic() - revoked_at < 1.5, "the gateway still accepts the revoked key"
        time.sleep(0.1)

    # Export the CSV of what is shown and check its rows.
    wait_for_text(page, f"{admin}/usage?period=today", "#total-requests", str(calls))
    with page.expect_download() as download:
        page.click("#export-csv")
    path = download.value.path()
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    [mine] = [r for r in rows if r["key_name"] == "browser test"]
    assert mine["day"] == datetime.now(UTC).date().isoformat()
    assert (mine["model"], mine["requests"], mine["errors"]) == ("gpt-oss-120b", str(calls), "0")
    assert (int(mine["prompt_tokens"]), int(mine["completion_tokens"])) == (21 * calls, 8 * calls)
    assert int(mine["total_tokens"]) == 29 * calls
    assert float(mine["cost_eur"]) == pytest.approx(0.000145 * calls)

    # The other tabs.
    page.goto(f"{admin}/settings")
    status = page.inner_text("#status")
    assert "privatemode-proxy: answering" in status
    assert "Attestation of Privatemode: succeeded" in status
    assert "AMD SEV-SNP guest: " in status
    shoot(page, "4-settings")
    page.goto(f"{admin}/docs")
    assert page.input_value("#base-url") == f"{stack.url}/v1"
    assert f'base_url="{stack.url}/v1"' in page.inner_text("#example-python")
    assert "gpt-oss-120b" in page.inner_text("#models-table")
    shoot(page, "5-docs")
    page.goto(f"{admin}/audit")
    audit = page.inner_text("#audit-table")
    for action in ("login.failed", "login", "key.created", "key.revoked"):
        assert action in audit
    assert key not in page.content() and "127.0.0.1" in audit
    shoot(page, "6-audit")

    # Log out: the pages need a login again.
    page.click("button:has-text('Log out')")
    assert "You are logged out" in page.inner_text(".flashes")
    page.goto(f"{admin}/keys")
    assert page.url.startswith(f"{admin}/login")
    assert problems == [], "console errors (for example CSP violations)"

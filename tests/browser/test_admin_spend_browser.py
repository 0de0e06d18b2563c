"""Spend control in the admin, in a real browser through the real gateway: a key's budget, model
list and token limit set with the forms (the models offered from the upstream's list), the key's
page with its limits and history, the whole gateway's budget, and the usage tab for one key."""

from __future__ import annotations

import re

from openai import OpenAI
from playwright.sync_api import expect

from tests.browser.conftest import ADMIN_PASSWORD
from tests.browser.test_admin_browser import CHAT_COST, shoot, wait_for_text

# tests/samples/models.json: what the fake upstream lists at GET /v1/models.
UPSTREAM_MODELS = ("gemma-3-27b", "gpt-oss-120b", "openai/gpt-oss-120b", "qwen3-coder-30b-a3b",
                   "qwen3-embedding-4b", "whisper-large-v3")


def ask(base_url: str, key: str, model: str = "gpt-oss-120b") -> str:
    """One chat call through the gateway; the client is closed, its connection with it."""
    with OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=10) as client:
        answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}])
    return answer.choices[0].message.content


def watch_console(page) -> list[str]:
    """Console errors and page errors: a CSP violation (an inline style or script) shows here. A
    refused form answers 400, which the console reports too: that one is expected."""
    problems: list[str] = []

    def console(message):
        if message.type == "error" and "status of 400" not in message.text:
            problems.append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return problems


def log_in(page, admin: str) -> None:
    page.goto(admin)
    page.fill("#password", ADMIN_PASSWORD)
    page.click("button:has-text('Log in')")
    assert page.url == f"{admin}/keys"


def test_budget_models_and_token_limit_in_the_admin(page, stack):
    problems = watch_console(page)
    admin = f"{stack.url}/admin"
    log_in(page, admin)

    # The model picker offers the upstream's models, from its GET /v1/models.
    offered = page.locator("#create-key input[name=models]")
    expect(offered).to_have_count(len(UPSTREAM_MODELS))  # waits for the page, which a click only starts
    assert tuple(offered.evaluate_all("boxes => boxes.map(b => b.value)")) == UPSTREAM_MODELS
    expect(page.locator("#models-unavailable")).to_have_count(0)

    page.fill("#name", "spend <limited>")
    page.fill("#budget", "5")
    page.select_option("#budget_period", "week")
    page.fill("#tpm", "20000")
    page.check("#create-key input[name=models][value='gpt-oss-120b']")
    page.fill("#models_other", "my-finetune")
    shoot(page, "spend-1-create-form")
    page.click("#create-key button[type=submit]")
    key = page.input_value("#new-key")
    details = page.inner_text(".details")
    assert "€5.00 per week" in details and "20,000" in details
    assert "gpt-oss-120b" in details and "my-finetune" in details
    page.click("text=Done, back to the keys")

    # Spend against the budget as a bar, drawn by the server.
    row = page.locator("tr", has_text="spend <limited>")
    assert "€0.00 of €5.00 this week" in row.inner_text()
    assert row.locator("svg.meter rect.meter-fill").get_attribute("width") == "0.0"
    assert "2 models" in row.inner_text() and "20,000 tokens / min" in row.inner_text()

    # A call with an allowed model is metered and moves the bar.
    assert ask(stack.url, key)
    wait_for_text(page, f"{admin}/keys", "#keys-table", f"{CHAT_COST} of €5.00")
    row = page.locator("tr", has_text="spend <limited>")
    assert float(row.locator("svg.meter rect.meter-fill").get_attribute("width")) > 0
    assert "of €5.00 spent this week" in row.locator("svg.meter").get_attribute("aria-label")
    shoot(page, "spend-2-keys")

    # The key's page: its limits and its history by day and model.
    row.locator("a.strong").click()
    limits = page.inner_text("#key-limits")
    assert f"{CHAT_COST} of €5.00 spent this week" in limits
    assert "gpt-oss-120b" in page.inner_text("#key-models") and "20,000" in limits
    history = page.locator("#history")
    assert history.locator("#total-requests").inner_text() == "1"
    assert history.locator("#total-refused").inner_text() == "0"
    assert "gpt-oss-120b" in history.locator("#by-model").inner_text()
    assert CHAT_COST in history.locator("#by-day").inner_text()
    # Ticked: the key's models; the one the upstream does not list is offered, ticked, and marked.
    assert page.is_checked("#edit-key input[name=models][value='gpt-oss-120b']")
    assert page.is_checked("#edit-key input[name=models][value='my-finetune']")
    mine = page.locator("#edit-key label", has_text="my-finetune")
    assert "not listed by the upstream" in mine.inner_text()
    shoot(page, "spend-3-key-page")

    # Edit: a daily budget, every model again, no token limit.
    page.fill("#budget", "2.5")
    page.select_option("#budget_period", "day")
    page.uncheck("#edit-key input[name=models][value='gpt-oss-120b']")
    page.uncheck("#edit-key input[name=models][value='my-finetune']")
    page.fill("#tpm", "")
    page.click("#edit-key button[type=submit]")
    flash = page.inner_text(".flashes")
    assert "budget €2.50 per day" in flash and "models all" in flash and "tokens per minute no limit" in flash
    assert "every model" in page.inner_text("#key-models")
    assert f"{CHAT_COST} of €2.50 spent this day" in page.inner_text("#key-limits")

    # A bad value is refused with the field's label, and the form keeps what was typed.
    page.fill("#budget", "0")
    page.fill("#models_other", "two words,ok")
    page.click("#edit-key button[type=submit]")
    # The page before had a flash too: wait for the new one.
    expect(page.locator(".flash-error")).to_contain_text("Budget: a number of euros above 0")
    assert (page.input_value("#budget"), page.input_value("#models_other")) == ("0", "two words,ok")

    # The whole gateway's budget and token limit, on the Settings tab.
    page.goto(f"{admin}/settings")
    page.fill("#global_budget", "100")
    page.select_option("#global_budget_period", "month")
    page.fill("#global_tpm", "50000")
    page.click("#spend-form button[type=submit]")
    assert "Saved the whole gateway's budget" in page.inner_text(".flashes")
    spend = page.inner_text("#spend")
    assert re.search(r"€0\.0\d+ of €100\.00 spent this month", spend), spend
    assert page.input_value("#global_tpm") == "50000"
    shoot(page, "spend-4-settings")

    # The usage tab for this key alone.
    page.goto(f"{admin}/usage?period=today")
    [choice] = [o for o in page.locator("#key option").all_inner_texts() if o.startswith("spend <limited>")]
    page.select_option("#key", label=choice)
    page.click("#key-filter button[type=submit]")
    assert "spend <limited>" in page.inner_text("#key-filter-note")
    assert page.inner_text("#total-requests") == "1"
    assert page.inner_text("#total-spend") == CHAT_COST
    assert page.inner_text("#total-refused") == "0" and page.inner_text("#total-errors") == "0"
    expect(page.locator("#by-key")).to_have_count(0)
    shoot(page, "spend-5-usage-one-key")

    page.goto(f"{admin}/docs")
    for heading in ("Budgets", "Model lists", "Token limits"):
        expect(page.locator("#spend-control h3", has_text=heading)).to_have_count(1)
    shoot(page, "spend-6-docs")

    page.goto(f"{admin}/audit")
    audit = page.inner_text("#audit-table")
    assert "budget_eur=2.5" in audit and "budget_period='day'" in audit
    assert "global_budget_eur: none -> 100" in audit and "global_tpm: none -> 50000" in audit
    assert problems == [], "console errors (for example CSP violations)"

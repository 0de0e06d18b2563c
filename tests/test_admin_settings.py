"""admin.views.settings: the status panel, live limits and the price table."""

from __future__ import annotations

import re

import pytest

from storage import audit, keys, prices, spend, usage
from storage import settings as limits_store
from storage.models import utcnow
from storage.settings import LIMIT_NAMES, Limits
from storage.usage import UsageRecord

pytest_plugins = ("tests.admin_fixtures",)

DEFAULTS = {"key_rate_limit_requests": 100, "key_rate_limit_window": 60, "ip_rate_limit_requests": 1000,
            "ip_rate_limit_window": 60, "global_rate_limit_requests": 100, "global_rate_limit_window": 60}


def limits_now(settings) -> Limits:
    return limits_store.load_limits(Limits.from_settings(settings))


def test_status_panel(client, logged_in, settings):
    log = 'level=INFO msg="Validate succeeded" validator.name=snp-0-GENOA\n'
    settings.privatemode_log_file.write_text(log)
    html = client.get("/admin/settings").text
    assert "privatemode-proxy</strong>: not answering" in html
    assert "Attestation of Privatemode</strong>: succeeded" in html and "snp-0-GENOA" in html
    assert "AMD SEV-SNP guest</strong>:" in html


def test_status_panel_without_a_log(client, logged_in):
    assert "Attestation of Privatemode</strong>: log not readable" in client.get("/admin/settings").text


def test_limits_show_the_values_in_force(client, logged_in):
    limits_store.set_limit("ip_rate_limit_requests", 77)
    html = client.get("/admin/settings").text
    assert 'name="ip_rate_limit_requests" min="1" step="1" required value="77"' in html
    assert "Environment default: 1,000 per 60 s." in html


def test_save_limits_applies_and_audits_only_changes(client, logged_in, settings):
    form = {**{name: str(value) for name, value in DEFAULTS.items()}, "key_rate_limit_requests": "250",
            "global_rate_limit_window": "120"}
    r = logged_in.post("/admin/settings/limits", form)
    assert r.status_code == 302 and r.headers["Location"] == "/admin/settings#limits"
    now = limits_now(settings)
    assert now.key_rate_limit_requests == 250
    assert (now.global_rate_limit_window, now.ip_rate_limit_requests) == (120, 1000)
    changes = sorted(e.detail for e in audit.recent() if e.action == "limit.changed")
    assert changes == ["global_rate_limit_window: 60 -> 120", "key_rate_limit_requests: 100 -> 250"]
    assert "Saved 2 limit(s)" in client.get("/admin/settings").text


@pytest.mark.parametrize("bad", ["0", "-5", "ten", "", "1.5"])
def test_save_limits_refuses_bad_values(client, logged_in, settings, bad):
    form = {**{name: str(value) for name, value in DEFAULTS.items()}, "ip_rate_limit_window": bad}
    logged_in.post("/admin/settings/limits", form)
    assert limits_now(settings) == Limits(**DEFAULTS)
    assert "Per client address, window (seconds): enter a whole number" in client.get("/admin/settings").text


def test_reset_limits(client, logged_in, settings):
    limits_store.set_limit("key_rate_limit_requests", 5)
    logged_in.post("/admin/settings/limits/reset")
    assert limits_now(settings) == Limits(**DEFAULTS)
    assert audit.recent()[0].action == "limit.reset"


def test_every_limit_has_a_field(client, logged_in):
    html = client.get("/admin/settings").text
    for name in LIMIT_NAMES:
        assert f'name="{name}"' in html


def test_price_table_is_editable_per_model(client, logged_in):
    html = client.get("/admin/settings").text
    for model in prices.all_prices():
        assert f'<input type="hidden" name="model" value="{model}">' in html
    for field in prices.PRICE_FIELDS:
        assert f'name="{field}"' in html


def test_change_a_price(client, logged_in):
    form = {"model": "gpt-oss-120b", "action": "save", "input_per_mtok": "0.5", "output_per_mtok": "1,5",
            "cached_per_mtok": "0.25", "audio_per_mb": "", "audio_per_minute": "0"}
    r = logged_in.post("/admin/settings/prices", form)
    assert r.status_code == 302
    row = prices.all_prices()["gpt-oss-120b"]
    assert (row.input_per_mtok, row.output_per_mtok, row.cached_per_mtok) == (0.5, 1.5, 0.25)
    assert row.audio_per_mb == 0
    entry = audit.recent()[0]
    assert entry.action == "price.changed" and "model=gpt-oss-120b input_per_mtok=0.5" in entry.detail


def test_add_and_delete_a_model(client, logged_in):
    logged_in.post("/admin/settings/prices", {"model": "voxtral-mini-3b", "action": "save",
                                              "audio_per_minute": "0.003"})
    assert prices.all_prices()["voxtral-mini-3b"].audio_per_minute == 0.003
    assert "(new)" in audit.recent()[0].detail
    logged_in.post("/admin/settings/prices", {"model": "voxtral-mini-3b", "action": "delete"})
    assert "voxtral-mini-3b" not in prices.all_prices()
    assert audit.recent()[0].action == "price.deleted"


def test_the_default_price_cannot_be_deleted(client, logged_in):
    logged_in.post("/admin/settings/prices", {"model": "*", "action": "delete"})
    assert "*" in prices.all_prices()
    assert "cannot be deleted" in client.get("/admin/settings").text


@pytest.mark.parametrize(
    "form, message",
    [
        ({"model": "gpt-oss-120b", "input_per_mtok": "-1"}, "Input / 1M tokens: must be 0 or more"),
        ({"model": "gpt-oss-120b", "output_per_mtok": "abc"}, "Output / 1M tokens: enter a number"),
        ({"model": "gpt-oss-120b", "audio_per_mb": "nan"}, "Audio / MB: must be 0 or more"),
        ({"model": "two words"}, "Model: enter the model id"),
        ({"model": ""}, "Model: enter the model id"),
    ],
)
def test_bad_prices_are_refused(client, logged_in, form, message):
    before = prices.all_prices()
    logged_in.post("/admin/settings/prices", {"action": "save", **form})
    assert prices.all_prices() == before
    assert message in client.get("/admin/settings").text


def test_saving_an_unchanged_price_writes_nothing(client, logged_in):
    row = prices.all_prices()["gemma-3-27b"]
    form = {"model": row.model, "action": "save", **{n: str(getattr(row, n)) for n in prices.PRICE_FIELDS}}
    logged_in.post("/admin/settings/prices", form)
    assert "price.changed" not in [e.action for e in audit.recent()]


def spend_form(**fields) -> dict:
    return {"global_budget": "", "global_budget_period": "month", "global_tpm": "", **fields}


def test_global_budget_and_token_limit_are_saved_and_audited(client, logged_in):
    r = logged_in.post("/admin/settings/spend", spend_form(global_budget="250", global_budget_period="week",
                                                          global_tpm="100000"))
    assert r.status_code == 302 and r.headers["Location"] == "/admin/settings#spend"
    assert spend.load_global() == spend.GlobalSpend(250.0, "week", 100_000)
    changes = sorted((e.detail, e.client_addr) for e in audit.recent() if e.action == "limit.changed")
    assert changes == [("global_budget_eur: none -> 250", "127.0.0.1"),
                       ("global_budget_period: month -> week", "127.0.0.1"),
                       ("global_tpm: none -> 100000", "127.0.0.1")]
    html = client.get("/admin/settings").text
    assert "Saved the whole gateway&#39;s budget" in html
    assert 'name="global_budget" min="0" step="any" placeholder="no budget" value="250"' in html
    assert '<option value="week" selected>' in html and 'value="100000"' in html


def test_global_limits_are_cleared_by_empty_fields(client, logged_in):
    spend.save_global(spend.GlobalSpend(10.0, "day", 500))
    logged_in.post("/admin/settings/spend", spend_form(global_budget_period="month"))
    # The period stays: without a budget it means nothing, and it is not a change to audit.
    assert spend.load_global() == spend.GlobalSpend(None, "day", None)
    details = sorted(e.detail for e in audit.recent() if e.action == "limit.changed")
    assert details == ["global_budget_eur: 10 -> none", "global_tpm: 500 -> none"]


def test_unchanged_global_limits_write_nothing(client, logged_in):
    spend.save_global(spend.GlobalSpend(10.0, "day", None))
    logged_in.post("/admin/settings/spend", spend_form(global_budget="10.0", global_budget_period="day"))
    assert "Nothing changed" in client.get("/admin/settings").text
    assert "limit.changed" not in [e.action for e in audit.recent()]


@pytest.mark.parametrize(
    "form, message",
    [
        ({"global_budget": "0"}, "Whole gateway, budget: a number of euros above 0"),
        ({"global_budget": "lots"}, "Whole gateway, budget: enter a number of euros"),
        ({"global_budget": "5", "global_budget_period": "year"}, "Whole gateway, budget period: one of"),
        ({"global_tpm": "-5"}, "Whole gateway, tokens per minute: enter a whole number"),
    ],
)
def test_bad_global_limits_are_refused(client, logged_in, form, message):
    logged_in.post("/admin/settings/spend", spend_form(**form))
    assert spend.load_global() == spend.GlobalSpend()
    assert message in client.get("/admin/settings").text


def test_global_spend_against_the_budget(client, logged_in):
    a, _ = keys.create_key("a")
    b, _ = keys.create_key("b")
    now = utcnow()
    usage.record_batch([
        UsageRecord(now, a.key_id, "/v1/chat/completions", "m", 200, cost_eur=30.0),
        UsageRecord(now, b.key_id, "/v1/chat/completions", "m", 200, cost_eur=15.0),
    ])
    html = client.get("/admin/settings").text
    assert 'id="global-spent">€45.00</span> spent this month by all keys; no budget' in html
    spend.save_global(spend.GlobalSpend(budget_eur=50.0, budget_period="month"))
    html = client.get("/admin/settings").text
    section = re.search(r'<section class="card" id="spend">.*?</section>', html, re.S).group(0)
    assert 'id="global-spent">€45.00</span> of €50.00 spent this month' in section
    assert '<svg class="meter meter-warn"' in section and 'width="90.0"' in section
    spend.save_global(spend.GlobalSpend(budget_eur=40.0, budget_period="month"))
    assert "every key is refused until it resets" in client.get("/admin/settings").text

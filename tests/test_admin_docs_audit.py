"""admin.views.docs and admin.views.audit: documentation with this deployment's URL, the audit log."""

from __future__ import annotations

import re

from storage import audit, keys, prices
from tests.admin_helpers import from_gateway

pytest_plugins = ("tests.admin_fixtures",)


def test_docs_use_this_deployments_base_url(client, logged_in):
    html = client.get("/admin/docs").text
    assert 'value="http://localhost/v1"' in html
    assert 'base_url="http://localhost/v1"' in html.replace("&#34;", '"')
    assert "curl http://localhost/v1/chat/completions" in html


def test_docs_behind_the_gateway_over_https(client, app, logged_in):
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "ai.example.org"}
    html = client.get("/admin/docs", headers=from_gateway(app, **forwarded)).text
    assert 'value="https://ai.example.org/v1"' in html
    assert "plain HTTP" not in html


def test_docs_warn_over_plain_http(client, logged_in):
    assert "You are viewing this page over plain HTTP" in client.get("/admin/docs").text


def test_docs_explain_the_encryption_and_clients(client, logged_in):
    html = client.get("/admin/docs").text
    for text in ("TLS ends inside the trusted execution environment", "privatemode-proxy re-encrypts",
                 "reads only usage numbers", "OpenAI Python SDK", "from openai import OpenAI", "curl", "n8n",
                 "Base URL"):
        assert text in html, text


def test_docs_explain_budgets_model_lists_and_token_limits(client, logged_in):
    html = client.get("/admin/docs").text
    section = re.search(r'<section class="card" id="spend-control">.*?</section>', html, re.S).group(0)
    for heading in ("Budgets", "Model lists", "Token limits"):
        assert f"<h3>{heading}</h3>" in section
    # What a client sees when refused, by the codes the gateway answers with.
    for code in ("insufficient_quota", "model_not_allowed", "rate_limit_exceeded"):
        assert f"<code>{code}</code>" in section


def test_docs_list_models_and_prices_from_the_database(client, logged_in):
    prices.set_price("kimi-k2.6", input_per_mtok=1.2, output_per_mtok=4.8, cached_per_mtok=0.3)
    html = client.get("/admin/docs").text
    table = re.search(r'<table class="table" id="models-table">.*?</table>', html, re.S).group(0)
    for model in prices.all_prices():
        if model != "*":
            assert f">{model}<" in table
    assert "any other model" in table
    assert "€1.20" in table and "€4.80" in table and "€0.30" in table
    assert "€0.096" in table, "whisper per MB"


def test_audit_log_lists_actions_with_address_and_never_a_key(client, app, logged_in):
    r = logged_in.post("/admin/keys", {"name": "audited"},
                       headers=from_gateway(app, **{"X-Forwarded-For": "203.0.113.99"}))
    plaintext = re.search(r"pmg_[\w-]{43}", r.text).group(0)
    audit.record("limit.changed", "rate_limit_requests: 100 -> 5", "192.0.2.1")
    html = client.get("/admin/audit").text
    rows = re.findall(r"<tr>(.*?)</tr>", html, re.S)[1:]
    assert len(rows) == 3
    assert "limit.changed" in rows[0] and "192.0.2.1" in rows[0]
    assert "key.created" in rows[1] and "203.0.113.99" in rows[1]
    assert "login" in rows[2]
    assert plaintext not in html and plaintext[:12] not in html
    key = keys.list_keys()[0]
    assert key.key_id in rows[1]


def test_audit_log_escapes_details(client, logged_in):
    audit.record("key.created", "name='<script>alert(1)</script>'", "x")
    html = client.get("/admin/audit").text
    assert "<script>alert" not in html and "&lt;script&gt;" in html

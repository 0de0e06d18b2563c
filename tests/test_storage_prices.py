"""storage.prices: the seed table, editing it, choosing a price, and the cost maths."""

from __future__ import annotations

import dataclasses

import pytest

from storage import prices
from storage.db import close_database, open_database
from storage.prices import BYTES_PER_MB, PriceRow, cost_eur, price_for


@pytest.fixture
def db(tmp_path):
    yield open_database(f"sqlite:///{tmp_path / 'gateway.db'}")
    close_database()


def test_seed_prices(db):
    table = prices.all_prices()
    assert set(table) == {
        "gpt-oss-120b",
        "gemma-3-27b",
        "qwen3-coder-30b-a3b",
        "qwen3-embedding-4b",
        "whisper-large-v3",
        "*",
    }
    for model in ("gpt-oss-120b", "gemma-3-27b", "qwen3-coder-30b-a3b", "*"):
        assert table[model] == PriceRow(model, 5.0, 5.0, 5.0, 0.0, 0.0)
    assert table["qwen3-embedding-4b"] == PriceRow("qwen3-embedding-4b", 0.13, 0.13, 0.13)
    assert table["whisper-large-v3"] == PriceRow("whisper-large-v3", audio_per_mb=0.096)


def test_price_rows_are_frozen(db):
    row = prices.all_prices()["*"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.input_per_mtok = 0


def test_set_price_creates_then_changes_only_given_fields(db):
    created = prices.set_price("kimi-k2.6", input_per_mtok=0.6, output_per_mtok=2.5)
    assert created == PriceRow("kimi-k2.6", 0.6, 2.5, 0.0, 0.0, 0.0)
    changed = prices.set_price("kimi-k2.6", cached_per_mtok="0.15")
    assert changed == PriceRow("kimi-k2.6", 0.6, 2.5, 0.15, 0.0, 0.0)
    assert prices.all_prices()["kimi-k2.6"] == changed


@pytest.mark.parametrize(
    ("model", "fields", "message"),
    [
        ("", {"input_per_mtok": 1}, "model"),
        ("m", {"input_per_mtok": -1}, "input_per_mtok"),
        ("m", {"output_per_mtok": "abc"}, "output_per_mtok"),
        ("m", {"audio_per_mb": float("nan")}, "audio_per_mb"),
        ("m", {"per_token": 1}, "unknown"),
    ],
)
def test_set_price_refuses_bad_values(db, model, fields, message):
    with pytest.raises(ValueError, match=message):
        prices.set_price(model, **fields)
    assert "m" not in prices.all_prices()


def test_delete_price(db):
    assert prices.delete_price("gemma-3-27b") is True
    assert prices.delete_price("gemma-3-27b") is False
    assert "gemma-3-27b" not in prices.all_prices()
    with pytest.raises(ValueError, match="default"):
        prices.delete_price("*")


def test_price_for():
    table = {row.model: row for row in prices.SEED}
    assert price_for(table, "gpt-oss-120b") == (table["gpt-oss-120b"], False)
    assert price_for(table, "openai/gpt-oss-120b") == (table["gpt-oss-120b"], False)
    assert price_for(table, "unknown-model") == (table["*"], True)
    assert price_for(table, "") == (table["*"], True)
    assert price_for(table, None) == (table["*"], True)
    # Without a "*" row the built-in default still applies.
    del table["*"]
    row, is_default = price_for(table, "unknown-model")
    assert is_default and row.input_per_mtok == 5.0


def test_cost_of_a_chat_request_with_seed_prices():
    gpt = prices.SEED[0]
    assert cost_eur(gpt, prompt_tokens=21, completion_tokens=8) == pytest.approx(29 * 5 / 1e6)


def test_cached_tokens_are_part_of_the_prompt():
    price = PriceRow("m", input_per_mtok=2.0, output_per_mtok=8.0, cached_per_mtok=0.5)
    cost = cost_eur(price, prompt_tokens=1000, completion_tokens=100, cached_tokens=400)
    assert cost == pytest.approx((600 * 2.0 + 400 * 0.5 + 100 * 8.0) / 1e6)
    # More cached than prompt tokens (a confused upstream) never bills below zero.
    assert cost_eur(price, prompt_tokens=10, cached_tokens=50) == pytest.approx(10 * 0.5 / 1e6)


def test_audio_is_billed_per_mebibyte_and_minute():
    whisper = PriceRow("whisper-large-v3", audio_per_mb=0.096, audio_per_minute=0.006)
    cost = cost_eur(whisper, request_bytes=2 * BYTES_PER_MB, audio_seconds=90, is_audio=True)
    assert cost == pytest.approx(2 * 0.096 + 1.5 * 0.006)
    # Upload size counts only for audio requests.
    assert cost_eur(whisper, request_bytes=2 * BYTES_PER_MB, audio_seconds=90) == 0.0


def test_embeddings_cost():
    embedding = PriceRow("qwen3-embedding-4b", 0.13, 0.13, 0.13)
    assert cost_eur(embedding, prompt_tokens=13) == pytest.approx(13 * 0.13 / 1e6)

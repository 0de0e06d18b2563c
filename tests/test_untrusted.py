"""storage.untrusted: what a usage row stores of a client's model name, and how such strings are shown."""

from __future__ import annotations

import logging
import sys

import pytest

from storage.untrusted import (
    INVALID_MODEL,
    MAX_MODEL_CHARS,
    TRUNCATED,
    EscapingFormatter,
    escape,
    model_name,
)


@pytest.mark.parametrize("name", ["gpt-oss-120b", "openai/gpt-oss-120b", "Mistral Large 2", "modèle-ß-模型"])
def test_a_printable_model_name_is_kept(name):
    assert model_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "\ud800",  # a lone surrogate: not valid UTF-8, the insert would fail
        "gpt\ud83d",
        "evil\n2030-01-01 INFO gateway: forged",
        "a\rb",
        "\x1b]0;title\x07",
        "\x1b[2J",
        "\x00",
        "rtl\u202egnp.exe",  # a bidirectional override
        "zero\u200bwidth",
        "tab\tname",
    ],
)
def test_an_unprintable_model_name_becomes_the_marked_placeholder(name):
    assert model_name(name) == INVALID_MODEL


def test_a_long_model_name_is_cut_with_a_marker():
    stored = model_name("m" * (2 << 20))
    assert len(stored) == MAX_MODEL_CHARS and stored.endswith(TRUNCATED)
    assert model_name("m" * MAX_MODEL_CHARS) == "m" * MAX_MODEL_CHARS


def test_no_model_is_stored_as_empty():
    assert model_name(None) == "" and model_name("") == ""


def test_escape_writes_unprintable_characters_out():
    assert escape("a\nb\x1b[2J\x07") == "a\\x0ab\\x1b[2J\\x07"
    assert escape("\ud800") == "\\ud800"
    assert escape("x\u202ey") == "x\\u202ey"
    assert escape("\U000e0001") == "\\U000e0001"
    assert escape("plain text, kept") == "plain text, kept"
    assert escape(42) == "42"


def test_escape_cuts_at_the_limit_and_says_how_much_more():
    assert escape("abcdef", limit=4) == "abcd...(2 more characters)"
    assert escape("a\n" * 3, limit=2) == "a\\x0a...(4 more characters)"


def test_the_log_formatter_escapes_the_line_but_keeps_a_traceback():
    formatter = EscapingFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "model %s", ("x\ny\x1b",), None)
    assert formatter.format(record) == "INFO model x\\x0ay\\x1b"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failing = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = formatter.format(failing)
    assert text.startswith("ERROR failed\nTraceback") and text.endswith("RuntimeError: boom")

"""Strings someone else chose (a client's model name, an old key name): made safe to store and to show.

Two rules, used by the gateway's writer and log lines, its log formatter and the CLI:

- model_name(): what a usage row stores. A client picks the model name; stored as sent, a lone
  surrogate cannot be encoded (the whole insert fails), control characters reach whoever reads
  the database, and a 2 MB name costs megabytes per request. Stored instead: the name if it is
  printable, else INVALID_MODEL; a long name cut to MAX_MODEL_CHARS with TRUNCATED at its end.
- escape(): how such a string is shown in a log line or on a terminal. Everything unprintable
  (control characters, escape sequences' ESC, newlines, surrogates, bidirectional overrides)
  becomes a visible \\xNN, \\uNNNN or \\UNNNNNNNN, so it can neither start a forged log line nor
  drive the operator's terminal; `limit` bounds what one string adds to a line.
"""

from __future__ import annotations

import logging

MAX_MODEL_CHARS = 256
INVALID_MODEL = "(invalid model name)"
TRUNCATED = "...(truncated)"


def model_name(value: str | None) -> str:
    """The model name a usage row stores: printable, at most MAX_MODEL_CHARS characters, or ""."""
    if not value:
        return ""
    if len(value) > MAX_MODEL_CHARS:
        value = value[: MAX_MODEL_CHARS - len(TRUNCATED)] + TRUNCATED
    # str.isprintable() is false for every "Other" and "Separator" character but the space:
    # control and format characters, lone surrogates (not valid UTF-8), unassigned code points.
    return value if value.isprintable() else INVALID_MODEL


def _escaped(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape(value: object, limit: int | None = None) -> str:
    """`value` as text with every unprintable character written out visibly; cut to `limit` characters
    of the original, saying how many more there were."""
    text = value if isinstance(value, str) else str(value)
    more = 0
    if limit is not None and len(text) > limit:
        text, more = text[:limit], len(text) - limit
    if not text.isprintable():  # the usual case is printable and costs one C-level scan
        text = "".join(c if c.isprintable() else _escaped(c) for c in text)
    return f"{text}...({more} more characters)" if more else text


class EscapingFormatter(logging.Formatter):
    """A log formatter that escapes the formatted line: a string someone else chose, quoted in any
    message (ours, mitmproxy's, a library's), can neither forge a line nor reach a terminal.
    A traceback, added after the line, keeps its own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))

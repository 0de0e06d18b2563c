"""What the gateway knows of one request, and the usage row (metadata only) made from it."""

from __future__ import annotations

import functools
import itertools
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

from addons.limits import Verdict
from addons.routes import Route
from addons.sse import SseUsageTap
from addons.usage import (
    LARGE_BODY_BYTES,
    Usage,
    json_object,
    model_from_object,
    usage_from_large_body,
    usage_from_object,
)
from storage import prices, untrusted
from storage.usage import UsageRecord

META = "gateway"  # our namespace in flow.metadata
# The `model` field of a multipart upload, looked for only in its first bytes.
MULTIPART_MODEL = re.compile(rb'name="model"\r\n(?:[^\r\n]*\r\n)*?\r\n([^\r\n]{1,200})\r\n')
MULTIPART_HEAD_BYTES = 64 * 1024
# Every request's number, unique across restarts (a random start in [0, 2**62), counting up), so
# that a row the writer replays from its journal is stored once (usage.uid). Two runs share a
# number with a chance of about 1 in 2**62 / (requests of both): none in practice.
_UIDS = itertools.count(secrets.randbits(62))


@dataclass(slots=True)
class RequestInfo:
    route: Route
    client_ip: str
    started: float = field(default_factory=time.monotonic)
    key_id: str | None = None
    admitted: bool = False
    verdict: Verdict | None = None
    model: str | None = None
    request_bytes: int = 0
    strip_usage_chunk: bool = False
    tap: SseUsageTap | None = None
    finished: bool = False
    forwarded: bool = False  # something of it went upstream; else an error is the gateway's refusal
    uid: int = field(default_factory=lambda: next(_UIDS))
    _upload_head: bytes = b""

    def count_upload(self, chunk: bytes) -> bytes:
        """`flow.request.stream` for uploads: forwards each chunk, keeps its size and the model name."""
        self.request_bytes += len(chunk)
        if self.model is None and len(self._upload_head) < MULTIPART_HEAD_BYTES:
            self._upload_head += chunk[:MULTIPART_HEAD_BYTES]
            if match := MULTIPART_MODEL.search(self._upload_head):
                self.model = match.group(1).decode("utf-8", "replace")
                self._upload_head = b""
        elif self._upload_head:
            self._upload_head = b""  # nothing more to find: let the bytes go
        return chunk

    def duration_ms(self) -> int:
        return round((time.monotonic() - self.started) * 1000)


class Finished(NamedTuple):
    """One request's end, as the event loop hands it to the writer thread: numbers, no content."""

    ts: float
    method: str
    endpoint: str
    key_id: str
    status: int
    usage: Usage | None
    model: str | None
    complete: bool
    streamed: bool
    request_bytes: int
    duration_ms: int
    metered: bool  # an API request with a known key: it gets a usage row
    body: bytes | None = None  # a JSON answer whose usage is still to read; dropped once read
    uid: int | None = None  # RequestInfo.uid
    refused: bool = False  # answered by the gateway itself, nothing forwarded

    def with_body_read(self) -> Finished:
        """Usage and model from the answer's body, read on the writer thread, off the event loop."""
        if not self.body or (self.model and b'"usage"' not in self.body):
            return self._replace(body=None)  # nothing to learn from it
        if len(self.body) > LARGE_BODY_BYTES:
            usage, model = usage_from_large_body(self.body), self.model
        else:
            parsed = json_object(self.body)
            usage, model = usage_from_object(parsed), self.model or model_from_object(parsed)
        return self._replace(usage=usage, model=model, body=None)


def finished(
    info: RequestInfo,
    method: str,
    status: int,
    usage: Usage | None,
    model: str | None,
    complete: bool,
    metered: bool,
    body: bytes | None = None,
) -> Finished:
    return Finished(
        time.time(),
        method,
        info.route.endpoint or "-",
        info.key_id or "",
        status,
        usage,
        model,
        complete,
        info.tap is not None,
        info.request_bytes,
        info.duration_ms(),
        metered,
        body,
        info.uid,
        status >= 400 and not info.forwarded,
    )


def make_record(f: Finished, price_table: dict[str, prices.PriceRow]) -> UsageRecord:
    usage = f.usage or Usage()
    model = untrusted.model_name(f.model)  # the client chose it: see storage/untrusted.py
    price, is_default = prices.price_for(price_table, model)
    cost = prices.cost_eur(
        price,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        request_bytes=f.request_bytes,
        audio_seconds=usage.audio_seconds,
        is_audio=f.endpoint == "/v1/audio/transcriptions",
    )
    if f.status >= 400 and not usage.total_tokens and not usage.audio_seconds:
        cost = 0.0  # a refused request consumed nothing we can be billed for
    return UsageRecord(
        ts=datetime.fromtimestamp(f.ts, UTC),
        key_id=f.key_id,
        endpoint=f.endpoint,
        model=model,
        status=f.status,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        total_tokens=usage.total_tokens,
        audio_seconds=usage.audio_seconds,
        request_bytes=f.request_bytes,
        cost_eur=cost,
        duration_ms=f.duration_ms,
        streamed=f.streamed,
        complete=f.complete,
        default_price=is_default and bool(model) and cost > 0,
        uid=f.uid,
        refused=f.refused,
    )


@functools.lru_cache(maxsize=4)
def _second(second: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))


def access_line(f: Finished) -> str:
    """The request's log line: method, path, status, key id, model, tokens, duration. Never a key.

    What the client chose (the method, the model name) is escaped and the model cut to
    MAX_MODEL_CHARS: a newline in it cannot start a line of its own, an escape sequence cannot
    reach a terminal, and a 2 MB name does not make a 2 MB line. The key id is ours, but a
    keys file may have named it: escaped too.
    """
    stamp = f"{_second(int(f.ts))},{int(f.ts * 1000) % 1000:03d}"
    tokens = f.usage.total_tokens if f.usage else 0
    # Spaces too: the fields of the line are separated by them.
    model = untrusted.escape(f.model, untrusted.MAX_MODEL_CHARS).replace(" ", "\\x20") if f.model else "-"
    key = untrusted.escape(f.key_id) if f.key_id else "-"
    return (
        f"{stamp} INFO gateway: {untrusted.escape(f.method)} {f.endpoint} {f.status} key={key} "
        f"model={model} tokens={tokens} {f.duration_ms}ms{'' if f.complete else ' interrupted'}\n"
    )

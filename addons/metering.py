"""What the gateway knows of one request, and the usage row (metadata only) made from it."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from addons.limits import Verdict
from addons.routes import Route
from addons.sse import SseUsageTap
from addons.usage import Usage
from storage import prices
from storage.usage import UsageRecord

META = "gateway"  # our namespace in flow.metadata
# The `model` field of a multipart upload, looked for only in its first bytes.
MULTIPART_MODEL = re.compile(rb'name="model"\r\n(?:[^\r\n]*\r\n)*?\r\n([^\r\n]{1,200})\r\n')
MULTIPART_HEAD_BYTES = 64 * 1024


@dataclass
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
    timer: asyncio.TimerHandle | None = None
    finished: bool = False
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


def make_record(
    info: RequestInfo,
    status: int,
    usage: Usage | None,
    model: str | None,
    complete: bool,
    price_table: dict[str, prices.PriceRow],
) -> UsageRecord:
    usage = usage or Usage()
    is_audio = info.route.endpoint == "/v1/audio/transcriptions"
    price, is_default = prices.price_for(price_table, model or "")
    cost = prices.cost_eur(
        price,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        request_bytes=info.request_bytes,
        audio_seconds=usage.audio_seconds,
        is_audio=is_audio,
    )
    if status >= 400 and not usage.total_tokens and not usage.audio_seconds:
        cost = 0.0  # a refused request consumed nothing we can be billed for
    return UsageRecord(
        ts=datetime.now(UTC),
        key_id=info.key_id or "",
        endpoint=info.route.endpoint,
        model=model or "",
        status=status,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        total_tokens=usage.total_tokens,
        audio_seconds=usage.audio_seconds,
        request_bytes=info.request_bytes,
        cost_eur=cost,
        duration_ms=info.duration_ms(),
        streamed=info.tap is not None,
        complete=complete,
        default_price=is_default and bool(model) and cost > 0,
    )

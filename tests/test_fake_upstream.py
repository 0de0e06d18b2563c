"""Tests of the fake privatemode-proxy (tests/fake_upstream.py), run as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import fake_upstream

FAKE = Path(__file__).resolve().with_name("fake_upstream.py")
SAMPLES = fake_upstream.DEFAULT_SAMPLES
READY_RE = re.compile(r"^fake upstream listening on (127\.0\.0\.1):(\d+)$")


# -- reusable helper -------------------------------------------------------------------------


@contextlib.contextmanager
def run_fake_upstream(port: int = 0, *extra_args: str, timeout: float = 10.0) -> Iterator[str]:
    """Start ``tests/fake_upstream.py`` as a process; yield its base URL; stop it afterwards.

    With ``port=0`` the fake picks a free port and reports it on its ready line.
    """
    proc = subprocess.Popen(
        [sys.executable, str(FAKE), "--port", str(port), *extra_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline().strip() if ready else ""
        match = READY_RE.match(line)
        if not match:
            proc.kill()
            _, err = proc.communicate(timeout=5)
            raise RuntimeError(f"fake upstream did not start: {line!r} {err!r}")
        yield f"http://{match.group(1)}:{match.group(2)}"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with run_fake_upstream() as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10) as c:
        wait_idle(c)
        c.post("/_fake/reset").raise_for_status()
        yield c


def wait_idle(c: httpx.Client, timeout: float = 3.0) -> dict:
    """Wait until no request but the stats request itself is in flight (earlier tests' leftovers)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = c.get("/_fake/stats").json()
        if stats["in_flight"] == 1 or time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def requests_seen(client: httpx.Client) -> list[dict]:
    return client.get("/_fake/requests").json()


def addr(base_url: str) -> tuple[str, int]:
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def recv_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# -- plain routes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "name"),
    [
        ("GET", "/v1/models", "models.json"),
        ("POST", "/v1/chat/completions", "chat.json"),
        ("POST", "/v1/embeddings", "embeddings.json"),
        ("POST", "/v1/messages", "messages.json"),
    ],
)
def test_json_routes_replay_samples(client: httpx.Client, method: str, path: str, name: str) -> None:
    body = None if method == "GET" else {"model": "gpt-oss-120b", "input": "hi"}
    r = client.request(method, path, json=body)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.content == sample(name)


def test_completions_not_streamed(client: httpx.Client) -> None:
    r = client.post("/v1/completions", json={"model": "gpt-oss-120b", "prompt": "hi"})
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "text_completion"
    assert data["choices"][0]["text"] == "Hello there! How can I help?"
    assert data["usage"] == json.loads(sample("chat.json"))["usage"]


def test_transcription_multipart_counts_bytes(client: httpx.Client) -> None:
    audio = b"\x00\x01" * 300_000
    r = client.post(
        "/v1/audio/transcriptions", files={"file": ("a.wav", audio, "audio/wav")}, data={"model": "whisper"}
    )
    assert r.status_code == 200
    assert r.content == sample("transcription.json")
    (rec,) = requests_seen(client)
    assert rec["headers"]["content-type"].startswith("multipart/form-data")
    assert rec["body_length"] == int(rec["headers"]["content-length"]) > len(audio)
    assert rec["body_complete"] is True
    assert rec["json"] is None


def test_transcription_chunked_25mb_upload(client: httpx.Client) -> None:
    piece = b"x" * (256 * 1024)
    count = 100  # 25 MiB

    def body() -> Iterator[bytes]:
        for _ in range(count):
            yield piece

    r = client.post(
        "/v1/audio/transcriptions",
        content=body(),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 200
    assert r.json()["usage"] == {"type": "duration", "seconds": 35}
    (rec,) = requests_seen(client)
    assert rec["headers"]["transfer-encoding"] == "chunked"
    assert rec["body_length"] == len(piece) * count == 25 * 1024 * 1024
    assert rec["body_complete"] is True


def test_chunked_json_request_is_parsed(client: httpx.Client) -> None:
    payload = json.dumps({"model": "gpt-oss-120b", "messages": [{"role": "user", "content": "hi"}]}).encode()

    def body() -> Iterator[bytes]:
        yield payload[:10]
        yield payload[10:]

    r = client.post("/v1/chat/completions", content=body(), headers={"content-type": "application/json"})
    assert r.content == sample("chat.json")
    (rec,) = requests_seen(client)
    assert rec["headers"]["transfer-encoding"] == "chunked"
    assert rec["body_length"] == len(payload)
    assert rec["json"] == json.loads(payload)


@pytest.mark.parametrize("method", ["GET", "POST", "PUT"])
def test_unstructured_any_method(client: httpx.Client, method: str) -> None:
    r = client.request(method, "/unstructured/general/v0/general", content=b"--x--")
    assert r.status_code == 200
    assert r.json() == [{"type": "Title", "text": "x"}]


@pytest.mark.parametrize("path", ["/health", "/", "/v1/nothing", "/_fake/nothing"])
def test_unknown_path_is_plain_404(client: httpx.Client, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404
    assert r.text == "404 page not found\n"
    assert r.headers["content-type"] == "text/plain; charset=utf-8"


def test_wrong_method_is_405(client: httpx.Client) -> None:
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"


def test_invalid_json_is_400(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "error" in r.json()


# -- streaming -------------------------------------------------------------------------------


def test_chat_stream_privatemode_default(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json={"model": "gpt-oss-120b", "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream"
    assert r.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in r.headers
    assert r.content == sample("chat_stream_privatemode.sse")


def test_stream_arrives_in_several_chunks(client: httpx.Client) -> None:
    events = fake_upstream.split_events(sample("chat_stream_privatemode.sse"))
    t0 = time.monotonic()
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={"stream": True},
        headers={"x-fake-chunk-delay-ms": "30"},
    ) as r:
        chunks = [(time.monotonic() - t0, c) for c in r.iter_raw()]
    assert b"".join(c for _, c in chunks) == sample("chat_stream_privatemode.sse")
    assert len(chunks) >= len(events) - 2  # one network read per event, give or take
    assert chunks[-1][0] - chunks[0][0] >= 0.2  # spread over time, not one burst


@pytest.mark.parametrize(
    ("stream_options", "name"),
    [
        ({"include_usage": True}, "chat_stream_include_usage.sse"),
        ({"include_usage": False}, "chat_stream_no_usage.sse"),
        (None, "chat_stream_no_usage.sse"),
    ],
)
def test_include_usage_scenario(client: httpx.Client, stream_options: dict | None, name: str) -> None:
    body: dict = {"stream": True}
    if stream_options is not None:
        body["stream_options"] = stream_options
    r = client.post("/v1/chat/completions", json=body, headers={"x-fake-scenario": "include-usage"})
    assert r.content == sample(name)


def _data_events(raw: bytes) -> list[str]:
    return [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]


def test_completions_stream(client: httpx.Client) -> None:
    r = client.post("/v1/completions", json={"prompt": "hi", "stream": True})
    assert r.headers["content-type"] == "text/event-stream"
    data = _data_events(r.content)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert "".join(ch["text"] for c in chunks for ch in c["choices"]) == "Hello there! How can I help?"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 8
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 16}


def test_completions_stream_include_usage_keeps_crlf(client: httpx.Client) -> None:
    r = client.post(
        "/v1/completions",
        json={"stream": True, "stream_options": {"include_usage": True}},
        headers={"x-fake-scenario": "include-usage"},
    )
    assert r.content.count(b"\r\n\r\n") == len(_data_events(r.content))
    last = json.loads(_data_events(r.content)[-2])
    assert last["usage"] == {"prompt_tokens": 21, "completion_tokens": 8, "total_tokens": 29}


def test_messages_stream(client: httpx.Client) -> None:
    r = client.post("/v1/messages", json={"model": "gpt-oss-120b", "stream": True})
    assert r.headers["content-type"] == "text/event-stream"
    assert r.content == sample("messages_stream.sse")


@pytest.mark.parametrize(
    "name",
    [
        "chat_stream_privatemode.sse",
        "chat_stream_include_usage.sse",
        "chat_stream_no_usage.sse",
        "messages_stream.sse",
        "upstream_error_stream.sse",
    ],
)
def test_split_events_round_trips(name: str) -> None:
    raw = sample(name)
    events = fake_upstream.split_events(raw)
    assert b"".join(events) == raw
    assert len(events) == raw.count(b"\r\n\r\n") + raw.replace(b"\r\n", b"").count(b"\n\n")


# -- scenarios -------------------------------------------------------------------------------


def test_error_scenario_json(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json={"model": "gpt-5"}, headers={"x-fake-scenario": "error"})
    assert r.status_code == 400
    assert r.headers["privatemode-encrypted"] == "false"
    assert r.headers["content-type"] == "application/json"
    assert r.content == sample("upstream_error.json")


def test_error_scenario_sse_and_status(client: httpx.Client) -> None:
    r = client.post(
        "/v1/chat/completions",
        json={"stream": True},
        headers={"x-fake-scenario": "error", "accept": "text/event-stream", "x-fake-status": "503"},
    )
    assert r.status_code == 503
    assert r.headers["privatemode-encrypted"] == "false"
    assert r.headers["content-type"] == "text/event-stream"
    assert r.content == sample("upstream_error_stream.sse")


def test_slow_scenario_delays_headers(client: httpx.Client) -> None:
    t0 = time.monotonic()
    r = client.post("/v1/embeddings", json={}, headers={"x-fake-scenario": "slow", "x-fake-delay-s": "0.3"})
    assert time.monotonic() - t0 >= 0.3
    assert r.content == sample("embeddings.json")
    with pytest.raises(httpx.ReadTimeout):
        client.post(
            "/v1/embeddings",
            json={},
            headers={"x-fake-scenario": "slow", "x-fake-delay-s": "2"},
            timeout=httpx.Timeout(5, read=0.2),
        )
    # the fake notices the client gave up while it was still sleeping
    t1 = time.monotonic()
    assert wait_idle(client)["in_flight"] == 1
    assert time.monotonic() - t1 < 1
    assert requests_seen(client)[-1]["outcome"] == "client_disconnected"


def test_break_scenario_cuts_the_stream(client: httpx.Client) -> None:
    events = fake_upstream.split_events(sample("chat_stream_privatemode.sse"))
    got = b""
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream(
            "POST", "/v1/chat/completions", json={"stream": True}, headers={"x-fake-scenario": "break"}
        ) as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                got += chunk
    assert got == events[0] + events[1]
    (rec,) = [x for x in requests_seen(client) if x["path"] == "/v1/chat/completions"]
    assert rec["outcome"] == "broken"


def test_fast_scenario_and_route(client: httpx.Client) -> None:
    expected = {"ok": True, "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    assert client.get("/fast").json() == expected
    r = client.post("/v1/chat/completions", json={"stream": True}, headers={"x-fake-scenario": "fast"})
    assert r.json() == expected
    assert [x["path"] for x in requests_seen(client)] == ["/fast", "/v1/chat/completions"]


def test_hold_stream_concurrency(base_url: str, client: httpx.Client) -> None:
    n = 20

    async def one(ac: httpx.AsyncClient) -> bytes:
        r = await ac.post(
            "/v1/chat/completions",
            json={"stream": True},
            headers={"x-fake-scenario": "hold-stream", "x-fake-chunk-delay-ms": "50"},
        )
        return r.content

    async def run() -> list[bytes]:
        limits = httpx.Limits(max_connections=n)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10) as ac:
            return await asyncio.gather(*(one(ac) for _ in range(n)))

    t0 = time.monotonic()
    bodies = asyncio.run(run())
    elapsed = time.monotonic() - t0
    assert all(b == sample("chat_stream_privatemode.sse") for b in bodies)
    stats = client.get("/_fake/stats").json()
    assert stats["max_in_flight"] >= n
    assert stats["in_flight"] == 1  # the stats request itself
    assert elapsed < 10 * 0.05 * n / 2  # they ran side by side, not one after the other


def test_hold_stream_default_delay_and_client_disconnect(client: httpx.Client) -> None:
    t0 = time.monotonic()
    with client.stream(
        "POST", "/v1/chat/completions", json={"stream": True}, headers={"x-fake-scenario": "hold-stream"}
    ) as r:
        first = next(r.iter_raw())
        assert first.startswith(b"data: ")
        assert client.get("/_fake/stats").json()["in_flight"] == 2
    # closing a streamed response that is not finished drops the connection
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        (rec,) = requests_seen(client)
        if rec["outcome"] != "pending":
            break
        time.sleep(0.05)
    assert rec["outcome"] == "client_disconnected"
    assert time.monotonic() - t0 < 1.5  # noticed at the next event, not at the end of the stream
    assert client.get("/_fake/stats").json()["in_flight"] == 1


def test_scenarios_combine(client: httpx.Client) -> None:
    t0 = time.monotonic()
    r = client.post(
        "/v1/chat/completions",
        json={"stream": True},
        headers={"x-fake-scenario": "slow, error", "x-fake-delay-s": "0.1"},
    )
    assert time.monotonic() - t0 >= 0.1
    assert r.status_code == 400


# -- HTTP details ----------------------------------------------------------------------------


def test_keep_alive_reuses_one_connection(base_url: str) -> None:
    with httpx.Client(base_url=base_url) as c:
        before = c.get("/_fake/stats").json()["connections_total"]
        c.get("/v1/models")
        c.post("/v1/chat/completions", json={"stream": True})
        c.post("/v1/audio/transcriptions", files={"file": ("a", b"abc")})
        c.get("/nope")
        after = c.get("/_fake/stats").json()
    assert after["connections_total"] == before


def test_pipelined_requests_on_raw_socket(base_url: str) -> None:
    body = b'{"stream": false}'
    req = (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    last = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(addr(base_url), timeout=5) as s:
        s.sendall(req + req + last)
        data = recv_until_closed(s)
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert data.count(sample("embeddings.json")) == 2
    assert data.endswith(sample("models.json"))
    assert b"connection: close\r\n" in data


def test_http10_closes_and_expect_continue(base_url: str) -> None:
    with socket.create_connection(addr(base_url), timeout=5) as s:
        s.sendall(b"GET /v1/models HTTP/1.0\r\n\r\n")
        data = recv_until_closed(s)
    assert data.endswith(sample("models.json"))

    with socket.create_connection(addr(base_url), timeout=5) as s:
        s.sendall(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\nContent-Type: audio/wav\r\n\r\n"
        )
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello")
        head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")


def test_malformed_request_gets_400(base_url: str) -> None:
    with socket.create_connection(addr(base_url), timeout=5) as s:
        s.sendall(b"NONSENSE\r\n\r\n")
        data = recv_until_closed(s)
    assert data.startswith(b"HTTP/1.1 400 ")


# -- introspection ---------------------------------------------------------------------------


def test_introspection_records_and_resets(client: httpx.Client) -> None:
    client.post(
        "/v1/chat/completions?x=1",
        json={"model": "gpt-oss-120b", "messages": []},
        headers={"Authorization": "Bearer sk-test", "X-Custom": "A"},
    )
    client.get("/v1/models")
    recs = requests_seen(client)
    assert [r["path"] for r in recs] == ["/v1/chat/completions", "/v1/models"]  # /_fake/ not recorded
    chat = recs[0]
    assert chat["method"] == "POST"
    assert chat["target"] == "/v1/chat/completions?x=1"
    assert chat["query"] == "x=1"
    assert chat["headers"]["authorization"] == "Bearer sk-test"
    assert chat["headers"]["x-custom"] == "A"
    assert all(k == k.lower() for k in chat["headers"])
    assert chat["json"] == {"model": "gpt-oss-120b", "messages": []}
    assert chat["body_length"] == int(chat["headers"]["content-length"])
    assert chat["outcome"] == "complete"
    assert recs[1]["json"] is None and recs[1]["body_length"] == 0

    assert client.post("/_fake/reset").json() == {"ok": True}
    assert requests_seen(client) == []
    stats = client.get("/_fake/stats").json()
    assert set(stats) >= {"in_flight", "max_in_flight", "connections"}


def test_record_deque_is_bounded() -> None:
    assert fake_upstream.FakeUpstream().requests.maxlen == 1000


# -- in-process use --------------------------------------------------------------------------


def test_start_in_thread() -> None:
    fake = fake_upstream.FakeUpstream()
    port, stop = fake_upstream.start_in_thread(fake=fake)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            assert c.get("/v1/models").content == sample("models.json")
            assert fake.requests[-1]["path"] == "/v1/models"
            assert fake.stats()["connections"] == 1
    finally:
        stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/v1/models")


def test_cli_samples_option(tmp_path: Path) -> None:
    for f in SAMPLES.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "models.json").write_bytes(b'{"object":"list","data":[]}')
    with run_fake_upstream(0, "--samples", str(tmp_path)) as url:
        assert httpx.get(url + "/v1/models").json() == {"object": "list", "data": []}

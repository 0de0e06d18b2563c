"""Connections a client can make the gateway keep: per-address cap, idle and slow ones, open files.

Each attack is bounded (a few dozen loopback connections) and every wait has a limit; the
gateways here use short timeouts so that what would take a minute takes a second or two.
"""

from __future__ import annotations

import resource
import socket
import ssl
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import trustme

from tests import procs

WAIT = 10  # seconds; every close expected here comes within 3


def connect(gateway) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gateway.proc.port), timeout=WAIT)


def closed_by_gateway(s: socket.socket, timeout: float = WAIT) -> bool:
    """True once the gateway has closed `s` (what it sends first is read and dropped)."""
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def health_on(s: socket.socket) -> bytes:
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        chunk = s.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


def open_files(gateway) -> int:
    return len(list(Path(f"/proc/{gateway.proc.popen.pid}/fd").iterdir()))


def gateway_holds(gateway, client_port: int) -> bool:
    """Whether the gateway still has a socket open for our connection from `client_port`."""
    inodes = set()
    for fd in Path(f"/proc/{gateway.proc.popen.pid}/fd").iterdir():
        try:
            inodes.add(fd.readlink().name.removeprefix("socket:[").removesuffix("]"))
        except OSError:  # closed while we looked
            pass
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) == gateway.proc.port and int(remote.split(":")[1], 16) == client_port:
            return inode in inodes
    return False


# -- per client address -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped(start_gateway):
    return start_gateway(MAX_CONNECTIONS_PER_CLIENT="4")


def served_connection(gateway) -> socket.socket:
    """A connection of ours that the gateway serves (a probe it has not yet counted out may
    take a place for a moment: then try again)."""

    def attempt() -> socket.socket | None:
        s = connect(gateway)
        try:
            if health_on(s).startswith(b"HTTP/1.1 200 "):
                return s
        except ConnectionResetError:
            pass
        s.close()
        return None

    return procs.wait_until(attempt, timeout=WAIT)


def test_connections_per_client_address_are_capped(capped):
    first = []
    try:
        for _ in range(4):
            first.append(served_connection(capped))
        with connect(capped) as fifth:
            assert closed_by_gateway(fifth), "the fifth is closed at once"
        first.pop().close()
        first.append(served_connection(capped))  # a place is free again
    finally:
        for s in first:
            s.close()


def test_behind_a_trusted_proxy_the_cap_is_not_applied(start_gateway):
    """Every client then comes from the proxy's address: the proxy limits its clients."""
    gateway = start_gateway(MAX_CONNECTIONS_PER_CLIENT="2", TRUST_PROXY="true")
    sockets = [connect(gateway) for _ in range(4)]
    try:
        assert all(health_on(s).startswith(b"HTTP/1.1 200 ") for s in sockets)
    finally:
        for s in sockets:
            s.close()


# -- idle and slow connections ------------------------------------------------------------------


@pytest.fixture(scope="module")
def impatient(start_gateway):
    return start_gateway(CLIENT_IDLE_TIMEOUT="1", HEADER_TIMEOUT="2", RATE_LIMIT_REQUESTS="100000")


def test_an_idle_keep_alive_connection_is_closed(impatient):
    with connect(impatient) as s:
        assert health_on(s).startswith(b"HTTP/1.1 200 ")
        port = s.getsockname()[1]
        assert closed_by_gateway(s)
    procs.wait_until(lambda: not gateway_holds(impatient, port), timeout=WAIT)  # its socket let go


def test_a_connection_that_never_sends_a_request_is_closed(impatient):
    with connect(impatient) as s:
        assert closed_by_gateway(s)


def test_a_request_head_sent_a_byte_at_a_time_is_cut(impatient):
    """Slowloris: each byte is activity, but the head must be whole within HEADER_TIMEOUT."""
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    with connect(impatient) as s:
        assert health_on(s).startswith(b"HTTP/1.1 200 ")  # the clock starts at the next head's first byte
        started = time.monotonic()
        closed = False
        for byte in head:
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.2)
            if time.monotonic() - started > WAIT:
                break
        assert closed or closed_by_gateway(s, timeout=1)


def test_a_request_in_progress_is_not_cut(impatient):
    """Waiting for the upstream is not idleness: the answer comes after both timeouts."""
    _, key = impatient.new_key()
    r = httpx.post(
        f"{impatient.url}/v1/chat/completions",
        params={"fake-scenario": "slow", "fake-delay-s": "3"},
        headers={"authorization": f"Bearer {key}"},
        json={"model": "gpt-oss-120b", "messages": [{"role": "user", "content": "hi"}]},
        timeout=WAIT,
    )
    assert r.status_code == 200


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def impatient_tls(start_gateway, ca, tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file = folder / "fullchain.pem", folder / "privkey.pem"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_file.write_bytes(cert.private_key_pem.bytes())
    return start_gateway(
        CLIENT_IDLE_TIMEOUT="1", HEADER_TIMEOUT="2", TLS_CERT_FILE=str(cert_file), TLS_KEY_FILE=str(key_file)
    )


def test_an_idle_http2_connection_is_closed(impatient_tls, ca):
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.set_alpn_protocols(["h2"])
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    raw = socket.create_connection(("127.0.0.1", impatient_tls.proc.port), timeout=WAIT)
    with context.wrap_socket(raw, server_hostname="localhost") as s:
        assert s.selected_alpn_protocol() == "h2"
        conn.initiate_connection()
        conn.send_headers(
            1, [(":method", "GET"), (":scheme", "https"), (":path", "/health"), (":authority", "localhost")],
            end_stream=True,
        )
        s.sendall(conn.data_to_send())
        ended = terminated = False
        try:
            while data := s.recv(65536):
                for event in conn.receive_data(data):
                    ended = ended or isinstance(event, h2.events.StreamEnded)
                    terminated = terminated or isinstance(event, h2.events.ConnectionTerminated)
                s.sendall(conn.data_to_send())
        except (ConnectionResetError, ssl.SSLError):
            terminated = True
    assert ended, "the request was answered"
    assert terminated or not data, "then the connection was closed"


def test_a_tls_connection_without_a_request_is_closed(impatient_tls, ca):
    context = ssl.create_default_context()
    ca.configure_trust(context)
    raw = socket.create_connection(("127.0.0.1", impatient_tls.proc.port), timeout=WAIT)
    with context.wrap_socket(raw, server_hostname="localhost") as s:  # the handshake, then silence
        try:
            assert s.recv(65536) == b""
        except ConnectionResetError:
            pass


# -- open files ---------------------------------------------------------------------------------


def test_the_open_file_limit_is_raised_to_the_hard_limit(start_gateway):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lower = min(256, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))  # what the gateway inherits
    try:
        gateway = start_gateway()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert resource.prlimit(gateway.proc.popen.pid, resource.RLIMIT_NOFILE) == (hard, hard)
    assert f"open files: {hard}" in gateway.proc.log()


def test_running_out_of_files_is_logged_once_a_second_and_passes(start_gateway):
    gateway = start_gateway(MAX_CONNECTIONS_PER_CLIENT="1000")
    pid = gateway.proc.popen.pid
    limit = open_files(gateway) + 20
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
    log_start = len(gateway.proc.log())
    sockets = []
    try:
        for _ in range(60):  # 20 fit; the rest wait in the listen backlog, accept() failing
            s = socket.socket()
            s.settimeout(WAIT)
            s.connect(("127.0.0.1", gateway.proc.port))
            sockets.append(s)
        time.sleep(3)
        logged = gateway.proc.log()[log_start:]
        lines = [line for line in logged.splitlines() if "Too many open files" in line]
        assert 1 <= len(lines) <= 5, logged[-3000:]
        assert "Traceback" not in logged
        # One failed accept() a second, not hundreds: none of them was held back from the log.
        assert all("cannot accept connections" in line and "not logged" not in line for line in lines)
    finally:
        for s in sockets:
            s.close()
    procs.wait_until(lambda: httpx.get(f"{gateway.url}/health", timeout=2).status_code == 200, timeout=WAIT)

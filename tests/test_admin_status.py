"""admin.status: is privatemode-proxy answering, did attestation succeed, is this an SEV-SNP guest."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from admin import status
from tests.procs import free_port

SUCCESS = ('time=2026-05-01T10:00:00.000Z level=INFO msg="Validate succeeded" '
           'validator.name=snp-0-GENOA')
FAILURE = ('time=2026-05-01T11:00:00.000Z level=ERROR msg="Validate failed: TCB version too low" '
           'validator.name=snp-0-GENOA')


class NotFound(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_404():
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_upstream_answering_with_404_counts_as_up(http_404):
    check = status.upstream(http_404)
    assert (check.ok, check.summary) == (True, "answering")
    assert "HTTP 404" in check.detail


def test_upstream_not_listening():
    check = status.upstream(f"http://127.0.0.1:{free_port()}", timeout=0.5)
    assert (check.ok, check.summary) == (False, "not answering")
    assert "Connection" in check.detail


def test_upstream_that_never_answers_times_out():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        check = status.upstream(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.2)
    assert check.ok is False


@pytest.mark.parametrize(
    "lines, ok, summary, detail",
    [
        ([SUCCESS], True, "succeeded", "validator snp-0-GENOA, logged at 2026-05-01T10:00:00.000Z"),
        ([SUCCESS, FAILURE], False, "failed", "Validate failed: TCB version too low"),
        ([FAILURE, SUCCESS], True, "succeeded", "snp-0-GENOA"),
        (['{"time":"t1","level":"INFO","msg":"Validate succeeded","validator.name":"snp-1-MILAN"}'],
         True, "succeeded", "snp-1-MILAN"),
        (['level=INFO msg="Starting proxy" port=8080'], None, "no result yet", "no attestation lines"),
        ([], None, "no result yet", ""),
    ],
)
def test_attestation_from_the_log(tmp_path, lines, ok, summary, detail):
    log = tmp_path / "privatemode-proxy.log"
    noise = 'level=INFO msg="request" path=/v1/models'
    log.write_text("\n".join(['level=INFO msg="Starting"', *lines, noise]))
    check = status.attestation(log)
    assert (check.ok, check.summary) == (ok, summary)
    assert detail in check.detail


def test_attestation_log_not_readable(tmp_path):
    check = status.attestation(tmp_path / "missing.log")
    assert (check.ok, check.summary) == (None, "log not readable")
    assert "missing.log" in check.detail


def test_attestation_reads_only_the_tail_of_a_big_log(tmp_path):
    log = tmp_path / "big.log"
    filler = 'level=INFO msg="request" path=/v1/chat/completions\n' * (status.LOG_TAIL_BYTES // 40)
    log.write_text(FAILURE + "\n" + filler + SUCCESS + "\n")
    assert status.attestation(log).ok is True


def test_sev_snp_not_detected_in_a_readable_kernel_log(tmp_path, monkeypatch):
    kmsg = tmp_path / "kmsg"
    kmsg.write_text("6,1,2,-;Memory Encryption Features active: AMD SME\n")
    monkeypatch.setattr(status, "_systemd_says_snp", lambda: None)
    check = status.sev_snp_guest(device=tmp_path / "sev-guest", sysfs=tmp_path / "sev", kmsg=kmsg)
    assert (check.ok, check.summary) == (False, "not detected")
    assert "kernel log: no SEV-SNP line" in check.detail


def test_sev_snp_cannot_tell_when_nothing_is_readable(tmp_path, monkeypatch):
    """Inside a container: no kernel log, no guest device. That is no evidence either way."""
    monkeypatch.setattr(status, "_systemd_says_snp", lambda: None)
    check = status.sev_snp_guest(device=tmp_path / "sev-guest", sysfs=tmp_path / "sev",
                                 kmsg=tmp_path / "kmsg")
    assert (check.ok, check.summary) == (None, "cannot tell from here")
    assert "kernel log not readable" in check.detail and "systemd-detect-virt --cvm" in check.detail


@pytest.mark.parametrize(
    "line, found",
    [
        ("Memory Encryption Features active: AMD SEV SEV-ES SEV-SNP", "SEV-SNP memory encryption"),
        ("Hyper-V: Isolation Config: Group A 0x1, Group B 0xba2", "Hyper-V SNP isolation"),
        ("Hyper-V: Isolation Config: Group A 0x1, Group B 0xba1", None),  # VBS isolation
        ("Hyper-V: Isolation Config: Group A 0x0, Group B 0x0", None),
        ("Memory Encryption Features active: AMD SEV", None),
    ],
)
def test_kernel_lines(line, found):
    result = status.snp_in_kernel_line(line)
    assert (found in result) if found else result is None


def test_sev_snp_detected_by_the_guest_device(tmp_path):
    device = tmp_path / "sev-guest"
    device.touch()
    check = status.sev_snp_guest(device=device, sysfs=tmp_path / "sev", kmsg=tmp_path / "kmsg")
    assert (check.ok, check.summary) == (True, "detected")
    assert "sev-guest" in check.detail


def test_sev_snp_detected_by_the_kernel_log(tmp_path, monkeypatch):
    kmsg = tmp_path / "kmsg"
    kmsg.write_text("6,1,2,-;Memory Encryption Features active: AMD SEV SEV-ES SEV-SNP\n")
    monkeypatch.setattr(status, "_systemd_says_snp", lambda: None)
    check = status.sev_snp_guest(device=tmp_path / "none", sysfs=tmp_path / "none", kmsg=kmsg)
    assert check.ok is True and "kernel log" in check.detail


def test_sev_snp_on_this_machine_is_reported_honestly():
    check = status.sev_snp_guest()
    assert check.summary in ("detected", "not detected", "cannot tell from here")
    assert check.detail

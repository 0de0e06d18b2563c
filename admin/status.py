"""What the settings tab reports about the machine: privatemode-proxy, attestation, SEV-SNP."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

LOG_TAIL_BYTES = 256 * 1024


@dataclass(frozen=True)
class Check:
    ok: bool | None  # None: could not tell
    summary: str
    detail: str = ""


def upstream(url: str, timeout: float = 1.0) -> Check:
    """Whether privatemode-proxy answers HTTP at `url`. It has no health route: any status line counts."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    if parts.scheme == "https":
        # Only liveness is asked here, not identity: privatemode-proxy's own certificate may be self-signed.
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"User-Agent": "privatemode-gateway-admin"})
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return Check(False, "not answering", f"{url}: {exc.__class__.__name__}: {exc}")
    finally:
        conn.close()
    return Check(True, "answering", f"{url} replied with HTTP {status}")


_TEXT_FIELD = re.compile(r'([\w.]+)=("(?:[^"\\]|\\.)*"|\S+)')


def _fields(line: str) -> dict[str, str]:
    """The key=value pairs of a logfmt line (Go's slog text handler), or a JSON line's fields."""
    line = line.strip()
    if line.startswith("{"):
        try:
            data = json.loads(line)
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    fields = {}
    for name, value in _TEXT_FIELD.findall(line):
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"')
        fields[name] = value
    return fields


def _is_failure(fields: dict[str, str]) -> bool:
    msg = fields.get("msg", "").lower()
    level = fields.get("level", "").upper()
    return level in ("ERROR", "WARN", "WARNING") and any(w in msg for w in ("validat", "attest", "verif"))


def attestation(log_file: Path) -> Check:
    """The last attestation result privatemode-proxy logged (it validates Privatemode's deployment)."""
    try:
        with open(log_file, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(size - LOG_TAIL_BYTES, 0))
            tail = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return Check(None, "log not readable", f"{log_file}: {exc.strerror or exc}")
    latest: tuple[bool, dict[str, str]] | None = None
    for line in tail.splitlines():
        if "alidat" not in line and "ttest" not in line:
            continue
        fields = _fields(line)
        # Lines are in time order, so the last result seen is the current one.
        if fields.get("msg") == "Validate succeeded":
            latest = True, fields
        elif _is_failure(fields):
            latest = False, fields
    if latest is None:
        return Check(None, "no result yet", f"no attestation lines in the last part of {log_file}")
    ok, fields = latest
    at = f", logged at {fields['time']}" if fields.get("time") else ""
    if ok:
        return Check(True, "succeeded", f"validator {fields.get('validator.name', 'unknown')}{at}")
    return Check(False, "failed", f"{fields.get('msg', '')}{at}")


SEV_GUEST_DEVICE = Path("/dev/sev-guest")
SEV_SYSFS = Path("/sys/devices/system/cpu/sev")
KMSG = Path("/dev/kmsg")
# KVM guests: the kernel names SEV-SNP itself.
SNP_KERNEL_LINE = re.compile(r"Memory Encryption Features active:.*SEV-SNP")
# Azure and other Hyper-V guests run SNP under a paravisor: the kernel says only "AMD SEV", but
# the isolation type in the low four bits of Group B is 2 (HV_ISOLATION_TYPE_SNP).
HYPERV_ISOLATION = re.compile(r"Hyper-V: Isolation Config: Group A 0x[0-9a-fA-F]+, Group B (0x[0-9a-fA-F]+)")
HV_ISOLATION_TYPE_SNP = 2


def snp_in_kernel_line(line: str) -> str | None:
    """What a kernel log line tells about SEV-SNP, or None."""
    if SNP_KERNEL_LINE.search(line):
        return "the kernel log reports SEV-SNP memory encryption"
    match = HYPERV_ISOLATION.search(line)
    if match and int(match.group(1), 16) & 0xF == HV_ISOLATION_TYPE_SNP:
        return "the kernel log reports Hyper-V SNP isolation (Azure confidential VM)"
    return None


def _kernel_log_says_snp(kmsg: Path) -> str | bool | None:
    """The evidence if the kernel reported SEV-SNP at boot, False if not, None if its log is unreadable."""
    try:
        fd = os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                return False
            except BrokenPipeError:
                continue  # records were overwritten while reading: go on with the next
            if not record:
                return False
            found = snp_in_kernel_line(record.decode("utf-8", "replace"))
            if found:
                return found
    except OSError:
        return None
    finally:
        os.close(fd)


def _systemd_says_snp() -> bool | None:
    tool = shutil.which("systemd-detect-virt")
    if tool is None:
        return None
    try:
        out = subprocess.run([tool, "--cvm"], capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode not in (0, 1) or "unrecognized" in out.stderr:
        return None  # too old to know --cvm
    return out.stdout.strip() == "sev-snp"


def sev_snp_guest(device: Path = SEV_GUEST_DEVICE, sysfs: Path = SEV_SYSFS, kmsg: Path = KMSG) -> Check:
    """Whether this machine runs as an AMD SEV-SNP guest, with the evidence found or the places looked.

    "cannot tell" when no source could be read at all, as inside a container without the kernel
    log or the guest device: that is not evidence either way.
    """
    evidence, looked, readable = [], [], False
    if device.exists():
        evidence.append(f"{device} exists (sev-guest driver)")
    else:
        looked.append(f"no {device}")
    if sysfs.exists():
        evidence.append(f"{sysfs} exists (SNP guest kernel)")
    kernel = _kernel_log_says_snp(kmsg)
    if kernel:
        evidence.append(kernel)
    elif kernel is False:
        readable = True
        looked.append("kernel log: no SEV-SNP line")
    else:
        looked.append("kernel log not readable")
    systemd = _systemd_says_snp()
    if systemd:
        evidence.append("systemd-detect-virt --cvm says sev-snp")
    elif systemd is False:
        readable = True
        looked.append("systemd-detect-virt --cvm: not sev-snp")
    if evidence:
        return Check(True, "detected", "; ".join(evidence))
    if not readable:
        return Check(None, "cannot tell from here",
                     "; ".join(looked) + ". Check on the VM itself: systemd-detect-virt --cvm")
    return Check(False, "not detected", "; ".join(looked))

"""Serve the operator's certificate, and pick up a renewed one without a restart.

mitmproxy wants key and certificate in one PEM. We write that bundle into a private folder
(0700) as a 0600 file, under a new name for each version: changing the `certs` option to a new
path is what makes mitmproxy's tlsconfig build a fresh certificate store for new connections.
"""

from __future__ import annotations

import os
from pathlib import Path

CHECK_SECONDS = 10


class CertificateBundle:
    def __init__(self, cert_file: Path, key_file: Path, private_dir: Path) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.private_dir = private_dir
        self._seen: tuple[int, int] | None = None
        self.path: Path | None = None

    def _stamp(self) -> tuple[int, int]:
        return self.cert_file.stat().st_mtime_ns, self.key_file.stat().st_mtime_ns

    def changed(self) -> bool:
        try:
            return self._stamp() != self._seen
        except FileNotFoundError:  # mid-renewal: keep serving the bundle we have
            return False

    def write(self) -> Path:
        """Write a new bundle (key first, then the chain) and remove the previous one."""
        stamp = self._stamp()
        pem = self.key_file.read_bytes().rstrip() + b"\n" + self.cert_file.read_bytes()
        self.private_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.private_dir, 0o700)
        path = self.private_dir / f"bundle-{stamp[0]}-{stamp[1]}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        previous, self.path, self._seen = self.path, path, stamp
        if previous and previous != path:
            previous.unlink(missing_ok=True)
        return path

    def option_value(self) -> list[str]:
        return [f"*={self.path}"]

"""What the gateway and the admin agree on: the secret that vouches for forwarded headers, and
the largest body the admin takes.

The admin listens on loopback, where anything running on the machine can reach it, so a
loopback peer proves nothing: the admin believes X-Forwarded-* only on requests that carry
this secret, which only the gateway adds.

How the two processes share it: a random secret in DATA_DIR/admin_gateway_secret, mode 0600,
made by whichever of them needs it first and read by the other. Both run as the same user with
the same DATA_DIR in every way they are started (entrypoint.sh, `make run`, `python -m admin` and
`python -m addons` alone, the tests), and both already keep their state there; a secret handed
down in the environment would need entrypoint.sh, which the last two do not use, and would sit
in /proc/*/environ, which the same user can read as well as this file. It lasts across
restarts, so restarting one process never leaves the other with a different secret.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

HEADER = "X-Gateway-Secret"
# The same header as the WSGI server hands it to the app.
WSGI_KEY = "HTTP_" + HEADER.upper().replace("-", "_")
FILE_NAME = "admin_gateway_secret"
MIN_LENGTH = 32
# The admin's forms are a few kilobytes; nothing sent to it before a login needs more.
MAX_BODY_BYTES = 1024 * 1024


class SecretError(ValueError):
    """The secret's file cannot be read or made; the message names it."""


def load_or_create(data_dir: Path) -> str:
    """The shared secret from DATA_DIR, made first if it is not there yet."""
    path = Path(data_dir) / FILE_NAME
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    secret = secrets.token_urlsafe(48)
    # Written in full under a name of our own, then linked into place: link() fails when the
    # other process was first, and neither ever reads a half-written file.
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secret + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read(path)
        return secret
    except OSError as exc:
        raise SecretError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _read(path: Path) -> str:
    try:
        secret = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError(f"cannot read {path}: {exc}") from None
    if len(secret) < MIN_LENGTH:
        raise SecretError(f"{path} holds no usable secret: delete it and restart the gateway and the admin")
    return secret

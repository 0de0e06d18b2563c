"""What the admin needs before it may start: a strong enough password and a session secret."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from storage.config import Settings

MIN_PASSWORD_LENGTH = 12
SECRET_KEY_FILE = "admin_secret_key"


class StartupError(ValueError):
    """The admin must not start; the message tells the operator what to fix."""


def admin_password(settings: Settings) -> str:
    """ADMIN_PASSWORD, or StartupError when it is missing or too short."""
    password = settings.admin_password
    if not password:
        raise StartupError("ADMIN_PASSWORD is not set; the admin panel refuses to start without one")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise StartupError(
            f"ADMIN_PASSWORD is {len(password)} characters long; use at least {MIN_PASSWORD_LENGTH}"
        )
    return password


def load_secret_key(data_dir: Path) -> str:
    """The session secret in DATA_DIR/admin_secret_key, created (mode 0600) when missing.

    Persisted so that a restart of the admin keeps everyone logged in.
    """
    path = Path(data_dir) / SECRET_KEY_FILE
    try:
        secret = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        secret = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"cannot read the session secret {path}: {exc}") from None
    if len(secret) >= 32:
        return secret
    secret = secrets.token_urlsafe(48)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL on a temp name, then rename: never a moment with a readable or partial secret.
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secret + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise StartupError(f"cannot write the session secret {path}: {exc}") from None
    return secret

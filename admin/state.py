"""The gateway's settings as the admin got them, and the limits in force now."""

from __future__ import annotations

from flask import current_app

from storage.config import Settings
from storage.settings import Limits, load_limits


def gateway_settings() -> Settings:
    return current_app.extensions["admin_settings"]


def env_limits() -> Limits:
    """The environment's limits: what applies where the admin set nothing."""
    return Limits.from_settings(gateway_settings())


def limits() -> Limits:
    """The limits in force: values set in the admin over the environment's."""
    return load_limits(env_limits())

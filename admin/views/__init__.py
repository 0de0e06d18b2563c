"""One blueprint per tab, all under /admin."""

from __future__ import annotations

from flask import Flask

from admin.views import audit, docs, keys, settings, usage

BLUEPRINTS = (keys.bp, usage.bp, settings.bp, docs.bp, audit.bp)

# (endpoint, label) of the top navigation, in order.
TABS = (
    ("keys.index", "API keys"),
    ("usage.index", "Usage & costs"),
    ("settings.index", "Settings"),
    ("docs.index", "Documentation"),
    ("audit.index", "Audit log"),
)


def init_app(app: Flask) -> None:
    for bp in BLUEPRINTS:
        app.register_blueprint(bp)
    app.jinja_env.globals["TABS"] = TABS

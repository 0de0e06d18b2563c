"""The checks every engine patch makes of its mitmproxy targets before anything is patched."""

from __future__ import annotations

import inspect

from mitmproxy import exceptions, version


class EngineMismatch(RuntimeError, exceptions.OptionsError):
    """mitmproxy is not the version these patches were made for.

    Also an OptionsError: that is the only kind mitmproxy's addon loader lets through, so the
    gateway's load hook stops start-up with it instead of logging it and running unpatched.
    """


def fail(patch: str, detail: str) -> None:
    raise EngineMismatch(
        f"mitmproxy {version.VERSION} does not fit the gateway's patch '{patch}' "
        f"(made for mitmproxy 12.2, see addons/engine/__init__.py): {detail}"
    )


def target(patch: str, owner, name: str, own: bool = False):
    found = vars(owner).get(name) if own else getattr(owner, name, None)
    if found is None:
        fail(patch, f"{_name(owner)}.{name} is missing" + (" (or only inherited)" if own else ""))
    return found


def signature(patch: str, owner, name: str, *params: str, own: bool = False) -> None:
    """`owner.name` takes exactly `params` (a patched one is followed to mitmproxy's original)."""
    found_target = target(patch, owner, name, own)
    try:
        found = tuple(inspect.signature(found_target).parameters)  # follows functools.wraps
    except (TypeError, ValueError):
        found = None
    if found != params:
        fail(patch, f"{_name(owner)}.{name} takes {found}, not {params}")


def refers(patch: str, owner, name: str, *names: str) -> None:
    """mitmproxy's code of `owner.name` still uses each of `names` (attributes, globals)."""
    code = getattr(inspect.unwrap(target(patch, owner, name)), "__code__", None)
    missing = [n for n in names if code is None or n not in code.co_names]
    if missing:
        fail(patch, f"{_name(owner)}.{name} no longer uses {', '.join(missing)}")


def annotated(patch: str, cls: type, *names: str) -> None:
    missing = [n for n in names if n not in getattr(cls, "__annotations__", {})]
    if missing:
        fail(patch, f"{_name(cls)} no longer declares {', '.join(missing)}")


def has(patch: str, owner, *names: str) -> None:
    missing = [n for n in names if not hasattr(owner, n)]
    if missing:
        fail(patch, f"{_name(owner)} has no {', '.join(missing)}")


def _name(owner) -> str:
    return f"{owner.__module__}.{owner.__name__}" if isinstance(owner, type) else owner.__name__

"""Backends register by (stage kind, name); the agent asks for one by the configured name.

Instances are created once per process and shared by every call: a model loads once,
whatever the number of calls (see DESIGN.md, local model stack).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from parley.config import Settings

Factory = Callable[[Settings], Any]

_factories: dict[tuple[str, str], Factory] = {}
_instances: dict[tuple[str, str], Any] = {}
_lock = threading.Lock()


class UnknownBackend(LookupError):
    """No backend of that name is registered for the stage."""


def register(kind: str, name: str) -> Callable[[Factory], Factory]:
    """Class/function decorator: ``@register("tts", "local")``."""

    def wrap(factory: Factory) -> Factory:
        _factories[(kind, name)] = factory
        return factory

    return wrap


def get(kind: str, name: str, settings: Settings) -> Any:
    """The shared backend instance for ``kind``/``name``, created on first use (thread-safe)."""
    key = (kind, name)
    with _lock:
        if key not in _instances:
            _load_backend_modules()
            if key not in _factories:
                known = sorted(n for k, n in _factories if k == kind)
                raise UnknownBackend(f"no {kind} backend named {name!r} (known: {known})")
            _instances[key] = _factories[key](settings)
        return _instances[key]


def _load_backend_modules() -> None:
    """Import the backend modules so their ``@register`` decorators run."""
    import pipeline.backends  # noqa: F401

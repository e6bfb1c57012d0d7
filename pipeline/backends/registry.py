"""Backends register by (stage kind, name); the agent asks for one by the configured name.

Instances are created once per process and shared by every call: a model loads once,
whatever the number of calls (docs/architecture.md, Models and threads). A backend whose instance
depends on settings (which model file, which server) registers a ``key`` function: one
instance exists per distinct key, so two configurations in one process never share a
client pointed at the wrong server.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import sys
import threading
from collections.abc import Callable, Hashable
from typing import Any

from parley.config import Settings

logger = logging.getLogger(__name__)

Factory = Callable[[Settings], Any]
KeyFunc = Callable[[Settings], Hashable]

_factories: dict[tuple[str, str], tuple[Factory, KeyFunc]] = {}
_instances: dict[tuple[str, str, Hashable], Any] = {}
_lock = threading.Lock()


def shared(settings: Settings) -> Hashable:
    """Key for backends that are the same whatever the settings."""
    return ()


def all_settings(settings: Settings) -> Hashable:
    """Key for backends configured by many settings (remote clients): all of them."""
    return dataclasses.astuple(settings)


class UnknownBackend(LookupError):
    """No backend of that name is registered for the stage."""


def register(kind: str, name: str, key: KeyFunc = shared) -> Callable[[Factory], Factory]:
    """Class/function decorator: ``@register("tts", "local")``."""

    def wrap(factory: Factory) -> Factory:
        _factories[(kind, name)] = (factory, key)
        return factory

    return wrap


def instance_key(kind: str, name: str, settings: Settings) -> tuple[str, str, Hashable]:
    """Which shared instance ``get`` returns for these arguments."""
    with _lock:
        _load_backend_modules()
        if (kind, name) not in _factories:
            known = sorted(n for k, n in _factories if k == kind)
            raise UnknownBackend(f"no {kind} backend named {name!r} (known: {known})")
        return (kind, name, _factories[(kind, name)][1](settings))


def get(kind: str, name: str, settings: Settings) -> Any:
    """The shared backend instance for ``kind``/``name``, created on first use (thread-safe)."""
    key = instance_key(kind, name, settings)
    with _lock:
        if key not in _instances:
            _instances[key] = _factories[(kind, name)][0](settings)
        return _instances[key]


def evict(instance: Any) -> None:
    """Forget a shared instance (it was closed): the next ``get`` builds a new one."""
    with _lock:
        for key in [k for k, v in _instances.items() if v is instance]:
            del _instances[key]


BACKEND_MODULES = ("local_stt", "local_llm", "local_tts", "local_embed", "openai_backends")


def _load_backend_modules() -> None:
    """Import the backend modules so their ``@register`` decorators run.

    A module whose runtime is not installed in this build is skipped with a warning: the
    other backends stay usable, and asking for the missing one names what is known.
    """
    for module in BACKEND_MODULES:
        name = f"pipeline.backends.{module}"
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            logger.warning("backend module %s unavailable: %s", module, exc)

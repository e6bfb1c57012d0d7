"""Shape checks for client events (DataChannel ``events`` and ``/ws``) before any handler runs.

Handlers downstream index and compare fields as the contract says they are typed
(``plot_node in nodes`` raises ``TypeError`` for a list, ``rate not in ALLOWED_RATES`` is
fine but ``message["text"].strip()`` is not for a number); checking the shape once, here,
turns every malformed event into an ``error {code: "bad_event"}`` reply instead of an
exception in a call task.
"""

from __future__ import annotations

from typing import Any

MAX_TYPE_CHARS = 40

_STR = (str,)
_NUMBER = (int, float)
#: event type -> {field: allowed types}; a field that is absent is not checked here
FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "ping": {},
    "interrupt": {},
    "audio-end": {},
    "text": {"text": _STR},
    "settings": {"persona": _STR, "emotion": _NUMBER, "plot_node": (str, type(None))},
    "audio-chunk": {"seq": (int,), "data": _STR, "rate": (int,)},
    "mute": {"on": (bool,)},  # rooms
}


def event_problem(message: dict[str, Any]) -> str | None:
    """Why ``message`` is not a well-formed client event, or None if it is."""
    kind = message.get("type")
    if not isinstance(kind, str) or not kind or len(kind) > MAX_TYPE_CHARS:
        return "an event needs a string 'type'"
    for name, types in FIELDS.get(kind, {}).items():
        if name in message and not _is(message[name], types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            return f"{kind}.{name} must be {names}"
    return None


def _is(value: Any, types: tuple[type, ...]) -> bool:
    """``isinstance``, except that a bool is no number (JSON ``true`` is not ``1``)."""
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))

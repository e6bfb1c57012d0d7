"""Personas: who the agent is, as one JSON file per persona next to this module.

A persona file is data, not code, so non-programmers can add one; in exchange it is
checked strictly at load time, and a mistake names the file and the field instead of
surfacing later as a strange reply. The format is documented in ``docs/personas.md``.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

PERSONA_DIR = Path(__file__).resolve().parent
#: "agent" talks through the LLM; "echo" repeats what it heard (a loopback diagnostic).
KINDS = ("agent", "echo")
#: "none": nothing remembered; "explicit": only what the user asks to be remembered;
#: "auto": facts are picked from the conversation and recalled in later sessions.
MEMORY_POLICIES = ("none", "explicit", "auto")
#: Emotion bands a persona may give its own wording for (see ``pipeline.prompt``).
EMOTION_BANDS = ("calm", "neutral", "lively")
TEMPERATURE_RANGE = (0.0, 2.0)
MAX_TOKENS_RANGE = (1, 1024)
SPEED_RANGE = (0.5, 2.0)
_ID = re.compile(r"[a-z0-9][a-z0-9_-]*")


class PersonaError(ValueError):
    """A persona file is invalid; the message names the file and the field."""


class UnknownPersona(LookupError):
    """No persona has that id."""


@dataclass(frozen=True)
class Persona:
    """One persona, validated. Mappings are read-only views: personas are shared."""

    id: str
    name: str
    description: str
    system_prompt: str
    voice: str | None
    temperature: float
    max_tokens: int
    memory_policy: str
    kind: str = "agent"
    speed: float = 1.0
    plot_nodes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    emotion_styles: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def public(self) -> dict[str, Any]:
        """The fields ``GET /api/personas`` shows to clients; ``plot_nodes`` as a list in the
        file's order (``[{"id", "text"}]``, empty for most personas) so a client can offer
        them and send ``settings {plot_node: id}``."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "voice": self.voice,
            "plot_nodes": [{"id": node, "text": text} for node, text in self.plot_nodes.items()],
        }


_REQUIRED: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "name": (str,),
    "description": (str,),
    "system_prompt": (str,),
    "voice": (str, type(None)),
    "temperature": (int, float),
    "max_tokens": (int,),
    "memory_policy": (str,),
}
_OPTIONAL: dict[str, tuple[type, ...]] = {
    "kind": (str,),
    "speed": (int, float),
    "plot_nodes": (dict,),
    "emotion_styles": (dict,),
}


def load_personas(directory: Path | None = None) -> dict[str, Persona]:
    """Every ``*.json`` persona in ``directory`` (default: this package), by id.

    Raises:
        PersonaError: a file is not valid JSON or breaks the schema.
    """
    folder = PERSONA_DIR if directory is None else directory
    personas = [load_persona_file(path) for path in sorted(folder.glob("*.json"))]
    return {p.id: p for p in personas}


def get_persona(persona_id: str) -> Persona:
    """The built-in persona ``persona_id``.

    Raises:
        UnknownPersona: no such id (the message lists the known ones).
    """
    personas = _builtin()
    try:
        return personas[persona_id]
    except KeyError:
        raise UnknownPersona(
            f"unknown persona {persona_id!r} (known: {', '.join(sorted(personas))})"
        ) from None


@functools.cache
def _builtin() -> dict[str, Persona]:
    """Built-in personas are read once per process; they are package data."""
    return load_personas()


def load_persona_file(path: Path) -> Persona:
    """Read and validate one persona file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PersonaError(f"{path}: cannot read persona JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PersonaError(f"{path}: a persona file must hold one JSON object")
    return _Validator(path, data).persona()


class _Validator:
    """Schema checks for one file; every error names ``path`` and the field."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self._path = path
        self._data = data

    def fail(self, name: str, problem: str) -> PersonaError:
        return PersonaError(f"{self._path}: field {name!r} {problem}")

    def persona(self) -> Persona:
        self._check_names()
        for name, types in (_REQUIRED | _OPTIONAL).items():
            if name in self._data:
                self._check_type(name, types)
        data = self._data
        kind = data.get("kind", "agent")
        self._check_id(data["id"])
        self._check_choice("kind", kind, KINDS)
        self._check_choice("memory_policy", data["memory_policy"], MEMORY_POLICIES)
        self._check_range("temperature", data["temperature"], TEMPERATURE_RANGE)
        self._check_range("max_tokens", data["max_tokens"], MAX_TOKENS_RANGE)
        self._check_range("speed", data.get("speed", 1.0), SPEED_RANGE)
        if kind == "agent" and not data["system_prompt"].strip():
            raise self.fail("system_prompt", "must not be empty for an agent persona")
        styles = self._text_map("emotion_styles")
        unknown = sorted(set(styles) - set(EMOTION_BANDS))
        if unknown:
            raise self.fail("emotion_styles", f"has unknown band(s) {unknown}; use {EMOTION_BANDS}")
        return Persona(
            id=data["id"],
            name=data["name"],
            description=data["description"],
            system_prompt=data["system_prompt"],
            voice=data["voice"],
            temperature=float(data["temperature"]),
            max_tokens=data["max_tokens"],
            memory_policy=data["memory_policy"],
            kind=kind,
            speed=float(data.get("speed", 1.0)),
            plot_nodes=MappingProxyType(self._text_map("plot_nodes")),
            emotion_styles=MappingProxyType(styles),
        )

    def _check_names(self) -> None:
        missing = [name for name in _REQUIRED if name not in self._data]
        if missing:
            raise self.fail(missing[0], "is missing")
        unknown = sorted(set(self._data) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            raise self.fail(unknown[0], "is not a persona field (misspelt?)")

    def _check_type(self, name: str, types: tuple[type, ...]) -> None:
        value = self._data[name]
        if isinstance(value, bool) or not isinstance(value, types):  # JSON true is no number
            wanted = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise self.fail(name, f"must be {wanted}, got {type(value).__name__}")

    def _check_id(self, value: str) -> None:
        if not _ID.fullmatch(value):
            raise self.fail("id", "must be lower-case letters, digits, '-' or '_'")
        if value != self._path.stem:
            raise self.fail("id", f"is {value!r} but the file is named {self._path.name}")

    def _check_choice(self, name: str, value: str, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            raise self.fail(name, f"is {value!r}; allowed: {', '.join(allowed)}")

    def _check_range(self, name: str, value: float, bounds: tuple[float, float]) -> None:
        low, high = bounds
        if not (math.isfinite(value) and low <= value <= high):
            raise self.fail(name, f"is {value}; must be within {low}..{high}")

    def _text_map(self, name: str) -> dict[str, str]:
        mapping = self._data.get(name, {})
        for key, text in mapping.items():
            if not isinstance(text, str) or not text.strip():
                raise self.fail(name, f"entry {key!r} must be a non-empty string")
        return dict(mapping)

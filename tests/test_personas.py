"""Persona files: the built-in set loads, and every schema mistake names file and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from personas import (
    MEMORY_POLICIES,
    PersonaError,
    UnknownPersona,
    get_persona,
    load_personas,
)


def valid(persona_id: str = "tester") -> dict[str, Any]:
    return {
        "id": persona_id,
        "name": "Tester",
        "description": "A persona for tests.",
        "system_prompt": "You are a tester. Answer in one short sentence.",
        "voice": "joe",
        "temperature": 0.7,
        "max_tokens": 40,
        "memory_policy": "none",
    }


def write(folder: Path, data: dict[str, Any], name: str = "tester.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_builtin_personas_load() -> None:
    personas = load_personas()
    assert set(personas) >= {"socrates", "holmes", "storyteller", "echo"}
    assert personas["echo"].kind == "echo"
    assert all(personas[p].kind == "agent" for p in ("socrates", "holmes", "storyteller"))
    assert "fan" in personas["holmes"].description.lower()
    assert personas["storyteller"].plot_nodes
    assert all(p.memory_policy in MEMORY_POLICIES for p in personas.values())


def test_get_persona_and_public_fields() -> None:
    socrates = get_persona("socrates")
    assert socrates.public() == {
        "id": "socrates",
        "name": socrates.name,
        "description": socrates.description,
        "voice": socrates.voice,
        "plot_nodes": [],
    }
    storyteller = get_persona("storyteller")
    nodes = storyteller.public()["plot_nodes"]
    assert [n["id"] for n in nodes] == list(storyteller.plot_nodes)  # the file's order
    assert all(n["text"] == storyteller.plot_nodes[n["id"]] for n in nodes)


def test_unknown_persona_lists_the_known_ones() -> None:
    with pytest.raises(UnknownPersona, match="socrates") as caught:
        get_persona("nobody")
    assert isinstance(caught.value, LookupError)


def test_a_valid_custom_directory(tmp_path: Path) -> None:
    data = valid() | {"kind": "agent", "speed": 1.1, "plot_nodes": {"start": "At the gate."}}
    write(tmp_path, data)
    persona = load_personas(tmp_path)["tester"]
    assert persona.speed == pytest.approx(1.1)
    assert persona.plot_nodes["start"] == "At the gate."
    with pytest.raises(TypeError):
        persona.plot_nodes["other"] = "x"  # type: ignore[index]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": None}, "name"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2000}, "max_tokens"),
        ({"max_tokens": 10.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"memory_policy": "forever"}, "memory_policy"),
        ({"kind": "robot"}, "kind"),
        ({"speed": 5}, "speed"),
        ({"id": "someone-else"}, "id"),
        ({"voyce": "joe"}, "voyce"),
        ({"plot_nodes": {"start": ""}}, "plot_nodes"),
        ({"emotion_styles": {"angry": "Shout."}}, "emotion_styles"),
        ({"system_prompt": "  "}, "system_prompt"),
    ],
)
def test_invalid_field_is_named_with_the_file(
    tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    path = write(tmp_path, valid() | change)
    with pytest.raises(PersonaError) as caught:
        load_personas(tmp_path)
    message = str(caught.value)
    assert str(path) in message
    assert repr(field) in message


@pytest.mark.parametrize("field", ["system_prompt", "memory_policy", "voice"])
def test_missing_field_is_named(tmp_path: Path, field: str) -> None:
    data = valid()
    del data[field]
    path = write(tmp_path, data)
    with pytest.raises(PersonaError, match=f"{path.name}.*'{field}' is missing"):
        load_personas(tmp_path)


def test_echo_persona_may_have_an_empty_prompt(tmp_path: Path) -> None:
    write(tmp_path, valid() | {"kind": "echo", "system_prompt": ""})
    assert load_personas(tmp_path)["tester"].kind == "echo"


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_unreadable_file_is_named(tmp_path: Path, content: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PersonaError, match="broken.json"):
        load_personas(tmp_path)

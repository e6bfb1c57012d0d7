"""Typed rows handed out by the store, and the conversions at its edge.

Callers see ids as ``str`` (they travel in JSON, JWTs and Redis keys); Postgres keeps them as
``uuid``. The string form is the 32-digit hex of the UUID — the form signaling/auth.py puts in
session tokens — so ids compare equal as strings everywhere (Redis keys, Milvus filters).
Parsing happens here once, so a malformed id from a URL is simply "not found" instead of a
driver error deep inside a query.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def parse_uuid(value: str | uuid.UUID) -> uuid.UUID | None:
    """``value`` as a UUID, or None when it is not one (treated as an unknown id)."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return None


def canonical_id(value: str | uuid.UUID) -> str:
    """The hex form of an id given in any UUID spelling; ValueError if it is not a UUID."""
    parsed = parse_uuid(value)
    if parsed is None:
        raise ValueError(f"{value!r} is not an id")
    return parsed.hex


def new_id() -> str:
    """A fresh random id, as stored in every uuid primary key."""
    return uuid.uuid4().hex


def jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    """A database row as JSON-ready values: uuids as hex strings, timestamps as ISO 8601."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, uuid.UUID):
            value = value.hex
        elif isinstance(value, datetime):
            value = value.isoformat()
        out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str | None
    email: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> User:
        return cls(row["id"].hex, row["username"], row["email"], row["created_at"])


@dataclass(frozen=True, slots=True)
class Role:
    id: str
    name: str
    system_prompt: str
    default_voice: str | None
    config: dict[str, Any]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Role:
        return cls(
            row["id"], row["name"], row["system_prompt"], row["default_voice"], row["config_json"]
        )


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: str
    user_id: str
    role_id: str
    state: dict[str, Any]
    created_at: datetime
    last_active: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> SessionRecord:
        return cls(
            row["id"].hex,
            row["user_id"].hex,
            row["role_id"],
            row["state_json"],
            row["created_at"],
            row["last_active"],
        )


@dataclass(frozen=True, slots=True)
class NewMemory:
    """A memory row about to be inserted; ``id`` doubles as its vector's primary key."""

    user_id: str
    role_id: str
    text: str
    weight: float
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_id)


@dataclass(frozen=True, slots=True)
class MemoryRecord:
    id: str
    user_id: str
    role_id: str
    text: str
    embedding_id: str | None
    metadata: dict[str, Any]
    created_at: datetime
    last_used_at: datetime
    weight: float
    archived: bool

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> MemoryRecord:
        return cls(
            row["id"].hex,
            row["user_id"].hex,
            row["role_id"],
            row["text"],
            row["embedding_id"],
            row["metadata"],
            row["created_at"],
            row["last_used_at"],
            row["weight"],
            row["archived"],
        )

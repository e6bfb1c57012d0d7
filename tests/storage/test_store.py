"""Store rows: users, roles, sessions, turns, export and delete, against real Postgres."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from storage import Store
from tests.storage.conftest import ROLES
from tests.storage.probe import pg_rows


async def test_users_are_created_and_found(store: Store):
    user_id = await store.create_user("ana", email="ana@example.org", hashed_password="x")
    user = await store.get_user(user_id)
    assert user is not None
    assert (user.id, user.username, user.email) == (user_id, "ana", "ana@example.org")
    assert await store.get_user(str(uuid.UUID(user_id))) == user  # dashed spelling, same user
    assert await store.get_user(uuid.uuid4().hex) is None
    assert await store.get_user("not-an-id") is None


async def test_roles_upsert_updates_in_place(store: Store):
    role = await store.get_role("socrates")
    assert role is not None and role.default_voice == "joe" and role.config == ROLES[0]
    changed = {**ROLES[0], "name": "Sokrates", "system_prompt": "New prompt.", "voice": "amy"}
    await store.upsert_roles([changed])
    role = await store.get_role("socrates")
    assert role is not None
    assert (role.name, role.system_prompt, role.default_voice) == ("Sokrates", "New prompt.", "amy")
    assert await store.get_role("nobody") is None


async def test_sessions_are_created_touched_and_listed(store: Store):
    user_id = await store.create_user()
    first = await store.create_session(user_id, "socrates", {"emotion": 0.5})
    second = await store.create_session(user_id, "holmes")
    session = await store.get_session(first)
    assert session is not None
    assert (session.user_id, session.role_id, session.state) == (user_id, "socrates", {"emotion": 0.5})

    assert await store.touch_session(first, {"emotion": 0.9, "plot_node": "x"})
    touched = await store.get_session(first)
    assert touched is not None and touched.state == {"emotion": 0.9, "plot_node": "x"}
    assert touched.last_active >= session.last_active
    assert await store.touch_session(first)  # no state: keeps the one it has
    kept = await store.get_session(first)
    assert kept is not None and kept.state == touched.state

    assert await store.user_sessions(user_id) == [first, second]
    assert not await store.touch_session(uuid.uuid4().hex)
    assert await store.get_session("garbage") is None


async def test_a_session_needs_a_known_user_and_role(store: Store):
    user_id = await store.create_user()
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await store.create_session(user_id, "no-such-persona")
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await store.create_session(uuid.uuid4().hex, "socrates")


async def test_export_has_everything_but_the_password_hash(store: Store):
    user_id = await store.create_user("bo", hashed_password="secret-hash")
    session_id = await store.create_session(user_id, "socrates")
    started = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    await store.log_turn(session_id, user_id, "socrates", started_at=started,
                         latency_ms={"turn": 640.5, "stt": 120.0}, usage={"llm_tokens": 42})
    data = await store.export_user(user_id)
    assert data is not None
    assert data["user"]["id"] == user_id and data["user"]["has_password"] is True
    assert "secret-hash" not in repr(data)
    assert [s["id"] for s in data["sessions"]] == [session_id]
    (turn,) = data["turns"]
    assert turn["latency_ms"] == {"turn": 640.5, "stt": 120.0}
    assert turn["usage"] == {"llm_tokens": 42}
    assert turn["started_at"] == started.isoformat()
    assert data["memories"] == []
    assert await store.export_user(uuid.uuid4().hex) is None


async def test_delete_user_cascades_to_every_table(store: Store):
    user_id = await store.create_user()
    other = await store.create_user()
    for owner in (user_id, other):
        session_id = await store.create_session(owner, "holmes")
        await store.log_turn(session_id, owner, "holmes")
    assert (await pg_rows(store, user_id))["turns"] == 1

    assert await store.delete_user(user_id)
    assert await pg_rows(store, user_id) == dict.fromkeys(("users", "sessions", "memories", "turns"), 0)
    assert (await pg_rows(store, other))["turns"] == 1
    assert not await store.delete_user(user_id)

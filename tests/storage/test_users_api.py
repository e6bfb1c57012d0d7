"""Memory, export and delete routes through aiohttp's test client, on the real stores."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from parley.config import Settings
from pipeline.backends.base import Message
from pipeline.memory import MemoryService
from pipeline.window import ConversationWindow, open_window
from signaling.auth import TokenIssuer
from signaling.errors import error_middleware
from signaling.recordings import Recordings
from signaling.users_api import ExportTokens, setup_routes
from storage import Store, open_sink
from tests.storage.probe import milvus_ids, pg_rows, redis_keys

STORE = web.AppKey("store", Store)
MEMORY = web.AppKey("memory", MemoryService)
WINDOW = web.AppKey("window", ConversationWindow)
RECORDINGS = web.AppKey("recordings", Recordings)


TOKENS = TokenIssuer("test-secret-" + "x" * 32, 3600)


@dataclass
class Caller:
    user_id: str
    session_id: str

    @property
    def headers(self) -> dict[str, str]:
        """A real session token for this user and session."""
        return {"Authorization": f"Bearer {TOKENS.encode(TOKENS.claims(self.session_id, self.user_id, 'socrates'))}"}

    @property
    def export_headers(self) -> dict[str, str]:
        """A real export token (what POST /api/users/{id}/export-token hands out)."""
        return {"Authorization": f"Bearer {TOKENS.encode_export(self.user_id, self.session_id)[0]}"}


@pytest.fixture
async def window(settings: Settings, store: Store) -> AsyncIterator[ConversationWindow]:
    """The Redis window; the test's sessions (its database is its own) are purged after."""
    window = open_window(settings)
    try:
        yield window
        sessions = await store.pool.fetch("SELECT id FROM sessions")
        await window.purge([row["id"].hex for row in sessions])
    finally:
        await window.close()


@pytest.fixture
async def client(
    store: Store, memory: MemoryService, window: ConversationWindow, settings: Settings
) -> AsyncIterator[TestClient]:
    app = web.Application(middlewares=[error_middleware])
    app[STORE], app[MEMORY], app[WINDOW] = store, memory, window
    app[RECORDINGS] = Recordings(settings, store, open_sink(settings))
    setup_routes(app, store_key=STORE, memory_key=MEMORY, window_key=WINDOW, recordings_key=RECORDINGS,
                 auth=lambda r: TOKENS.from_request(r, required=True),
                 export_tokens=ExportTokens(issue=lambda r, c: TOKENS.encode_export(c.user_id, c.session_id),
                                            verify=TOKENS.export_from_request))
    async with TestClient(TestServer(app)) as client:
        yield client


async def _caller(store: Store, role: str = "socrates") -> Caller:
    user_id = await store.create_user()
    return Caller(user_id, await store.create_session(user_id, role))


async def _error(response) -> tuple[int, str]:
    body = await response.json()
    return response.status, body["error"]["code"]


async def test_explicit_memory_is_saved_for_the_sessions_persona(client: TestClient, store: Store):
    ana = await _caller(store, "holmes")
    response = await client.post(f"/api/sessions/{ana.session_id}/memories",
                                 json={"text": "I always take the night train."},
                                 headers=ana.headers)
    assert response.status == 201
    memory_id = (await response.json())["id"]
    (row,) = await store.memories.get([memory_id])
    assert (row.user_id, row.role_id, row.text) == (ana.user_id, "holmes",
                                                    "I always take the night train.")


@pytest.mark.parametrize(
    ("body", "code"),
    [({"text": "  "}, "empty_text"), ({"text": "x" * 1001}, "text_too_long"),
     ({"text": 5}, "bad_text"), ({}, "bad_text")],
)
async def test_bad_memory_text_is_a_400(client: TestClient, store: Store, body: dict, code: str):
    ana = await _caller(store)
    response = await client.post(f"/api/sessions/{ana.session_id}/memories", json=body,
                                 headers=ana.headers)
    assert await _error(response) == (400, code)


async def test_memory_routes_are_only_for_the_sessions_owner(client: TestClient, store: Store):
    ana, bo = await _caller(store), await _caller(store)
    for session in (bo.session_id, uuid.uuid4().hex, "garbage"):
        response = await client.post(f"/api/sessions/{session}/memories",
                                     json={"text": "I am Ana"}, headers=ana.headers)
        assert await _error(response) == (403, "forbidden")
    response = await client.post(f"/api/sessions/{ana.session_id}/memories", json={"text": "hi"})
    assert await _error(response) == (401, "unauthorized")
    assert await store.memories.for_user(bo.user_id) == []


async def test_a_user_may_only_export_or_delete_themselves(client: TestClient, store: Store):
    ana, bo = await _caller(store), await _caller(store)
    assert await _error(await client.get(f"/api/users/{bo.user_id}/export",
                                         headers=ana.export_headers)) == (403, "forbidden")
    assert await _error(await client.delete(f"/api/users/{bo.user_id}",
                                            headers=ana.headers)) == (403, "forbidden")
    assert await store.get_user(bo.user_id) is not None


async def test_export_has_profile_sessions_memories_turns_and_window(
    client: TestClient, store: Store, window: ConversationWindow
):
    ana = await _caller(store)
    await client.post(f"/api/sessions/{ana.session_id}/memories",
                      json={"text": "My cat is called Miso."}, headers=ana.headers)
    await store.log_turn(ana.session_id, ana.user_id, "socrates", latency_ms={"turn": 700.0})
    await window.append(ana.session_id, Message("user", "hello Socrates"))

    response = await client.get(f"/api/users/{ana.user_id}/export", headers=ana.export_headers)
    assert response.status == 200
    data = await response.json()
    assert data["user"]["id"] == ana.user_id
    assert [s["id"] for s in data["sessions"]] == [ana.session_id]
    assert [m["text"] for m in data["memories"]] == ["My cat is called Miso."]
    assert [t["latency_ms"] for t in data["turns"]] == [{"turn": 700.0}]
    assert data["window"] == {ana.session_id: [{"role": "user", "content": "hello Socrates"}]}
    assert data["recordings"] == []  # none without consent


async def test_delete_leaves_nothing_behind_in_any_store(
    client: TestClient, store: Store, window: ConversationWindow, settings: Settings
):
    ana, bo = await _caller(store), await _caller(store)
    second_session = await store.create_session(ana.user_id, "holmes")
    for caller in (ana, bo):
        await client.post(f"/api/sessions/{caller.session_id}/memories",
                          json={"text": "I grew up by the sea."}, headers=caller.headers)
        await store.log_turn(caller.session_id, caller.user_id, "socrates")
        await window.append(caller.session_id, Message("user", "hi"))
    await window.append(second_session, Message("user", "hello"))
    redis = aioredis.from_url(settings.redis_url)
    await redis.set(f"parley:ratelimit:{ana.user_id}", 3)  # another module's cache key
    await redis.aclose()
    ana_ids = [ana.user_id, ana.session_id, second_session]

    response = await client.delete(f"/api/users/{ana.user_id}", headers=ana.headers)
    assert response.status == 204

    lite = settings.data_path / "memory.db"
    assert set((await pg_rows(store, ana.user_id)).values()) == {0}
    assert await redis_keys(settings.redis_url, ana_ids) == []
    assert await milvus_ids(lite, ana.user_id) == []
    # ...and nobody else's data went with it.
    assert set((await pg_rows(store, bo.user_id)).values()) == {1}
    assert len(await redis_keys(settings.redis_url, [bo.session_id])) == 1
    assert len(await milvus_ids(lite, bo.user_id)) == 1

    assert await _error(await client.delete(f"/api/users/{ana.user_id}", headers=ana.headers)) \
        == (404, "user_not_found")
    assert await _error(await client.get(f"/api/users/{ana.user_id}/export", headers=ana.export_headers)) \
        == (404, "user_not_found")


async def test_delete_one_memory_removes_its_row_and_vector_only(
    client: TestClient, store: Store, settings: Settings
):
    ana, bo = await _caller(store), await _caller(store)
    ids = {}
    for caller, text in ((ana, "I grew up by the sea."), (ana, "My sister is called Eve."), (bo, "I like tea.")):
        response = await client.post(f"/api/sessions/{caller.session_id}/memories", json={"text": text},
                                     headers=caller.headers)
        ids[text] = (await response.json())["id"]
    sea, eve, tea = ids.values()
    lite = settings.data_path / "memory.db"
    assert len(await milvus_ids(lite, ana.user_id)) == 2

    # not yours: 403 on someone else's user path, 404 for someone else's memory on your own
    assert await _error(await client.delete(f"/api/users/{ana.user_id}/memories/{sea}", headers=bo.headers)) \
        == (403, "forbidden")
    assert await _error(await client.delete(f"/api/users/{bo.user_id}/memories/{sea}", headers=bo.headers)) \
        == (404, "memory_not_found")
    assert await _error(await client.delete(f"/api/users/{ana.user_id}/memories/nonsense", headers=ana.headers)) \
        == (404, "memory_not_found")

    response = await client.delete(f"/api/users/{ana.user_id}/memories/{sea}", headers=ana.headers)
    assert response.status == 204
    assert [m.id for m in await store.memories.for_user(ana.user_id)] == [eve]
    assert len(await milvus_ids(lite, ana.user_id)) == 1
    assert len(await store.memories.get([tea])) == 1 and len(await milvus_ids(lite, bo.user_id)) == 1
    assert await _error(await client.delete(f"/api/users/{ana.user_id}/memories/{sea}", headers=ana.headers)) \
        == (404, "memory_not_found")

"""Continuity: a client that lost its call resumes the same session (same user, same
conversation window) — also after the server restarted — and ``GET /api/personas`` lists
the plot nodes a client may select.

The model is the local OpenAI-compatible stand-in (tests/fake_openai.py): what the agent
"knows" is checked in the messages it sends the LLM.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from parley.call.client import CallClient
from parley.config import Settings
from personas import get_persona
from tests.conftest import start_server
from tests.fake_openai import FakeOpenAI

SECRET = "Zorblax"  # a word no model reply or prompt would contain by chance


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI(reply="A fine tale begins. What should the fox do?", token_delay_s=0.005)
    await server.start()
    yield server
    await server.stop()


def stand_in_settings(tmp_path: Path, database_url: str, base_url: str) -> Settings:
    """Every model stage on the stand-in at ``base_url``; no Redis, so conversation windows
    are in-process and written behind to Postgres (what a single node runs)."""
    return Settings(data_dir=str(tmp_path / "data"), database_url=database_url, persona="storyteller",
                    stt="openai", llm="openai", tts="openai", openai_api_key="sk-local",
                    openai_base_url=base_url, redis_url="", load_limit=1000.0)


@pytest.fixture
def story_settings(tmp_path: Path, database_url: str, fake: FakeOpenAI) -> Settings:
    return stand_in_settings(tmp_path, database_url, fake.base_url)


def chat_texts(fake: FakeOpenAI, index: int = -1) -> list[dict[str, Any]]:
    """The messages of one LLM request (default: the last)."""
    messages: list[dict[str, Any]] = fake.requests("chat")[index].body["messages"]
    return messages


async def post_session(http: aiohttp.ClientSession, url: str, body: dict[str, Any],
                       token: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with http.post(f"{url}/api/sessions", json=body, headers=headers) as r:
        return r.status, await r.json()


async def type_and_wait(client: CallClient, text: str) -> dict[str, Any]:
    since = time.monotonic()
    client.send({"type": "text", "text": text})
    return await client.wait_event(lambda e: e["type"] == "llm-done", timeout=30, since=since)


async def test_personas_list_their_plot_nodes(url: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/api/personas") as r:
        personas = {p["id"]: p for p in await r.json()}
    story = get_persona("storyteller")
    assert personas["storyteller"]["plot_nodes"] == [
        {"id": node, "text": text} for node, text in story.plot_nodes.items()]
    assert len(personas["storyteller"]["plot_nodes"]) >= 2
    assert personas["socrates"]["plot_nodes"] == []


async def test_resuming_a_session_keeps_it_and_refuses_strangers(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        status, first = await post_session(http, url, {"persona": "echo"})
        assert status == 201
        status, resumed = await post_session(
            http, url, {"persona": "socrates", "session_id": first["session_id"]}, first["token"])
        assert status == 200
        assert (resumed["session_id"], resumed["user_id"]) == (first["session_id"], first["user_id"])
        assert resumed["expires_at"] >= first["expires_at"] and resumed["token"]
        # the fresh token is the session's: an offer for it is accepted as that session
        status, other = await post_session(http, url, {"persona": "echo"})
        status, body = await post_session(
            http, url, {"persona": "echo", "session_id": other["session_id"]}, first["token"])
        assert (status, body["error"]["code"]) == (403, "forbidden")
        status, body = await post_session(http, url, {"persona": "echo", "session_id": first["session_id"]})
        assert (status, body["error"]["code"]) == (401, "unauthorized")


async def test_a_deleted_users_session_cannot_be_resumed(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        _, first = await post_session(http, url, {"persona": "echo"})
        headers = {"Authorization": f"Bearer {first['token']}"}
        async with http.delete(f"{url}/api/users/{first['user_id']}", headers=headers) as r:
            assert r.status == 204, await r.text()
        status, again = await post_session(
            http, url, {"persona": "echo", "session_id": first["session_id"]}, first["token"])
    assert status == 201
    assert again["session_id"] != first["session_id"]
    assert again["user_id"] != first["user_id"]  # the user is gone with their data


@pytest.mark.timeout(120)
async def test_a_resumed_session_keeps_the_conversation_across_a_restart(
    story_settings: Settings, fake: FakeOpenAI
) -> None:
    runner, url = await start_server(story_settings)
    try:
        client = CallClient(url, "storyteller")
        await client.connect()
        try:
            await type_and_wait(client, f"The fox is called {SECRET}.")
        finally:
            await client.close()
    finally:
        await runner.cleanup()  # the server goes away: its in-process window with it
    session = client.session

    runner, url = await start_server(story_settings)
    try:
        async with CallClient(url, "storyteller", token=session["token"],
                              resume=session["session_id"]) as resumed:
            await type_and_wait(resumed, "What is the fox called?")
            assert resumed.session["session_id"] == session["session_id"]
        async with CallClient(url, "storyteller", token=session["token"]) as fresh:
            await type_and_wait(fresh, "What is the fox called?")  # a new session: a new window
            assert fresh.session["user_id"] == session["user_id"]
    finally:
        await runner.cleanup()
    requests = fake.requests("chat")
    resumed_turn = [m["content"] for m in requests[-2].body["messages"]]
    assert any(SECRET in c for c in resumed_turn[1:-1]), resumed_turn  # history, not the prompt
    assert resumed_turn[-1] == "What is the fox called?"
    assert not any(SECRET in m["content"] for m in requests[-1].body["messages"])


@pytest.mark.timeout(120)
async def test_resuming_replaces_the_sessions_stale_call(
    server: tuple[web.AppRunner, str],
) -> None:
    """A client that lost its call resumes before the server noticed the old peer is gone:
    the old call is closed, so only one agent answers in the session's window."""
    _, url = server
    old = CallClient(url, "echo")
    await old.connect()
    try:
        async with aiohttp.ClientSession() as http:
            assert await calls(http, url) == 1
            status, _ = await post_session(
                http, url, {"persona": "echo", "session_id": old.session["session_id"]},
                old.session["token"])
            assert status == 200
            assert await calls(http, url) == 0
    finally:
        await old.close()


async def calls(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(f"{url}/health") as r:
        return int((await r.json())["calls"])

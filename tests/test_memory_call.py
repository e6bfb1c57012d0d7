"""Long-term memory through real calls: saved in one call, injected into the prompt of a
later call after a server restart; spoken "remember that"; export and delete everywhere."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest

from parley.call.client import CallClient
from parley.config import Settings
from signaling.keys import STORE
from tests.conftest import start_server
from tests.fake_openai import FakeOpenAI
from tests.storage.probe import milvus_ids, pg_rows

KEY = "sk-" + "m" * 32


@pytest.fixture
async def fake() -> FakeOpenAI:
    server = FakeOpenAI(KEY, reply="Noted.", token_delay_s=0.0)
    await server.start()
    yield server
    await server.stop()


def llm_on(fake: FakeOpenAI, tmp_path: Path, database_url: str) -> Settings:
    """Local STT/TTS/embeddings; the LLM on the fake, so we can read the prompts it gets."""
    return Settings(data_dir=str(tmp_path / "data"), database_url=database_url, persona="socrates",
                    stt="local", tts="local", embed="local", llm="openai",
                    openai_api_key=KEY, openai_base_url=fake.base_url)


async def say_text(client: CallClient, text: str) -> dict:
    since = time.monotonic()
    client.send({"type": "text", "text": text})
    await client.wait_event(lambda e: e["type"] == "tts-end", timeout=60, since=since)
    return await client.wait_event(lambda e: e["type"] == "llm-done", timeout=5, since=since)


def system_prompt_of_last_chat(fake: FakeOpenAI) -> str:
    return fake.requests("chat")[-1].body["messages"][0]["content"]


async def test_memory_survives_a_restart_and_reaches_the_prompt(fake: FakeOpenAI, tmp_path: Path) -> None:
    """No service URL configured, as with ``make run``: embedded Postgres + Milvus Lite."""
    settings = llm_on(fake, tmp_path, database_url="")
    runner, url = await start_server(settings)
    try:
        async with CallClient(url, "socrates") as client:
            await say_text(client, "My name is Alice and I love sailing on the lake.")
            token = client.session["token"]
            user_id = client.session["user_id"]
    finally:
        await runner.cleanup()  # the "restart": every store is closed and reopened

    runner, url = await start_server(settings)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/api/sessions", json={"persona": "socrates"},
                                 headers={"Authorization": f"Bearer {token}"}) as r:
                assert (await r.json())["user_id"] == user_id
        # a new call by the same user: its first prompt carries what was remembered
        async with CallClient(url, "socrates", token=token) as client:
            await say_text(client, "What do I like doing at weekends?")
        prompt = system_prompt_of_last_chat(fake)
    finally:
        await runner.cleanup()
    assert "sailing" in prompt.lower(), prompt


async def test_spoken_remember_that_is_saved_then_export_and_delete_leave_nothing(
    fake: FakeOpenAI, tmp_path: Path, database_url: str
) -> None:
    settings = llm_on(fake, tmp_path, database_url)
    runner, url = await start_server(settings)
    try:
        async with CallClient(url, "socrates") as client:
            await say_text(client, "Remember that my sister's birthday is on the fourth of May.")
            session, token = client.session, client.session["token"]
        headers = {"Authorization": f"Bearer {token}"}
        user = session["user_id"]
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/api/sessions/{session['session_id']}/memories",
                                 json={"text": "I prefer tea to coffee."}, headers=headers) as r:
                assert r.status == 201
            async with http.post(f"{url}/api/users/{user}/export-token", headers=headers) as r:
                export_headers = {"Authorization": f"Bearer {(await r.json())['token']}"}
            async with http.get(f"{url}/api/users/{user}/export", headers=export_headers) as r:
                exported = await r.json()
            texts = " ".join(m["text"] for m in exported["memories"]).lower()
            assert "birthday" in texts and "tea" in texts
            assert exported["window"], "the conversation window is part of the export"
            async with http.get(f"{url}/api/users/{'0' * 32}/export", headers=export_headers) as r:
                assert r.status == 403
            async with http.delete(f"{url}/api/users/{user}", headers=headers) as r:
                assert r.status == 204
        store = runner.app[STORE]
        assert all(n == 0 for n in (await pg_rows(store, user)).values())
    finally:
        await runner.cleanup()
    assert await milvus_ids(tmp_path / "data" / "memory.db", user) == []

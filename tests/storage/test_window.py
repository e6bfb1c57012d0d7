"""Conversation window: rolling token bound, barge-in truncation, Redis sharing across processes."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from parley.config import REPO_ROOT, Settings
from pipeline.backends.base import Message
from pipeline.window import (
    ConversationWindow,
    DurableWindow,
    MemoryWindow,
    RedisWindow,
    WindowLimits,
    approx_tokens,
    open_window,
)
from storage import Store

LIMITS = WindowLimits(max_tokens=40, max_messages=6, ttl_s=600)


def words(text: str) -> int:
    return len(text.split())


@pytest.fixture(params=["memory", "redis"])
async def window(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[ConversationWindow]:
    redis = request.param == "redis"
    window = open_window(Settings(redis_url=redis_url if redis else ""), LIMITS, words)
    assert isinstance(window, RedisWindow if redis else MemoryWindow)
    try:
        yield window
    finally:
        await window.close()


@pytest.fixture
async def sid(window: ConversationWindow) -> AsyncIterator[Callable[[], str]]:
    """Factory of fresh session ids; their windows are purged after the test (shared Redis)."""
    made: list[str] = []

    def new() -> str:
        made.append(uuid.uuid4().hex)
        return made[-1]

    yield new
    await window.purge(made)


async def test_messages_come_back_in_order(window: ConversationWindow, sid: Callable[[], str]):
    session = sid()
    said = [Message("user", "hello there"), Message("assistant", "hi, how can I help?")]
    for message in said:
        await window.append(session, message)
    assert await window.load(session) == said
    assert await window.load(sid()) == []


async def test_oldest_messages_roll_off_at_the_token_bound(
    window: ConversationWindow, sid: Callable[[], str]
):
    session = sid()
    for i in range(10):
        await window.append(session, Message("user", f"message {i} " + "word " * 8))  # 10 words
    kept = await window.load(session)
    assert [m.content.split()[1] for m in kept] == ["6", "7", "8", "9"]  # 4 x 10 = 40 tokens
    await window.append(session, Message("user", "w " * 100))
    assert [m.content for m in await window.load(session)] == ["w " * 100]  # newest always kept


async def test_message_count_is_bounded_too(window: ConversationWindow, sid: Callable[[], str]):
    session = sid()
    for i in range(9):
        await window.append(session, Message("user", str(i)))
    assert [m.content for m in await window.load(session)] == ["3", "4", "5", "6", "7", "8"]


async def test_barge_in_keeps_only_what_was_heard(
    window: ConversationWindow, sid: Callable[[], str]
):
    session = sid()
    await window.append(session, Message("user", "tell me a long story"))
    await window.append(session, Message("assistant", "Once upon a time there was a fox who"))
    await window.truncate_last(session, "Once upon a time")
    assert [m.content for m in await window.load(session)] == [
        "tell me a long story", "Once upon a time"]

    await window.append(session, Message("user", "stop"))
    await window.truncate_last(session, "")  # nothing heard: the assistant message goes
    assert [m.role for m in await window.load(session)] == ["user", "user"]
    await window.truncate_last(session, "ignored")  # no assistant message left: unchanged
    assert [m.content for m in await window.load(session)] == ["tell me a long story", "stop"]


async def test_delete_and_purge_forget_sessions(window: ConversationWindow, sid: Callable[[], str]):
    first, second, third = sid(), sid(), sid()
    for session in (first, second, third):
        await window.append(session, Message("user", "hi"))
    await window.delete(first)
    assert await window.purge([second]) == 1
    assert await window.load(first) == [] and await window.load(second) == []
    assert await window.load(third) == [Message("user", "hi")]


async def test_concurrent_appends_lose_nothing(window: ConversationWindow, sid: Callable[[], str]):
    session = sid()
    await asyncio.gather(*(window.append(session, Message("user", str(i))) for i in range(6)))
    assert sorted(m.content for m in await window.load(session)) == [str(i) for i in range(6)]


async def test_in_process_window_expires():
    window = MemoryWindow(WindowLimits(ttl_s=0), approx_tokens)
    await window.append("s", Message("user", "hi"))
    assert await window.load("s") == []


async def test_redis_window_has_a_ttl(redis_url: str):
    window = open_window(Settings(redis_url=redis_url), LIMITS)
    session = uuid.uuid4().hex
    client = aioredis.from_url(redis_url)
    try:
        await window.append(session, Message("user", "hi"))
        assert 0 < await client.ttl(RedisWindow.key(session)) <= LIMITS.ttl_s
    finally:
        await client.aclose()
        await window.delete(session)
        await window.close()


_CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from parley.config import Settings
    from pipeline.backends.base import Message
    from pipeline.window import open_window

    async def main(url, session, text):
        window = open_window(Settings(redis_url=url))
        before = [m.content for m in await window.load(session)]
        await window.append(session, Message("assistant", text))
        await window.close()
        print(json.dumps(before))

    asyncio.run(main(*sys.argv[1:]))
    """
)


async def _other_process(redis_url: str, session: str, text: str) -> list[str]:
    """Run one window step in a separate Python process; returns what it saw before."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, redis_url, session, text,
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


async def test_a_call_moves_between_processes_through_redis(redis_url: str):
    window = open_window(Settings(redis_url=redis_url))
    session = uuid.uuid4().hex
    try:
        await window.append(session, Message("user", "I am in process one"))
        seen = await _other_process(redis_url, session, "and I answer from process two")
        assert seen == ["I am in process one"]
        assert [m.content for m in await window.load(session)] == [
            "I am in process one", "and I answer from process two"]
    finally:
        await window.delete(session)
        await window.close()


async def test_durable_window_outlives_the_process_through_postgres(store: Store) -> None:
    """Without Redis the window is in-process, written behind to Postgres: a new window (a
    restarted server) reads a session's messages back, barge-in truncation included, and
    deleting them (privacy) removes the row too."""
    user = await store.create_user()
    session = await store.create_session(user, "socrates")
    other = await store.create_session(user, "socrates")
    first = open_window(Settings(redis_url=""), LIMITS, words, rows=store.windows)
    assert isinstance(first, DurableWindow)
    await first.append(session, Message("user", "my name is Zorblax"))
    await first.append(session, Message("assistant", "nice to meet you Zorblax, tell me more"))
    await first.truncate_last(session, "nice to meet you")
    await first.append(other, Message("user", "another conversation"))
    await first.close()  # waits for the writes behind

    second = open_window(Settings(redis_url=""), LIMITS, words, rows=store.windows)
    try:
        assert await second.load(session) == [
            Message("user", "my name is Zorblax"), Message("assistant", "nice to meet you")]
        await second.append(session, Message("user", "what is my name?"))
        assert [m.content for m in await second.load(session)][-1] == "what is my name?"
        await second.purge([session])
        assert await second.load(session) == []
        assert await store.windows.load(session, LIMITS.ttl_s) == []
        assert await second.load(other) == [Message("user", "another conversation")]
        # a window left alone longer than its TTL has expired, in Postgres as in memory
        assert await store.windows.load(other, max_age_s=0.0) == []
    finally:
        await second.close()


async def test_durable_window_keeps_nothing_for_unknown_sessions(store: Store) -> None:
    window = open_window(Settings(redis_url=""), LIMITS, words, rows=store.windows)
    try:
        ghost = uuid.uuid4().hex  # no sessions row: nothing may be stored for it
        await window.append(ghost, Message("user", "hello"))
        await window.flush()
        assert await store.windows.load(ghost, LIMITS.ttl_s) == []
        assert await window.load(ghost) == [Message("user", "hello")]  # the call goes on in memory
    finally:
        await window.close()

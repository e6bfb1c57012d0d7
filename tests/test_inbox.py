"""A call's inbox: bounded, in order, oldest audio dropped first, control never dropped for audio."""

from __future__ import annotations

import asyncio

from media_server.inbox import Inbox


def audio(seq: int) -> dict[str, object]:
    return {"type": "audio-chunk", "seq": seq, "data": ""}


async def test_messages_come_out_in_order() -> None:
    inbox = Inbox(maxsize=8)
    sent = [audio(0), {"type": "text", "text": "hi"}, audio(1), {"type": "settings", "emotion": 0.5}]
    for message in sent:
        assert inbox.put(message) is None
    assert [await inbox.get() for _ in sent] == sent


async def test_full_inbox_drops_the_oldest_audio_chunk() -> None:
    inbox = Inbox(maxsize=3)
    text = {"type": "text", "text": "keep me"}
    for message in (text, audio(0), audio(1)):
        inbox.put(message)
    assert inbox.put(audio(2)) == audio(0)
    assert inbox.put({"type": "settings", "emotion": 1}) == audio(1)  # control makes room
    assert [await inbox.get() for _ in range(3)] == [text, audio(2), {"type": "settings", "emotion": 1}]


async def test_control_is_refused_not_lost_when_only_control_is_queued() -> None:
    inbox = Inbox(maxsize=2)
    first, second, third = ({"type": "text", "text": str(i)} for i in range(3))
    inbox.put(first)
    inbox.put(second)
    assert inbox.put(third) is third  # the caller must tell the client
    assert inbox.put(audio(0)) == audio(0)  # no audio to drop: the new chunk is refused
    assert len(inbox) == 2


async def test_get_waits_for_a_message() -> None:
    inbox = Inbox()
    getter = asyncio.create_task(inbox.get())
    await asyncio.sleep(0.01)
    assert not getter.done()
    inbox.put(audio(7))
    assert await asyncio.wait_for(getter, 1) == audio(7)

"""The room's tracks frame by frame: the agent's floor gate and a lagging listener's queue."""

from __future__ import annotations

import numpy as np

from media_server.rooms.tracks import QUEUE_FRAMES, MixTrack, RoomVoice
from pipeline.audio import FRAME_20MS


async def test_the_agent_never_starts_while_a_person_holds_the_floor() -> None:
    voice = RoomVoice()
    playback = voice.play(np.full(FRAME_20MS * 5, 1000, np.int16))
    assert voice.pull(0.0, floor_free=False) is None  # someone is mid-turn: hold the reply
    assert voice.pull(0.02, floor_free=False) is None and not voice.talking
    first = voice.pull(0.04, floor_free=True)  # the floor is free: start
    assert first is not None and first.any() and voice.talking
    for i in range(4):  # once started, it finishes its reply (barge-in stops it, not onsets)
        frame = voice.pull(0.06 + 0.02 * i, floor_free=False)
        assert frame is not None and frame.any()
    assert await playback.done and not voice.talking
    assert voice.pull(0.2, floor_free=True) is None  # nothing queued: silent


async def test_flush_ends_the_agents_turn() -> None:
    voice = RoomVoice()
    playback = voice.play(np.full(FRAME_20MS * 5, 1000, np.int16))
    assert voice.pull(0.0, floor_free=True) is not None
    voice.flush()
    assert not await playback.done and not voice.talking
    assert voice.pull(0.02, floor_free=True) is None


async def test_a_lagging_listener_loses_its_oldest_frames_not_the_clock() -> None:
    track = MixTrack()
    for slot in range(QUEUE_FRAMES + 5):  # the sender did not pull for 15 ticks
        track.deliver(slot, np.full(FRAME_20MS, slot, np.int16))
    assert track.dropped == 5 and track.delivered == QUEUE_FRAMES + 5
    frame = await track.recv()
    assert frame.pts == 5 * FRAME_20MS  # media time keeps the gap, as a lost packet would
    assert int(frame.to_ndarray()[0, 0]) == 5
    track.stop()

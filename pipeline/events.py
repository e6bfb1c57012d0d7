"""The events the server sends to a client, each built in one place.

The wire format (README, Events) is a JSON object with a ``type`` and per-type fields. The
agents, the calls and both transports (DataChannel and WebSocket, whose sinks live in
``media_server.events``) build them only through these functions, so a field name is
spelled once and a reader finds every event the server can send on one page.
"""

from __future__ import annotations

from typing import Any

Event = dict[str, Any]


def turn(state: str) -> Event:
    """The agent's turn state: ``listening``, ``thinking`` or ``speaking``."""
    return {"type": "turn", "state": state}


def stt_interim(text: str) -> Event:
    """A partial transcript of what the user is still saying."""
    return {"type": "stt-interim", "text": text}


def stt_final(text: str) -> Event:
    """The user's words of a turn, spoken (final transcript) or typed (as accepted)."""
    return {"type": "stt-final", "text": text}


def end_of_turn(merged: bool, audio_s: float) -> Event:
    """The user's turn ended (the reply starts); ``merged``: it includes a turn they resumed."""
    return {"type": "end-of-turn", "merged": merged, "audio_s": round(audio_s, 2)}


def turn_resumed(heard: bool) -> Event:
    """The user went on talking right after an end of turn: that reply is withdrawn and the
    two parts answered as one; ``heard``: some of the withdrawn reply had been played."""
    return {"type": "turn-resumed", "heard": heard}


def llm_token(token: str) -> Event:
    return {"type": "llm-token", "token": token}


def llm_done(text: str) -> Event:
    """The whole reply text (what was spoken, after moderation)."""
    return {"type": "llm-done", "text": text}


def tts_start() -> Event:
    return {"type": "tts-start"}


def tts_end() -> Event:
    return {"type": "tts-end"}


def interrupted(heard_text: str) -> Event:
    """Barge-in: the reply stopped; ``heard_text`` is the part the user heard."""
    return {"type": "interrupted", "heard_text": heard_text}


def error(code: str, message: str) -> Event:
    return {"type": "error", "code": code, "message": message}


def metrics(latency_ms: dict[str, float], **extra: Any) -> Event:
    """Per-turn figures: stage latencies in ms, plus whatever else the sender measured."""
    return {"type": "metrics", "latency_ms": latency_ms, **extra}


def pong(t: Any) -> Event:
    """Answer to the client's ``ping``; ``t`` is echoed so the client can time the round trip."""
    return {"type": "pong", "t": t}


def tts_chunk(audio: str, rate: int) -> Event:
    """One frame of reply audio (base64 int16 LE mono) — WebSocket fallback only."""
    return {"type": "tts-chunk", "audio": audio, "rate": rate}


def dtmf(digit: str) -> Event:
    """A keypad digit the caller pressed (SIP, RFC 4733)."""
    return {"type": "dtmf", "digit": digit}


# -- rooms: who is there, who speaks; every event of a room carries its speaker -----------


def attributed(event: Event, speaker: str, participant_id: str) -> Event:
    """``event`` as said by ``speaker`` (a room participant, or the agent)."""
    return {**event, "speaker": speaker, "participant_id": participant_id}


def joined(room_id: str, participant_id: str) -> Event:
    """To a newcomer: you are in ``room_id`` as ``participant_id``."""
    return {"type": "joined", "room_id": room_id, "participant_id": participant_id}


def participant_joined(participant_id: str, name: str) -> Event:
    return {"type": "participant-joined", "participant_id": participant_id, "name": name}


def participant_left(participant_id: str, name: str) -> Event:
    return {"type": "participant-left", "participant_id": participant_id, "name": name}


def speaking(participant_id: str, speaker: str, on: bool) -> Event:
    """A participant started (``on``) or stopped speaking: the page's speaking indicator."""
    return {"type": "speaking", "participant_id": participant_id, "speaker": speaker, "on": on}


def muted(participant_id: str, on: bool) -> Event:
    return {"type": "muted", "participant_id": participant_id, "on": on}

"""Room transcripts: who said what in a multi-party room, in order (migration 002)."""

from __future__ import annotations

from typing import Any

import asyncpg


async def add_line(pool: asyncpg.Pool, room_id: str, participant_id: str, speaker: str, text: str) -> None:
    """Append one attributed final transcript (a person's or the agent's) to a room."""
    await pool.execute(
        "INSERT INTO room_transcript (room_id, participant_id, speaker, text) VALUES ($1, $2, $3, $4)",
        room_id, participant_id, speaker, text,
    )


async def transcript(pool: asyncpg.Pool, room_id: str) -> list[dict[str, Any]]:
    """The room's lines, oldest first: ``{participant_id, speaker, text, at}``."""
    rows = await pool.fetch(
        "SELECT participant_id, speaker, text, at FROM room_transcript WHERE room_id = $1 ORDER BY id",
        room_id,
    )
    return [{"participant_id": r["participant_id"], "speaker": r["speaker"], "text": r["text"],
             "at": r["at"].isoformat()} for r in rows]

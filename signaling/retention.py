"""The daily retention pass: sessions, turn logs, conversation windows and memories past their limits.

Postgres rows go through :mod:`storage.retention`; what lives elsewhere goes with them —
expired sessions' windows (the transcripts, in Redis or in-process), their recordings' audio
(a folder or S3; removed before the rows, so no file outlives its listing) and expired
memories' vectors (Milvus). Limits are ``PARLEY_SESSION_RETENTION_DAYS``, ``PARLEY_TURN_RETENTION_DAYS``
and ``PARLEY_MEMORY_RETENTION_DAYS``; 0 keeps forever.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from parley.config import Settings
from pipeline.memory import MemoryService
from pipeline.window import ConversationWindow
from storage import RecordingSink, Store, retention

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Expired:
    sessions: int
    windows: int
    turns: int
    memories: int


def _cutoff(now: datetime, days: int) -> datetime | None:
    return now - timedelta(days=days) if days > 0 else None


async def apply_retention(settings: Settings, store: Store, memory: MemoryService, window: ConversationWindow,
                          recordings: RecordingSink | None = None, now: datetime | None = None) -> Expired:
    """Remove everything older than its limit; returns the counts removed."""
    now = now or datetime.now(UTC)
    sessions: list[str] = []
    windows = turns = memories = 0
    if (cutoff := _cutoff(now, settings.session_retention_days)) is not None:
        if recordings is not None and (keys := await store.recordings.keys_of_idle_sessions(cutoff)):
            await recordings.delete(keys)
        sessions = await retention.expire_sessions(store.pool, cutoff)
        windows = await window.purge(sessions) if sessions else 0
    if (cutoff := _cutoff(now, settings.turn_retention_days)) is not None:
        turns = await retention.expire_turns(store.pool, cutoff)
    if (cutoff := _cutoff(now, settings.memory_retention_days)) is not None:
        memories = await memory.expire(cutoff)
    expired = Expired(len(sessions), windows, turns, memories)
    if any((expired.sessions, expired.turns, expired.memories)):
        logger.info("retention: removed %d sessions (%d windows), %d turns, %d memories",
                    expired.sessions, expired.windows, expired.turns, expired.memories)
    return expired

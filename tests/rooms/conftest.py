"""Room tests run a real server with a short idle time, so an empty room ends quickly."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley.config import Settings


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), persona="echo", database_url=database_url,
                    room_idle_s=2.0)

"""Moderation: blocklist, the moderation model over HTTP, and reply filtering."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from parley.config import Settings
from pipeline.backends.openai_backends import OpenAIModeration
from pipeline.moderation import ALLOWED, Blocklist, Moderator, Verdict, safe_reply
from tests.fake_openai import FakeOpenAI, Fault, settings_for

KEY = "sk-test-parley-0123456789abcdef"


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(KEY, flag_words={"stab": "violence"}) as server:
        yield server


@pytest.fixture
async def model(fake: FakeOpenAI) -> AsyncIterator[OpenAIModeration]:
    backend = OpenAIModeration(settings_for(fake.base_url, KEY, openai_moderation_model="mod-x"))
    yield backend
    await backend.close()


def flags(stage: str, source: str) -> float:
    labels = {"stage": stage, "source": source}
    return REGISTRY.get_sample_value("parley_moderation_flags_total", labels) or 0.0


def test_safe_reply_matches_the_persona_by_id_or_name() -> None:
    assert safe_reply("holmes") == safe_reply("Sherlock Holmes") != safe_reply("socrates")
    assert safe_reply("storyteller") != safe_reply("someone new") != ""


def test_blocklist_from_a_comma_list_matches_whole_words_only() -> None:
    blocklist = Blocklist.from_setting("darn, heck ,")
    assert blocklist.matches("Oh DARN it") and blocklist.matches("heck!")
    assert not blocklist.matches("he darned the sock") and not blocklist.matches("heckle")


def test_blocklist_from_a_file_takes_regexes_and_skips_comments(tmp_path: Path) -> None:
    path = tmp_path / "blocklist.txt"
    path.write_text("# words we never say\nkill(ing|ed)?\n\nbad word\n", encoding="utf-8")
    blocklist = Blocklist.from_setting(str(path))
    assert blocklist.matches("no killing here") and blocklist.matches("a BAD word")
    assert not blocklist.matches("what a skill") and not blocklist.matches("words we never say")
    assert not Blocklist.from_setting("").matches("anything")


async def test_user_text_on_the_blocklist_is_flagged_and_counted() -> None:
    moderator = Moderator(Blocklist(["darn"]))
    before = flags("user", "blocklist")
    assert await moderator.check_user("darn you") == Verdict(False, "blocklist")
    assert await moderator.check_user("good day") == ALLOWED
    assert flags("user", "blocklist") == before + 1


async def test_the_model_flags_what_the_blocklist_misses(
    fake: FakeOpenAI, model: OpenAIModeration
) -> None:
    moderator = Moderator(Blocklist(["darn"]), model)
    before = flags("user", "model")
    assert await moderator.check_user("I will stab you") == Verdict(False, "model", ("violence",))
    assert await moderator.check_user("I will stay with you") == ALLOWED
    assert await moderator.check_user("darn") == Verdict(False, "blocklist")  # no request needed
    assert [r.body for r in fake.requests("moderations")] == [
        {"model": "mod-x", "input": "I will stab you"},
        {"model": "mod-x", "input": "I will stay with you"},
    ]
    assert flags("user", "model") == before + 1


async def test_reply_sentences_are_checked_one_by_one(
    fake: FakeOpenAI, model: OpenAIModeration
) -> None:
    """The agent replaces the first flagged sentence (tests/test_cloud_call.py); here the
    per-sentence verdicts it relies on."""
    moderator = Moderator(Blocklist(["darn"]), model)
    before = flags("reply", "model")
    reply = ["The butler was home.", "Then he took a knife to stab the cook."]
    verdicts = [await moderator.check_reply(sentence) for sentence in reply]
    assert verdicts == [ALLOWED, Verdict(False, "model", ("violence",))]
    assert flags("reply", "model") == before + 1
    assert await moderator.check_reply("Darn.") == Verdict(False, "blocklist")
    assert safe_reply("holmes") != safe_reply("socrates")


async def test_a_failing_model_lets_text_through_and_is_counted(
    fake: FakeOpenAI, model: OpenAIModeration
) -> None:
    fake.faults["moderations"] = Fault(status=500)
    labels = {"stage": "moderation", "kind": "status_5xx"}
    before = REGISTRY.get_sample_value("parley_backend_errors_total", labels) or 0.0
    moderator = Moderator(Blocklist(["darn"]), model)
    assert await moderator.check_reply("I will stab you") == ALLOWED
    assert await moderator.check_reply("darn") == Verdict(False, "blocklist")
    assert REGISTRY.get_sample_value("parley_backend_errors_total", labels) == before + 1


async def test_a_server_without_moderation_switches_the_model_off(
    fake: FakeOpenAI, model: OpenAIModeration
) -> None:
    fake.faults["moderations"] = Fault(status=404)
    moderator = Moderator(Blocklist([]), model)
    assert await moderator.check_user("I will stab you") == ALLOWED
    assert await moderator.check_user("I will stab you") == ALLOWED
    assert moderator.model is None and len(fake.requests("moderations")) == 1


async def test_from_settings_uses_the_blocklist_setting_and_no_model_for_local_llm() -> None:
    settings = Settings(llm="local")
    settings.blocklist = "heck,darn"  # type: ignore[attr-defined]  # PARLEY_BLOCKLIST
    moderator = Moderator.from_settings(settings)
    assert moderator.model is None
    assert not (await moderator.check_user("oh heck")).allowed

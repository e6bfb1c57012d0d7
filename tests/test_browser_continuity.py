"""The page in headless Chromium: it offers the storyteller's plot nodes, and after losing
its call mid-conversation (closed server-side, or the server restarted) it resumes the same
session, so the agent's next reply is built on what was said before the drop.

The server runs in the test process on a fixed port (restarted on the same port); every
model stage is the local OpenAI-compatible stand-in (tests/fake_openai.py), whose recorded
requests show what the LLM was told. No Redis: the conversation window survives the restart
through Postgres (``session_windows``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from bench.serverproc import free_port
from parley.config import Settings
from personas import get_persona
from pipeline.audio import RATE, write_wav
from signaling.app import create_app
from signaling.keys import CALLS
from tests.browser import CHROMIUM, Page, open_page
from tests.fake_openai import FakeOpenAI
from tests.test_continuity import SECRET, stand_in_settings

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"headless Chromium not found at {CHROMIUM}"),
    pytest.mark.timeout(180),
]

STORY = get_persona("storyteller")
NODE = "river-crossing"
REPLY = "The fox looked around. What should she do next?"


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI(reply=REPLY, token_delay_s=0.005)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def silence_wav(tmp_path: Path) -> Path:
    """A quiet microphone: every turn in these tests is typed."""
    path = tmp_path / "silence.wav"
    write_wav(path, np.zeros(90 * RATE, np.int16))
    return path


class Server:
    """The Parley app on one fixed loopback port, restartable in place."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        runner = web.AppRunner(create_app(self.settings), shutdown_timeout=5.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self.runner = runner

    async def stop(self) -> None:
        runner, self.runner = self.runner, None
        if runner is not None:
            await runner.cleanup()


@pytest.fixture
async def server(tmp_path: Path, database_url: str, fake: FakeOpenAI) -> AsyncIterator[Server]:
    server = Server(stand_in_settings(tmp_path, database_url, fake.base_url))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def type_message(page: Page, text: str) -> None:
    """Types ``text`` and waits for the agent's whole reply to it (one more ``llm-done``)."""
    done = await page.evaluate("window.parley.events.filter((e) => e.type === 'llm-done').length")
    await page.evaluate(
        f"""(() => {{
          document.getElementById('text-input').value = {json.dumps(text)};
          document.getElementById('text-form').requestSubmit();
        }})()"""
    )
    await page.wait_for(
        f"window.parley.events.filter((e) => e.type === 'llm-done').length > {done}", timeout=30)


async def choose_plot_node(page: Page, node: str) -> None:
    await page.evaluate(
        f"""(() => {{
          const select = document.getElementById('plot-node');
          select.value = {json.dumps(node)};
          select.dispatchEvent(new Event('change'));
        }})()"""
    )


def system_prompt(fake: FakeOpenAI, index: int = -1) -> str:
    messages: list[dict[str, Any]] = fake.requests("chat")[index].body["messages"]
    return "\n".join(m["content"] for m in messages if m["role"] == "system")


async def test_the_page_offers_the_storytellers_plot_nodes(server: Server, fake: FakeOpenAI,
                                                           silence_wav: Path) -> None:
    async with open_page(f"{server.url}/?persona=storyteller", fake_mic=silence_wav) as page:
        await page.wait_for("window.parley.ready", timeout=15)
        offered = await page.evaluate(
            "[...document.getElementById('plot-node').options].map((o) => o.value)")
        shown = await page.evaluate("!document.getElementById('plot-field').hidden")
        await page.evaluate(
            """(() => {
              const persona = document.getElementById('persona');
              persona.value = 'socrates';
              persona.dispatchEvent(new Event('change'));
            })()""")
        hidden_for_socrates = await page.evaluate("document.getElementById('plot-field').hidden")
        await page.evaluate(
            """(() => {
              const persona = document.getElementById('persona');
              persona.value = 'storyteller';
              persona.dispatchEvent(new Event('change'));
            })()""")

        await page.evaluate("document.getElementById('mic').click()")
        await page.wait_for("document.body.dataset.state === 'listening'", timeout=20)
        await type_message(page, "Tell me a story.")
        before = system_prompt(fake)
        await choose_plot_node(page, NODE)
        await page.wait_for(
            f"window.parley.events.some((e) => e.dir === 'out' && e.type === 'settings'"
            f" && e.plot_node === {json.dumps(NODE)})", timeout=5)
        await type_message(page, "Go on!")
        after = system_prompt(fake)
        errors = (await page.parley())["errors"]
    assert offered == ["", *STORY.plot_nodes]
    assert shown and hidden_for_socrates
    assert STORY.plot_nodes[NODE] not in before
    assert STORY.plot_nodes[NODE] in after  # the choice reached the agent's prompt
    assert errors == []


async def lose_the_call(server: Server, loss: str) -> None:
    """``peer-closed``: the server hangs the call up (as after a network drop it noticed);
    ``server-restart``: the app stops (every call hung up, the in-process window gone) and
    starts again on the same port once the page noticed."""
    assert server.runner is not None
    if loss == "peer-closed":
        for call in list(server.runner.app[CALLS].calls.values()):
            await call.close("test: peer closed")
    else:
        await server.stop()


@pytest.mark.parametrize("loss", ["peer-closed", "server-restart"])
async def test_after_losing_its_call_the_page_resumes_the_conversation(
    server: Server, fake: FakeOpenAI, silence_wav: Path, loss: str
) -> None:
    url = f"{server.url}/?persona=storyteller&autostart=1"
    async with open_page(url, fake_mic=silence_wav) as page:
        await page.wait_for("document.body.dataset.state === 'listening'", timeout=20)
        first_session = await page.evaluate("window.parley.sessionId")
        await choose_plot_node(page, NODE)
        await type_message(page, f"The fox is called {SECRET}.")
        mark = await page.evaluate("window.parley.transitions.length")

        await lose_the_call(server, loss)
        await page.wait_for(
            f"window.parley.transitions.slice({mark}).some((x) => x.state === 'connecting')",
            timeout=15)
        if server.runner is None:
            await server.start()
        await page.wait_for(
            f"window.parley.transitions.slice({mark}).some((x) => x.state === 'listening')"
            " && window.parley.transport && document.body.dataset.state === 'listening'",
            timeout=45)
        resumed_session = await page.evaluate("window.parley.sessionId")
        await type_message(page, "What is the fox called?")
        parley = await page.parley()
    assert "Reconnected." in [n["message"] for n in parley["notices"]]
    assert resumed_session == first_session
    messages = fake.requests("chat")[-1].body["messages"]
    history = [m["content"] for m in messages if m["role"] != "system"]
    assert history[-1] == "What is the fox called?"
    assert any(SECRET in text for text in history[:-1]), history  # said before the drop
    assert STORY.plot_nodes[NODE] in system_prompt(fake)  # the page told the new call again
    assert parley["errors"] == []
    assert server.runner is not None and len(server.runner.app[CALLS].calls) == 1


STORED_JS = "JSON.parse(sessionStorage.getItem('parley.session'))"
# Another tab asking who has the live session: this page must answer that it has.
ASK_OTHER_TABS_JS = """new Promise((resolve) => {
  const channel = new BroadcastChannel('parley.sessions');
  const timer = setTimeout(() => { channel.close(); resolve(false); }, 2000);
  channel.onmessage = ({ data }) => {
    if (data.type === 'mine' && data.session_id === window.parley.sessionId) {
      clearTimeout(timer); channel.close(); resolve(true);
    }
  };
  channel.postMessage({ type: 'who-has', session_id: window.parley.sessionId });
})"""
# The stored session marked resumable, and "another tab" (a channel of its own) live in it.
CLAIM_IN_OTHER_TAB_JS = """(() => {
  const stored = JSON.parse(sessionStorage.getItem('parley.session'));
  sessionStorage.setItem('parley.session', JSON.stringify({ ...stored, resumable: true }));
  const other = new BroadcastChannel('parley.sessions');
  other.onmessage = ({ data }) => {
    if (data.type === 'who-has' && data.session_id === stored.session.session_id) {
      other.postMessage({ type: 'mine', session_id: data.session_id });
    }
  };
  window.otherTab = other;
})()"""


async def start_call(page: Page) -> None:
    await page.wait_for("window.parley.ready && document.body.dataset.state === 'idle'", timeout=15)
    await page.evaluate("document.getElementById('mic').click()")
    await page.wait_for("document.body.dataset.state === 'listening' && window.parley.sessionId",
                        timeout=20)


async def test_a_reload_resumes_and_a_hang_up_starts_a_new_conversation(
    server: Server, fake: FakeOpenAI, silence_wav: Path
) -> None:
    """sessionStorage outlives a reload of the tab: the next call resumes the conversation.
    After the user hangs up, the next call is a new session of the same user; so is a call
    from a duplicated tab whose session is live in another tab."""
    page_url = f"{server.url}/?persona=storyteller"
    async with open_page(page_url, fake_mic=silence_wav) as page:
        await start_call(page)
        first = await page.evaluate(STORED_JS)
        await type_message(page, f"The fox is called {SECRET}.")

        await page.goto(page_url)  # a reload mid-call
        await start_call(page)
        after_reload = await page.evaluate(STORED_JS)
        await type_message(page, "What is the fox called?")
        resumed_messages = fake.requests("chat")[-1].body["messages"]

        answers_other_tabs = await page.evaluate(ASK_OTHER_TABS_JS, timeout=5)

        await page.evaluate("document.getElementById('mic').click()")  # Hang up
        await start_call(page)
        after_hang_up = await page.evaluate(STORED_JS)
        await type_message(page, "What is the fox called?")
        fresh_messages = fake.requests("chat")[-1].body["messages"]

        # A duplicated tab (a copy of sessionStorage) while this session is live elsewhere:
        # it must start its own session rather than take the call over.
        await page.evaluate("document.getElementById('mic').click()")
        await page.evaluate(CLAIM_IN_OTHER_TAB_JS)
        await start_call(page)
        beside_live_tab = await page.evaluate(STORED_JS)
    assert answers_other_tabs
    assert beside_live_tab["session"]["session_id"] != after_hang_up["session"]["session_id"]
    assert beside_live_tab["session"]["user_id"] == first["session"]["user_id"]
    assert after_reload["session"]["session_id"] == first["session"]["session_id"]
    assert any(SECRET in m["content"] for m in resumed_messages if m["role"] != "system")
    assert after_hang_up["session"]["session_id"] != first["session"]["session_id"]
    assert after_hang_up["session"]["user_id"] == first["session"]["user_id"]
    assert not any(SECRET in m["content"] for m in fresh_messages)

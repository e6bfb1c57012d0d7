"""Headless Chromium as a test client, driven over the DevTools protocol (CDP).

No extra dependency: CDP is JSON over a WebSocket, which aiohttp already speaks. One
browser per ``open_page`` block, with a fresh profile directory and a fake microphone that
plays a WAV file once; the block always ends with the browser's process group killed and
its profile removed, whatever happened inside.

    async with open_page(url, fake_mic=wav) as page:
        await page.wait_for("window.parley && window.parley.state === 'listening'", timeout=15)
        timeline = await page.rx_energy()

Headless Chromium reports no inbound audio energy through ``getStats()``, so the page
measures what it receives with a WebAudio AnalyserNode (``window.parley.stats.rxEnergy``).

Run by hand (from the repo root): ``python -m tests.browser URL --wav in.wav --seconds 12 --screenshot out.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from bench import signals
from pipeline.audio import RATE, write_wav
from pipeline.dsp.base import to_int16

logger = logging.getLogger(__name__)

CHROMIUM = "/usr/bin/chromium"
# Every method takes its own ``timeout`` (hence the ASYNC109 exemptions) instead of leaving
# it to the caller's ``asyncio.timeout``: each DevTools round trip must be bounded even
# when a test forgets to bound it, or a wedged browser hangs the whole suite.
LAUNCH_TIMEOUT_S = 20.0
COMMAND_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0

# Everything a sandbox-less, offline, GPU-less CI box needs, and nothing that phones home.
BASE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    # Host candidates as plain IPs: aiortc then needs no mDNS resolution on loopback.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--remote-debugging-port=0",
)

_DEVTOOLS_LINE = re.compile(rb"DevTools listening on (ws://\S+)")


class BrowserError(Exception):
    """Chromium could not be started, or a DevTools command failed."""


class JavaScriptError(BrowserError):
    """An evaluated expression threw."""


@dataclass(slots=True)
class ConsoleEntry:
    """A console call, an uncaught exception, or a browser log entry (e.g. a failed load)."""

    level: str  # "error", "warning", "info", "log", "debug", ...
    text: str
    source: str  # "console", "exception" or the Log domain source ("network", "javascript", ...)

    @property
    def is_error(self) -> bool:
        return self.level == "error" or self.source == "exception"


class _Cdp:
    """One DevTools WebSocket: commands matched to replies by id, events to handlers."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._handlers: dict[str, list[Callable[[dict[str, Any]], None]]] = collections.defaultdict(
            list
        )
        self._reader = asyncio.create_task(self._read(), name="cdp-reader")

    def on(self, method: str, handler: Callable[[dict[str, Any]], None]) -> None:
        self._handlers[method].append(handler)

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        timeout: float = COMMAND_TIMEOUT_S,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        if self._reader.done():
            raise BrowserError(f"DevTools connection is closed (sending {method})")
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        try:
            await self._ws.send_str(json.dumps(message))
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise BrowserError(f"{method} got no answer within {timeout} s") from None
        finally:
            self._pending.pop(message_id, None)
        if "error" in reply:
            raise BrowserError(f"{method} failed: {reply['error'].get('message', reply['error'])}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def _read(self) -> None:
        try:
            async for frame in self._ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                if "id" in message:
                    future = self._pending.get(message["id"])
                    if future is not None and not future.done():
                        future.set_result(message)
                    continue
                for handler in self._handlers.get(message.get("method", ""), ()):
                    try:
                        handler(message)
                    except Exception:  # a broken handler must not stop the reader
                        logger.exception("CDP event handler failed for %s", message.get("method"))
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(BrowserError("DevTools connection closed"))

    async def close(self) -> None:
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class Page:
    """One tab. Every call has a bounded timeout."""

    def __init__(self, cdp: _Cdp, session_id: str) -> None:
        self._cdp = cdp
        self._session_id = session_id
        self.console: list[ConsoleEntry] = []
        self.stalled: list[str] = []  # URLs held by stall_requests()
        cdp.on("Runtime.consoleAPICalled", self._mine(self._on_console))
        cdp.on("Runtime.exceptionThrown", self._mine(self._on_exception))
        cdp.on("Log.entryAdded", self._mine(self._on_log))
        cdp.on("Fetch.requestPaused", self._mine(self._on_paused))

    def _mine(self, handler: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        """Only this tab's events (the browser connection carries every session's)."""

        def filtered(message: dict[str, Any]) -> None:
            if message.get("sessionId") == self._session_id:
                handler(message)

        return filtered

    async def command(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        timeout: float = COMMAND_TIMEOUT_S,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """Sends a raw CDP command to this tab."""
        return await self._cdp.send(method, params, session_id=self._session_id, timeout=timeout)

    async def goto(self, url: str, *, timeout: float = 15.0) -> None:  # noqa: ASYNC109
        """Navigates and waits until the document (and its module scripts) finished loading."""
        result = await self.command("Page.navigate", {"url": url}, timeout=timeout)
        if result.get("errorText"):
            raise BrowserError(f"navigation to {url} failed: {result['errorText']}")
        await self.wait_for("document.readyState === 'complete'", timeout=timeout)

    async def evaluate(
        self,
        expression: str,
        *,
        timeout: float = COMMAND_TIMEOUT_S,  # noqa: ASYNC109
        await_promise: bool = True,
    ) -> Any:
        """Evaluates JavaScript in the page and returns its value as JSON-like Python data."""
        result = await self.command(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": await_promise, "returnByValue": True},
            timeout=timeout,
        )
        details = result.get("exceptionDetails")
        if details:
            exception = details.get("exception", {})
            raise JavaScriptError(exception.get("description") or details.get("text", "error"))
        return result.get("result", {}).get("value")

    async def wait_for(
        self,
        expression: str,
        *,
        timeout: float,  # noqa: ASYNC109
        interval: float = 0.1,
    ) -> Any:
        """Re-evaluates ``expression`` until it is truthy and returns it; raises on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last_error: Exception | None = None
        while True:
            try:
                value = await self.evaluate(expression, timeout=max(1.0, interval * 10))
                if value:
                    return value
            except JavaScriptError as error:  # e.g. window.parley not defined yet
                last_error = error
            if loop.time() >= deadline:
                hint = f" (last error: {last_error})" if last_error else ""
                raise TimeoutError(f"not true within {timeout} s: {expression}{hint}")
            await asyncio.sleep(interval)

    async def parley(self) -> dict[str, Any]:
        """The page's whole ``window.parley`` test surface."""
        return await self.evaluate("window.parley")  # type: ignore[no-any-return]

    async def state(self) -> str | None:
        return await self.evaluate("document.body && document.body.dataset.state")  # type: ignore[no-any-return]

    async def transitions(self) -> list[dict[str, Any]]:
        """``[{t, state}]`` with ``t`` in page milliseconds (performance.now())."""
        return await self.evaluate("window.parley.transitions")  # type: ignore[no-any-return]

    async def rx_energy(self) -> list[dict[str, Any]]:
        """Received-audio timeline ``[{t, rms, state}]``, one sample per 50 ms."""
        return await self.evaluate("window.parley.stats.rxEnergy")  # type: ignore[no-any-return]

    async def screenshot(self, path: str | Path) -> Path:
        result = await self.command("Page.captureScreenshot", {"format": "png"}, timeout=15)
        target = Path(path)
        await asyncio.to_thread(target.write_bytes, base64.b64decode(result["data"]))
        return target

    async def stall_requests(self, url_pattern: str) -> None:
        """Leaves every request matching ``url_pattern`` unanswered, like a black-holed network.

        ``url_pattern`` is a DevTools glob (``*`` and ``?``), e.g. ``"*/api/offer"``.
        """
        await self.command("Fetch.enable", {"patterns": [{"urlPattern": url_pattern}]})

    def console_errors(self) -> list[ConsoleEntry]:
        return [entry for entry in self.console if entry.is_error]

    def _on_console(self, message: dict[str, Any]) -> None:
        params = message.get("params", {})
        text = " ".join(
            str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", [])
        )
        level = {"warning": "warning", "error": "error", "assert": "error"}.get(
            params.get("type", "log"), params.get("type", "log")
        )
        self.console.append(ConsoleEntry(level, text, "console"))

    def _on_exception(self, message: dict[str, Any]) -> None:
        details = message.get("params", {}).get("exceptionDetails", {})
        text = details.get("exception", {}).get("description") or details.get("text", "")
        self.console.append(ConsoleEntry("error", text, "exception"))

    def _on_paused(self, message: dict[str, Any]) -> None:
        # Deliberately never continued: the page sees a request that never returns.
        self.stalled.append(message.get("params", {}).get("request", {}).get("url", ""))

    def _on_log(self, message: dict[str, Any]) -> None:
        entry = message.get("params", {}).get("entry", {})
        text = entry.get("text", "")
        if entry.get("url"):
            text = f"{text} ({entry['url']})"
        self.console.append(ConsoleEntry(entry.get("level", "info"), text, entry.get("source", "")))


@contextlib.asynccontextmanager
async def open_page(
    url: str,
    *,
    fake_mic: str | Path | None = None,
    extra_args: tuple[str, ...] = (),
    chromium: str = CHROMIUM,
    launch_timeout: float = LAUNCH_TIMEOUT_S,
) -> AsyncIterator[Page]:
    """Starts Chromium, opens ``url`` in a fresh tab, yields the :class:`Page`, then cleans up.

    Args:
        url: the page to load.
        fake_mic: a WAV (16-bit PCM or float; pad with >= 1 s of silence) that the fake
            microphone plays once, from the moment the page calls getUserMedia.
        extra_args: more Chromium flags.
        chromium: the browser binary.
        launch_timeout: how long Chromium may take to start listening for DevTools.
    """
    # File-system work goes to a thread: the event loop may be watched for blocking calls.
    profile = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="parley-chromium-"))
    args = [chromium, *BASE_FLAGS, f"--user-data-dir={profile}", *extra_args]
    if fake_mic is not None:
        # Only "%noloop" may follow the path; the flag wants an absolute path.
        mic_path = await asyncio.to_thread(os.path.abspath, fake_mic)
        args.append(f"--use-file-for-fake-audio-capture={mic_path}%noloop")
    args.append("about:blank")

    process: asyncio.subprocess.Process | None = None
    stderr_tail: collections.deque[str] = collections.deque(maxlen=80)
    drain: asyncio.Task[None] | None = None
    http: aiohttp.ClientSession | None = None
    cdp: _Cdp | None = None
    try:
        process = await asyncio.create_subprocess_exec(
            *args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, so cleanup reaches every child
        )
        try:
            browser_ws = await asyncio.wait_for(_devtools_url(process, stderr_tail), launch_timeout)
        except TimeoutError:
            raise BrowserError(
                f"Chromium did not start within {launch_timeout} s:\n" + "\n".join(stderr_tail)
            ) from None
        # Chromium logs a lot to stderr; keep reading so it never blocks on a full pipe.
        drain = asyncio.create_task(_drain(process, stderr_tail), name="chromium-stderr")

        http = aiohttp.ClientSession()
        ws = await http.ws_connect(browser_ws, max_msg_size=0, timeout=aiohttp.ClientWSTimeout())
        cdp = _Cdp(ws)
        target = await cdp.send("Target.createTarget", {"url": "about:blank"})
        attached = await cdp.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(cdp, attached["sessionId"])
        # Enabled before navigating, so errors during the first load are caught too.
        for domain in ("Runtime", "Log", "Page"):
            await page.command(f"{domain}.enable")
        await page.goto(url)
        yield page
    finally:
        if cdp is not None:
            with contextlib.suppress(BrowserError, ConnectionError, RuntimeError):
                await cdp.send("Browser.close", timeout=2.0)
            await cdp.close()
        if http is not None:
            await http.close()
        if process is not None:
            await _stop(process)
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
        await asyncio.to_thread(shutil.rmtree, profile, ignore_errors=True)


async def _devtools_url(process: asyncio.subprocess.Process, tail: collections.deque[str]) -> str:
    assert process.stderr is not None
    while line := await process.stderr.readline():
        tail.append(line.decode(errors="replace").rstrip())
        match = _DEVTOOLS_LINE.search(line)
        if match:
            return match.group(1).decode()
    raise BrowserError("Chromium exited before DevTools was up:\n" + "\n".join(tail))


async def _drain(process: asyncio.subprocess.Process, tail: collections.deque[str]) -> None:
    assert process.stderr is not None
    while line := await process.stderr.readline():
        tail.append(line.decode(errors="replace").rstrip())


async def _stop(process: asyncio.subprocess.Process) -> None:
    """Waits briefly for a graceful exit, then kills the browser's whole process group."""
    try:
        await asyncio.wait_for(process.wait(), CLOSE_TIMEOUT_S)
    except TimeoutError:
        pass
    # Renderer/GPU/utility children share the group; make sure none outlive the test.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    if process.returncode is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), CLOSE_TIMEOUT_S)


# ---- fake microphone input -------------------------------------------------------------


def make_speech_wav(
    path: str | Path,
    text: str,
    *,
    lead_silence_s: float = 1.0,
    tail_silence_s: float = 4.0,
    voice: str = "espeak",
) -> Path:
    """``text`` spoken by espeak-ng (or ``voice="piper"``: the local Piper voice) into a
    48 kHz 16-bit mono WAV padded with silence (Chromium's fake microphone wants ≥ 1 s of
    silence at the end).

    Piper is for tests that need a word Whisper must hear whatever the browser's audio
    processing does to its onset: espeak's "Socrates" is lost to Whisper tiny when 90 ms of
    its start are missing, Piper's survives 120 ms.
    """
    if voice == "piper":
        speech = to_int16(signals.piper(text))
    elif shutil.which("espeak-ng") is None:
        raise FileNotFoundError("espeak-ng is needed to synthesize the fake-microphone WAV")
    else:
        speech = to_int16(signals.espeak(text, voice="en", words_per_minute=150))
    pad = [np.zeros(int(s * RATE), np.int16) for s in (lead_silence_s, tail_silence_s)]
    target = Path(path)
    write_wav(target, np.concatenate([pad[0], speech, pad[1]]))
    return target


# ---- reading the energy timeline --------------------------------------------------------


def energy_by_state(timeline: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per call state: sample count, median and peak RMS of the received audio."""
    groups: dict[str, list[float]] = collections.defaultdict(list)
    for sample in timeline:
        groups[sample.get("state", "?")].append(float(sample["rms"]))
    return {
        state: {"samples": len(values), "median": statistics.median(values), "peak": max(values)}
        for state, values in groups.items()
    }


async def _main() -> int:
    parser = argparse.ArgumentParser(description="Open a page in headless Chromium and report.")
    parser.add_argument("url")
    parser.add_argument("--wav", help="fake microphone input")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to stay on the page")
    parser.add_argument("--screenshot", help="PNG to write at the end")
    parser.add_argument("--flag", action="append", default=[], help="extra Chromium flag")
    options = parser.parse_args()
    async with open_page(options.url, fake_mic=options.wav, extra_args=tuple(options.flag)) as page:
        await asyncio.sleep(options.seconds)
        parley = await page.evaluate("window.parley || null")
        if options.screenshot:
            await page.screenshot(options.screenshot)
        report: dict[str, Any] = {
            "state": await page.state(),
            "console_errors": [entry.text for entry in page.console_errors()],
        }
        if parley:
            report["transport"] = parley["transport"]
            report["transitions"] = [item["state"] for item in parley["transitions"]]
            report["energy_by_state"] = energy_by_state(parley["stats"]["rxEnergy"])
            report["tts"] = parley["stats"]["tts"]
            report["rtt_ms"] = parley["stats"]["rttMs"]
            report["events"] = [event["type"] for event in parley["events"]]
            report["errors"] = parley["errors"]
            report["notices"] = parley["notices"]
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main()))

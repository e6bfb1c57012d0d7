"""Dead-peer detection: a connected WebRTC peer that goes silent is declared gone in seconds.

aiortc has no "disconnected" state: a vanished peer (tab killed, laptop closed, network
gone) is noticed only after ~30 s of failed ICE consent checks, and meanwhile its call holds
a slot, a decoder thread and the agent. Clients send audio continuously (browsers and
``parley call`` send 50 packets a second, silence included) and may ping on the DataChannel,
so a call with no inbound frame and no client event for ``PARLEY_LIVENESS_TIMEOUT_S`` is
closed with the reason ``peer gone``. A client that sends no audio at all (receive-only)
must ping; one that does neither is left to aiortc's consent checks.

WebSocket calls need nothing here: aiohttp's heartbeat (ping/pong) closes a dead socket.
"""

from __future__ import annotations

import asyncio
import logging
import time

from media_server.call import RtcCall

logger = logging.getLogger(__name__)


async def _connected(call: RtcCall) -> None:
    """Return once the peer connection reaches "connected" (the connect deadline bounds this)."""
    if call.connected:
        return
    ready = asyncio.Event()

    def on_state() -> None:
        if call.connected:
            ready.set()

    call.pc.on("connectionstatechange", on_state)
    try:
        await ready.wait()
    finally:
        call.pc.remove_listener("connectionstatechange", on_state)


async def watch(call: RtcCall, timeout_s: float) -> None:
    """Close ``call`` when its client has sent nothing for ``timeout_s`` after connecting."""
    await _connected(call)
    call.last_activity = max(call.last_activity, time.monotonic())
    check_every = max(0.2, timeout_s / 4)
    while not call.closed.is_set():
        await asyncio.sleep(check_every)
        silent = time.monotonic() - call.last_activity
        if silent > timeout_s and _sends_audio_or_pings(call):
            logger.info("%s: peer gone: no media or events for %.1f s", call.log_prefix, silent)
            call.tasks.spawn(call.close(f"peer gone: silent {timeout_s:g} s"), "close")
            return


def _sends_audio_or_pings(call: RtcCall) -> bool:
    """Whether silence means something: the client offered to send audio, or has pinged."""
    sending = any(t.receiver.track is not None for t in call.pc.getTransceivers() if t.kind == "audio")
    return sending or call.last_activity > call.started


def start(call: RtcCall, timeout_s: float) -> None:
    """Watch ``call`` from now on (0 = off)."""
    if timeout_s > 0:
        call.tasks.spawn(watch(call, timeout_s), "liveness")

"""The thinnest aiortc media server: answer an offer and send each caller's audio straight back.

``parley bench capacity`` runs it beside Parley in the same run: its CPU per call is what
aiortc itself costs (ICE, DTLS/SRTP, jitter buffer, Opus decode and re-encode, RTCP), the
floor a Python media server starts from. Run as ``python -m bench.relay --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack

PEERS: web.AppKey[set[RTCPeerConnection]] = web.AppKey("peers")
RELAY = web.AppKey("relay", MediaRelay)


async def offer(request: web.Request) -> web.Response:
    """``POST /whip`` with an SDP offer: a peer that echoes the caller's audio track back."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    request.app[PEERS].add(pc)

    def on_track(track: MediaStreamTrack) -> None:
        pc.addTrack(request.app[RELAY].subscribe(track))

    pc.on("track", on_track)

    async def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            request.app[PEERS].discard(pc)
            await pc.close()

    pc.on("connectionstatechange", on_state)
    await pc.setRemoteDescription(RTCSessionDescription(await request.text(), "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    return web.Response(status=201, text=pc.localDescription.sdp, content_type="application/sdp",
                        headers={"Location": f"/whip/{id(pc)}"})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "calls": len(request.app[PEERS])})


async def _close_peers(app: web.Application) -> None:
    peers: set[RTCPeerConnection] = app[PEERS]
    await asyncio.gather(*(pc.close() for pc in list(peers)), return_exceptions=True)


def create_app() -> web.Application:
    app = web.Application()
    app[PEERS] = set()
    app[RELAY] = MediaRelay()
    app.router.add_post("/whip", offer)
    app.router.add_get("/health", health)
    app.on_shutdown.append(_close_peers)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, like parley serve")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(create_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()

"""WHIP (RFC 9725): third-party WebRTC publishers — FFmpeg, OBS, GStreamer — talk to a persona.

``POST /whip?persona=ID`` (``application/sdp``) answers 201 with the SDP answer and the session
resource in ``Location``; ``PATCH`` on it trickles ICE candidates
(``application/trickle-ice-sdpfrag``); ``DELETE`` hangs up. ``OPTIONS`` answers CORS
preflights. A Bearer session token (``POST /api/sessions``) on the POST puts the call in that
session; without one an anonymous session is made.

Every WHIP peer does DTLS on the system OpenSSL (:mod:`media_server.dtls_compat`): FFmpeg's
muxer, as shipped in PyAV's wheels, signs with a P-224 certificate that aiortc's own OpenSSL
refuses. A session whose ICE or DTLS fails is logged once with its reason, counted in
``parley_whip_failures_total{stage}`` and closed; its id is remembered for a while so a late
``DELETE`` learns that it ended (404) rather than that it never existed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import web
from aiortc.sdp import candidate_from_sdp

from media_server.call import RtcCall
from media_server.dtls_compat import failure_reason
from parley import metrics
from personas import Persona
from signaling import rooms_api
from signaling.api import open_call, resolve_session
from signaling.auth import Claims
from signaling.errors import ApiError, error_response
from signaling.keys import SETTINGS
from signaling.sdp_guard import MAX_SDP, read_sdp

logger = logging.getLogger(__name__)

SDP_TYPE = "application/sdp"
SDPFRAG_TYPE = "application/trickle-ice-sdpfrag"
ENDED_KEEP = 1024  # ended session ids remembered for a clear 404 on a late DELETE/PATCH
ENDED_TTL_S = 3600.0
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Location, ETag, Link, Accept-Patch, X-Parley-Session",
}


@dataclass(slots=True)
class Ended:
    reason: str
    at: float


class WhipSessions:
    """The worker's live WHIP sessions (by resource id = call id) and recently ended ones."""

    def __init__(self) -> None:
        self.live: dict[str, RtcCall] = {}
        self.ended: OrderedDict[str, Ended] = OrderedDict()
        self._connected: set[str] = set()  # media flowed at some point
        self._deleted: set[str] = set()  # hung up by the client's DELETE

    def add(self, call: RtcCall) -> None:
        self.live[call.id] = call
        call.pc.on("connectionstatechange", lambda: self._on_state(call))
        call.tasks.spawn(self._forget_when_closed(call), "whip registry")

    def _on_state(self, call: RtcCall) -> None:
        if call.pc.connectionState == "connected":
            self._connected.add(call.id)
        elif call.pc.connectionState == "failed" and call.id in self._connected:
            self._remember(call.id, "connection lost")  # RtcCall closes itself on "failed"
        elif call.pc.connectionState == "failed":
            self._failed(call, failure_reason(call.pc))

    def _failed(self, call: RtcCall, reason: str) -> None:
        """Log and count a session whose media did not connect — once."""
        if call.id in self.ended:
            return
        stage = reason.split(":", 1)[0]
        metrics.WHIP_FAILURES.labels(stage if stage in ("ice", "dtls") else "other").inc()
        logger.warning("%s: WHIP session %s (session %s) failed: %s", call.log_prefix, call.id,
                       call.session.session_id, reason)
        self._remember(call.id, reason)

    def mark_deleted(self, call: RtcCall) -> None:
        self._deleted.add(call.id)

    async def _forget_when_closed(self, call: RtcCall) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await call.closed.wait()
        self.live.pop(call.id, None)
        connected, deleted = call.id in self._connected, call.id in self._deleted
        self._connected.discard(call.id)
        self._deleted.discard(call.id)
        if not connected and not deleted:  # e.g. the connect watchdog gave up on it
            reason = failure_reason(call.pc)
            self._failed(call, reason if reason.startswith(("ice", "dtls")) else "ice: never connected")
        elif call.id not in self.ended:
            self._remember(call.id, "hung up" if deleted else "closed")

    def _remember(self, resource_id: str, reason: str) -> None:
        now = time.monotonic()
        self.ended[resource_id] = Ended(reason, now)
        while self.ended and (len(self.ended) > ENDED_KEEP or now - next(iter(self.ended.values())).at > ENDED_TTL_S):
            self.ended.popitem(last=False)

    def get_or_404(self, resource_id: str) -> RtcCall:
        call = self.live.get(resource_id)
        if call is not None and not call.closed.is_set():
            return call
        ended = self.ended.get(resource_id)
        if ended is not None:
            raise ApiError(404, "session_ended", f"WHIP session {resource_id} has ended ({ended.reason})")
        raise ApiError(404, "not_found", f"no WHIP session {resource_id}")


WHIP = web.AppKey("whip", WhipSessions)


def setup_routes(app: web.Application) -> None:
    app[WHIP] = WhipSessions()
    app.router.add_route("OPTIONS", "/whip", whip_options)
    app.router.add_post("/whip", whip_post)
    app.router.add_route("OPTIONS", "/whip/{resource_id}", whip_options)
    app.router.add_patch("/whip/{resource_id}", whip_patch)
    app.router.add_delete("/whip/{resource_id}", whip_delete)


def etag(resource_id: str) -> str:
    """The session's entity tag; it names the ICE session, which never restarts here."""
    return f'"{resource_id[:16]}"'


def ice_server_links(request: web.Request) -> list[str]:
    """RFC 9725 §4.6: the configured STUN/TURN servers as ``Link: <url>; rel="ice-server"``."""
    return [f'<{url}>; rel="ice-server"' for url in request.app[SETTINGS].ice_server_urls]


def _headers(**extra: str) -> dict[str, str]:
    return {**CORS, **extra}


async def whip_options(request: web.Request) -> web.Response:
    """CORS preflight (and discovery): what may be sent, plus the ICE servers."""
    methods = "OPTIONS, POST" if "resource_id" not in request.match_info else "OPTIONS, PATCH, DELETE"
    response = web.Response(status=204, headers=_headers(**{
        "Access-Control-Allow-Methods": methods,
        "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
        "Access-Control-Max-Age": "86400",
        "Allow": methods,
        "Accept-Post": SDP_TYPE,
    }))
    for link in ice_server_links(request):
        response.headers.add("Link", link)
    return response


async def open_whip_call(request: web.Request, claims: Claims, persona: Persona, sdp: str) -> RtcCall:
    """Answer ``sdp``; the peer does DTLS on the system OpenSSL (see the module docstring)."""
    app = request.app
    call = await open_call(request, claims, persona, sdp, system_dtls=bool(app[SETTINGS].whip_system_dtls))
    app[WHIP].add(call)
    return call


async def whip_post(request: web.Request) -> web.Response:
    sdp = await read_sdp(request)
    if "room" in request.query:  # joining a room, with the room's token
        return await rooms_api.whip(request, sdp)
    try:
        claims, persona = await resolve_session(request, request.query.get("persona"), None)
    except ApiError as exc:
        if exc.status != 401:
            raise
        # RFC 9725 §4.5 / RFC 6750: say which scheme the endpoint wants
        return error_response(exc.status, exc.code, exc.message,
                              headers=_headers(**{"WWW-Authenticate": 'Bearer realm="parley"'}))
    call = await open_whip_call(request, claims, persona, sdp)
    logger.info("%s: WHIP session %s for persona %s (session %s, %s)", call.log_prefix, call.id, persona.id,
                claims.session_id, request.headers.get("User-Agent", "unknown client"))
    response = web.Response(status=201, text=call.pc.localDescription.sdp, content_type=SDP_TYPE,
                            headers=_headers(**{
                                "Location": f"/whip/{call.id}",
                                "ETag": etag(call.id),
                                "Accept-Patch": SDPFRAG_TYPE,
                                "X-Parley-Session": claims.session_id,
                            }))
    for link in ice_server_links(request):
        response.headers.add("Link", link)
    return response


def parse_sdpfrag(text: str) -> tuple[str | None, str | None, list[str], bool]:
    """(ice-ufrag, mid, candidate lines, end-of-candidates) of a trickle-ice-sdpfrag (RFC 8840)."""
    ufrag = mid = None
    candidates: list[str] = []
    end = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("a=ice-ufrag:"):
            ufrag = line.split(":", 1)[1]
        elif line.startswith("a=mid:") and mid is None:
            mid = line.split(":", 1)[1]
        elif line.startswith("a=candidate:"):
            candidates.append(line[len("a=candidate:"):])
        elif line == "a=end-of-candidates":
            end = True
    return ufrag, mid, candidates, end


async def whip_patch(request: web.Request) -> web.Response:
    """Trickle ICE: add the client's candidates. ICE restarts are not supported (422)."""
    call = request.app[WHIP].get_or_404(request.match_info["resource_id"])
    if request.content_type != SDPFRAG_TYPE:
        raise ApiError(415, "unsupported_media_type", f"PATCH takes Content-Type: {SDPFRAG_TYPE}")
    if_match = request.headers.get("If-Match")
    if if_match not in (None, "*", etag(call.id)):
        raise ApiError(412, "precondition_failed", f"If-Match does not match the session's ETag {etag(call.id)}")
    fragment = await request.text()
    if len(fragment) > MAX_SDP:
        raise ApiError(413, "body_too_large", "sdpfrag too large")
    ufrag, mid, candidates, end = parse_sdpfrag(fragment)
    remote = call.pc.remoteDescription
    if ufrag is not None and remote is not None and f"a=ice-ufrag:{ufrag}" not in remote.sdp:
        raise ApiError(422, "ice_restart_unsupported", "ICE restarts are not supported; start a new session")
    for line in candidates:
        try:
            candidate = candidate_from_sdp(line)
        except (AssertionError, ValueError, IndexError) as exc:
            raise ApiError(400, "bad_sdp", f"bad candidate {line!r}: {exc}") from exc
        candidate.sdpMid = mid
        candidate.sdpMLineIndex = None if mid is not None else 0
        await call.pc.addIceCandidate(candidate)
    if end:
        await call.pc.addIceCandidate(None)
    return web.Response(status=204, headers=_headers(ETag=etag(call.id)))


async def whip_delete(request: web.Request) -> web.Response:
    sessions = request.app[WHIP]
    call = sessions.get_or_404(request.match_info["resource_id"])
    sessions.mark_deleted(call)
    await call.close("WHIP DELETE")
    return web.Response(status=204, headers=_headers())

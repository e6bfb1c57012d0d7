"""Defensive parsing of what clients send: request bodies (any charset, any bytes) and SDP.

aiortc trusts its input: its SDP parser ``assert``s, indexes and splits without checks, and
``setRemoteDescription`` dereferences attributes a malformed offer never set (``'NoneType'
object has no attribute 'role'``). A fuzzer turned 13 % of mutated requests into 500s that
way. So an offer is checked here *before* aiortc sees it, in two steps:

1. the text: size, a ``v=0`` first line, one ``<letter>=`` field per line, no control bytes;
2. the structure: aiortc's own (pure, side-effect free) parser runs on the text — any
   exception it raises means "malformed", whatever its type — and the parsed description is
   checked for everything ``RTCPeerConnection`` later assumes (ICE credentials, a DTLS
   fingerprint and role per section, RTCP mux, unique mids, a codec we can answer, ...).

Bodies are decoded strictly by :func:`signaling.errors.read_text`: an unknown ``charset``
(``LookupError`` inside aiohttp's ``request.text()``) is a 415, undecodable bytes a 400.
"""

from __future__ import annotations

import re

from aiohttp import web
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import DIRECTIONS, MediaDescription, SessionDescription

from signaling.errors import ApiError, read_text

MAX_SDP = 64 * 1024
MAX_LINES = 2000
ANSWERABLE_AUDIO = frozenset({"opus", "pcmu", "pcma"})
DTLS_ROLES = frozenset({"auto", "client", "server"})
_LINE = re.compile(r"^[a-z]=[^\x00-\x08\x0a-\x1f\x7f]*$")


def bad_sdp(message: str) -> ApiError:
    return ApiError(400, "bad_sdp", message)


async def read_sdp(request: web.Request) -> str:
    """A WHIP body: ``application/sdp`` text, checked with :func:`check_offer`."""
    if request.content_type != "application/sdp":
        raise ApiError(415, "unsupported_media_type", "WHIP offers are Content-Type: application/sdp")
    return check_offer(await read_text(request))


def check_offer(sdp: object) -> str:
    """``sdp`` if it is an offer aiortc can answer, else a 400 ``bad_sdp`` ApiError saying why."""
    if not isinstance(sdp, str):
        raise bad_sdp("sdp must be an SDP offer string (v=0 …)")
    _check_text(sdp)
    _check_structure(_parse(sdp))
    return sdp


def _check_text(sdp: str) -> None:
    if len(sdp) > MAX_SDP:
        raise bad_sdp(f"SDP is over {MAX_SDP // 1024} KiB")
    if not sdp.startswith("v=0"):
        raise bad_sdp("sdp must be an SDP offer string (v=0 …)")
    lines = sdp.splitlines()
    if len(lines) > MAX_LINES:
        raise bad_sdp(f"SDP has more than {MAX_LINES} lines")
    for number, line in enumerate(lines, 1):
        if line and not _LINE.match(line):
            raise bad_sdp(f"SDP line {number} is not '<letter>=<value>'")
    if lines[0].strip() != "v=0":
        raise bad_sdp("the first SDP line must be v=0")


def _parse(sdp: str) -> SessionDescription:
    # aiortc's parser is a pure function of the text: whatever it raises (AssertionError,
    # ValueError, KeyError, StopIteration, ...) can only mean the text is malformed.
    try:
        return SessionDescription.parse(sdp)
    except Exception as exc:
        raise bad_sdp(f"malformed SDP offer ({type(exc).__name__})") from exc


def _check_structure(description: SessionDescription) -> None:
    if not description.media:
        raise bad_sdp("the offer has no media sections")
    mids: set[str] = set()
    for index, media in enumerate(description.media):
        _check_media(index, media, mids)
    if not any(m.kind == "audio" and _answerable(m.rtp.codecs) for m in description.media):
        raise bad_sdp("the offer has no audio section with Opus, PCMU or PCMA")
    for group in description.group:
        missing = [item for item in group.items if item not in mids]
        if missing:
            raise bad_sdp(f"group {group.semantic} names unknown mid {str(missing[0])[:40]!r}")


def _check_media(index: int, media: MediaDescription, mids: set[str]) -> None:
    where = f"media section {index} ({media.kind[:20]})"
    if media.kind not in ("audio", "video", "application"):
        raise bad_sdp(f"{where}: unsupported media kind")
    if not 0 <= media.port <= 65535:
        raise bad_sdp(f"{where}: port out of range")
    if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
        raise bad_sdp(f"{where}: ICE ufrag/pwd missing")
    if media.dtls is None or not media.dtls.fingerprints:
        raise bad_sdp(f"{where}: DTLS fingerprint and setup role missing")
    if media.dtls.role not in DTLS_ROLES:
        raise bad_sdp(f"{where}: bad DTLS setup role")
    mid = media.rtp.muxId
    if not mid or mid in mids:
        raise bad_sdp(f"{where}: a=mid missing or repeated")
    mids.add(mid)
    if media.kind == "application":
        _check_application(where, media)
    elif not media.rtcp_mux:
        raise bad_sdp(f"{where}: RTCP mux (a=rtcp-mux) is required")
    elif media.direction not in DIRECTIONS:
        raise bad_sdp(f"{where}: direction (a=sendrecv|sendonly|recvonly|inactive) missing")


def _check_application(where: str, media: MediaDescription) -> None:
    if media.profile == "DTLS/SCTP":
        if not media.fmt or not str(media.fmt[0]).isdigit():
            raise bad_sdp(f"{where}: DTLS/SCTP needs a numeric SCTP port")
    elif media.sctp_port is None:
        raise bad_sdp(f"{where}: a=sctp-port missing")


def _answerable(codecs_: list[RTCRtpCodecParameters]) -> bool:
    return any(c.mimeType.split("/")[-1].lower() in ANSWERABLE_AUDIO for c in codecs_)

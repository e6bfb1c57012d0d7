"""Dial-out (UAC): the agent calls a phone, or a room calls one in (``POST /api/sip/calls``).

An INVITE with our offer goes over the listener's UDP socket (so the phone's responses
and later requests come back to the port we listen on), resent on Timer A until a
provisional response. A 2xx gets its ACK, the call starts, and the dialog is held by
:class:`SipServer` like an inbound one (BYE either way). A final error gets its ACK from
here too (RFC 3261 17.1.1.3) and becomes a :class:`DialError`. With ``room`` the answered
phone becomes a participant of that room (as if it had called ``sip:room-ID@host``); a room
that ended or filled up while it rang gets the phone a BYE and a :class:`DialError`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from media_server.rooms.room import RoomFull
from media_server.sip import sdp
from media_server.sip.call import PhoneLeg
from media_server.sip.dialog import USER_AGENT, Dialog
from media_server.sip.message import NameAddr, SipMessage, SipParseError, parse_uri
from media_server.sip.routing import Route
from media_server.sip.rtp import RtpLeg
from media_server.sip.server import SipDialogState, SipServer
from media_server.sip.transaction import new_branch, new_tag
from media_server.sip.transport import Flow

logger = logging.getLogger(__name__)

ANSWER_TIMEOUT_S = 60.0


class DialError(RuntimeError):
    """Dial-out failed; ``http_status``/``code`` say how for the API."""

    def __init__(self, http_status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code


async def dial(server: SipServer, to: str, persona: str, timeout: float = ANSWER_TIMEOUT_S,
               room: str | None = None) -> PhoneLeg:
    """Call ``to`` for ``persona`` (or into ``room``, whose persona that is); returns the answered leg."""
    try:
        target = parse_uri(to)
    except SipParseError as exc:
        raise DialError(400, "bad_target", f"not a SIP URI: {to!r}") from exc
    dest = await _resolve(target.host, target.port or 5060)
    if server.dial_udp is None or server.dial_udp.transport is None:
        raise DialError(409, "sip_disabled", "the SIP listener is not running")
    server.manager.check_capacity()
    flow = Flow(server.dial_udp.transport, dest)
    leg = await RtpLeg.open(server.settings.host or "0.0.0.0", server.rtp_ports)
    try:
        route = Route("room", room) if room is not None else Route("persona", persona)
        return await _invite(server, flow, dest, to, route, persona, leg, timeout)
    except BaseException:
        leg.close()
        raise


async def _resolve(host: str, port: int) -> tuple[str, int]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=2)  # SOCK_DGRAM
    if not infos:
        raise DialError(502, "unresolvable", f"cannot resolve {host}")
    return str(infos[0][4][0]), port


async def _invite(server: SipServer, flow: Flow, dest: tuple[str, int], to: str, route: Route, persona: str,
                  leg: RtpLeg, timeout: float) -> PhoneLeg:
    local_ip = server.local_address(dest[0])
    media = sdp.LocalMedia(local_ip, leg.local_port)
    contact = server.contact(dest[0], flow, persona)
    via = server.via(dest[0], flow)
    invite = SipMessage(method="INVITE", uri=to, body=media.offer())
    invite.add("Via", f"{via};branch={new_branch()};rport")
    invite.add("Max-Forwards", "70")
    invite.add("From", str(NameAddr(f"sip:{persona}@{local_ip}", {"tag": new_tag()})))
    invite.add("To", f"<{to}>")
    invite.add("Call-ID", uuid.uuid4().hex)
    invite.add("CSeq", "1 INVITE")
    invite.add("Contact", f"<{contact}>")
    invite.add("User-Agent", USER_AGENT)
    invite.add("Content-Type", "application/sdp")
    final: asyncio.Future[SipMessage] = asyncio.get_running_loop().create_future()

    def on_response(res: SipMessage) -> None:
        if res.status >= 200 and not final.done():
            final.set_result(res)

    resender = server.send_request(invite, flow, dest, on_response)
    try:
        response = await asyncio.wait_for(final, timeout)
    except TimeoutError as exc:
        _cancel(server, invite, flow, dest)
        raise DialError(504, "no_answer", f"{to} did not answer in {timeout:.0f} s") from exc
    finally:
        resender.stop()
    if response.status >= 300:
        if response.status != 408:
            flow.send(_error_ack(invite, response).to_bytes(), dest)
        raise DialError(502, f"sip_{response.status}", f"{to} answered {response.status} {response.reason}")
    return await _answered(server, invite, response, flow, dest, leg, media, contact, via, route)


async def _answered(server: SipServer, invite: SipMessage, response: SipMessage, flow: Flow,
                    dest: tuple[str, int], leg: RtpLeg, media: sdp.LocalMedia, contact: str, via: str,
                    route: Route) -> PhoneLeg:
    dialog = Dialog.from_uac(invite, response, dest)
    ack = dialog.request("ACK", via, contact, cseq=invite.cseq[0]).to_bytes()
    flow.send(ack, dest)
    try:
        leg.apply(sdp.parse(response.body))
        session = await server.hooks.new_session(route.target, invite.uri) if route.kind == "persona" else None
        phone = await server.phone_leg(route, session, parse_uri(invite.uri).user or "phone", leg)
    except (sdp.SdpError, LookupError, RoomFull) as exc:
        bye = dialog.request("BYE", via, contact)
        server.send_request(bye, flow, dest)
        if isinstance(exc, sdp.SdpError):
            raise DialError(502, "bad_sdp", f"the answer's SDP is unusable: {exc}") from exc
        raise DialError(404 if isinstance(exc, LookupError) else 503, "room_gone", str(exc)) from exc
    state = SipDialogState(dialog, phone, flow, media, contact, via, ack=ack)
    server.dialogs[dialog.call_id] = state
    server.by_call[phone.id] = state
    phone.start()
    logger.info("%s: dialled %s for %s %s", phone.log_prefix, invite.uri, route.kind, route.target)
    return phone


def _error_ack(invite: SipMessage, response: SipMessage) -> SipMessage:
    """The ACK of a non-2xx final: same branch as the INVITE, To from the response."""
    ack = SipMessage(method="ACK", uri=invite.uri)
    ack.add("Via", invite.get_all("Via")[0])
    ack.add("Max-Forwards", "70")
    ack.add("From", invite.get("From") or "")
    ack.add("To", response.get("To") or "")
    ack.add("Call-ID", invite.call_id)
    ack.add("CSeq", f"{invite.cseq[0]} ACK")
    return ack


def _cancel(server: SipServer, invite: SipMessage, flow: Flow, dest: tuple[str, int]) -> None:
    cancel = SipMessage(method="CANCEL", uri=invite.uri)
    for name in ("Via", "Max-Forwards", "From", "To", "Call-ID"):
        cancel.add(name, invite.get(name) or "")
    cancel.add("CSeq", f"{invite.cseq[0]} CANCEL")
    server.send_request(cancel, flow, dest)

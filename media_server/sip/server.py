"""The SIP user agent core: answers phones (UAS) and holds the dialogs of their calls.

Listens on UDP and TCP at ``PARLEY_SIP_PORT``. For an INVITE it sends 100 Trying at once,
checks (allow-list, digest auth, route, SDP, capacity), rings (180), opens an RTP leg, starts
a :class:`SipCall` and answers 200 OK, resent on the T1..T2 schedule until the ACK comes
(a lost ACK gets the 200 again; none after 64*T1 ends the call with a BYE). CANCEL before the
answer gets 487; BYE ends the call; a re-INVITE moves or holds the media; OPTIONS says what
we allow. Responses go back where the request came from (RFC 3581 ``rport``/``received``).

Nothing a peer sends may take the listener down: every message is parsed strictly (400 or
dropped), and every handler runs inside one guard that logs the failure once, with the
message, and answers 500. Dial-out (UAC) is in ``media_server.sip.uac``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass, field
from typing import Any

from media_server.call import AgentFactory, CallSession
from media_server.manager import CallManager, TooManyCalls
from media_server.rooms.room import RoomFull
from media_server.sip import message as sipmsg
from media_server.sip import sdp
from media_server.sip.auth import DigestAuth, parse_users
from media_server.sip.call import CallEvents, PhoneLeg, SipCall
from media_server.sip.dialog import ALLOW, USER_AGENT, Dialog
from media_server.sip.message import NameAddr, SipMessage, SipParseError, Via, name_addr, parse_uri, parse_via
from media_server.sip.resend import Resender
from media_server.sip.routing import Route, route
from media_server.sip.rtp import RtpLeg, parse_port_range
from media_server.sip.transaction import ServerTransactions, new_tag
from media_server.sip.transport import Address, Flow, TcpConnection, UdpListener
from parley.config import Settings

logger = logging.getLogger(__name__)

MAX_ERROR_RESENDS = 1024  # non-2xx finals waiting for their ACK
NewSession = Callable[[str, str], Awaitable[CallSession]]  # (persona id, caller URI) -> session
JoinRoom = Callable[[str, str, RtpLeg, Callable[[str], None]], Awaitable[PhoneLeg]]


@dataclass
class SipHooks:
    """What the composition root (signaling) gives the SIP core."""

    new_session: NewSession
    agent_factory: AgentFactory
    personas: Container[str]
    #: (room id, caller's name, RTP leg, hangup) -> a participant that joined; LookupError: no such room
    join_room: JoinRoom | None = None


@dataclass
class Incoming:
    """A request being handled, with where its responses go."""

    msg: SipMessage
    via: Via
    addr: Address
    flow: Flow
    key: tuple[str, str]


@dataclass
class Pending:
    """An INVITE that has not been answered yet (CANCEL can still stop it)."""

    incoming: Incoming
    local_tag: str
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class SipDialogState:
    """One established (or answering) call: its dialog, media and retransmission state."""

    dialog: Dialog
    call: PhoneLeg  # a SipCall, or a room's SIP participant
    flow: Flow
    media: sdp.LocalMedia
    contact: str
    via: str
    awaiting_answer: bool = False  # our 200 carried the offer: the ACK brings the answer
    resender: Resender | None = None  # 200 OK until ACK
    ended: bool = False
    ack: bytes | None = None  # dial-out: our ACK, sent again if the 2xx is retransmitted


@dataclass(frozen=True, slots=True)
class FinishedCall:
    """What is kept of an ended call for logs and tests (not the call: its DSP state is big)."""

    id: str
    persona_id: str
    payload_type: int
    packets_in: int
    packets_out: int
    remote_bye: bool
    events: CallEvents

    @classmethod
    def of(cls, call: PhoneLeg) -> FinishedCall:
        leg = call.leg
        return cls(call.id, call.persona_id, leg.payload_type, leg.packets_in, leg.packets_out,
                   call.remote_bye, call.event_history)


class SipServer:
    def __init__(self, settings: Settings, manager: CallManager, hooks: SipHooks) -> None:
        self.settings = settings
        self.manager = manager
        self.hooks = hooks
        users = parse_users(settings.sip_users)
        self.auth = DigestAuth(users) if users else None
        self.allow = [ipaddress.ip_network(n.strip(), strict=False)
                      for n in settings.sip_allow.split(",") if n.strip()]
        self.rtp_ports = parse_port_range(settings.sip_rtp_ports)
        self.transactions = ServerTransactions()
        self.pending: dict[str, Pending] = {}  # INVITE branch -> pending
        self.dialogs: dict[str, SipDialogState] = {}  # Call-ID -> state
        self.by_call: dict[str, SipDialogState] = {}  # Call id -> state
        self.error_resenders: dict[str, Resender] = {}  # INVITE branch -> non-2xx final until ACK
        self.client: dict[tuple[str, str], Callable[[SipMessage], None]] = {}  # (branch, method) -> handler
        self.finished: collections.deque[FinishedCall] = collections.deque(maxlen=32)
        self.stats: dict[str, int] = {"received": 0, "malformed": 0, "forbidden": 0, "errors": 0}
        self.udp: UdpListener | None = None
        self.dial_udp: UdpListener | None = None  # the socket dial-outs use (see start)
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self.port = settings.sip_port

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.settings.host, self.settings.sip_port
        # several workers share the port: the kernel hashes each peer's address to one
        # worker, so a phone's requests (and its dialog) stay with the worker that has its call
        shared = self.settings.workers != 1
        _, self.udp = await loop.create_datagram_endpoint(lambda: UdpListener(self._on_message),
                                                          local_addr=(host, port), reuse_port=shared)
        self._tcp = await loop.create_server(lambda: TcpConnection(self._on_message), host, port,
                                             reuse_port=shared)
        # ... but the answer to a call this worker dials out, and the callee's later requests,
        # would be hashed like any other packet from that address, to any worker: dial-outs
        # go from a port of this worker's own, which their Via and Contact name
        self.dial_udp = self.udp
        if shared:
            _, self.dial_udp = await loop.create_datagram_endpoint(lambda: UdpListener(self._on_message),
                                                                   local_addr=(host, 0))
        logger.info("sip: listening on %s:%d (UDP and TCP)%s%s", host, port,
                    ", digest auth" if self.auth else "", f", allow {self.settings.sip_allow}" if self.allow else "")

    async def close(self, timeout: float = 3.0) -> None:
        """Hang up every SIP call (BYE) and stop listening."""
        self._closing = True
        calls = [s.call for s in self.dialogs.values()]
        if calls:
            await asyncio.wait([asyncio.create_task(c.close("server shutdown")) for c in calls], timeout=timeout)
            await asyncio.sleep(0.05)  # let the BYEs leave the socket
        for task in list(self._tasks):
            task.cancel()
        for resender in self.error_resenders.values():
            resender.stop()
        if self._tcp is not None:
            self._tcp.close()
        for listener in (self.udp, self.dial_udp):  # the same one twice when not shared: harmless
            if listener is not None and listener.transport is not None:
                listener.transport.close()

    def spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"sip {name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.stats["errors"] += 1
            logger.error("sip: task %s failed", task.get_name(), exc_info=task.exception())

    # -- addresses ----------------------------------------------------------------
    def local_address(self, peer_ip: str) -> str:
        """The address phones should reach us at (SDP c=, Contact, Via)."""
        if self.settings.sip_address:
            return self.settings.sip_address
        if self.settings.host not in ("0.0.0.0", "::", ""):
            return self.settings.host
        family = socket.AF_INET6 if ":" in peer_ip else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:  # a route lookup; sends nothing
            try:
                probe.connect((peer_ip, 9))
                return str(probe.getsockname()[0])
            except OSError:
                return "127.0.0.1"

    def contact(self, peer_ip: str, flow: Flow, user: str = "parley") -> str:
        tail = ";transport=tcp" if flow.reliable else ""
        return f"sip:{user}@{_host(self.local_address(peer_ip))}:{flow.local_port}{tail}"

    def via(self, peer_ip: str, flow: Flow) -> str:
        return f"SIP/2.0/{flow.kind} {_host(self.local_address(peer_ip))}:{flow.local_port}"

    @staticmethod
    def response_address(via: Via, addr: Address, flow: Flow) -> Address:
        """RFC 3261 18.2.2 with RFC 3581: back to the source port when ``rport`` asks for it."""
        if flow.reliable or "rport" in via.params:
            return addr
        return addr[0], via.port or 5060

    def allowed(self, ip: str) -> bool:
        if not self.allow:
            return True
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.allow)

    # -- inbound messages ---------------------------------------------------------
    def _on_message(self, data: bytes, addr: Address, flow: Flow) -> None:
        self.stats["received"] += 1
        try:
            msg = sipmsg.parse(data, stream=flow.reliable)
            via = parse_via(msg.get_all("Via")[0])
        except SipParseError as exc:
            self.stats["malformed"] += 1
            logger.debug("sip: malformed message from %s:%d: %s", *addr, exc)
            self._reject_malformed(data, addr, flow)
            return
        if not self.allowed(addr[0]):
            self.stats["forbidden"] += 1
            if msg.is_request and msg.method != "ACK":
                self._reply(Incoming(msg, via, addr, flow, ("", "")), 403, "Forbidden")
            return
        try:
            if msg.is_request:
                self._on_request(msg, via, addr, flow)
            else:
                self._on_response(msg, via)
        except SipParseError as exc:
            self.stats["malformed"] += 1
            if msg.is_request and msg.method != "ACK":
                self._reply(Incoming(msg, via, addr, flow, ("", "")), 400, f"Bad Request ({exc})"[:80])
        except Exception:
            self.stats["errors"] += 1
            logger.exception("sip: handling %s from %s:%d failed", msg.summary(), *addr)
            if msg.is_request and msg.method != "ACK":
                self._reply(Incoming(msg, via, addr, flow, ("", "")), 500, "Server Internal Error")

    def _reject_malformed(self, data: bytes, addr: Address, flow: Flow) -> None:
        """400 to what looks like a request with a Via; anything else is dropped (RFC 3261 16.3)."""
        with contextlib.suppress(Exception):  # best effort on hostile input: never raise here
            head = data[: sipmsg.MAX_MESSAGE].split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
            lines = head.split("\r\n")
            if not lines[0].endswith(" SIP/2.0") or lines[0].startswith(("ACK ", "SIP/")):
                return
            reply = SipMessage(status=400, reason="Bad Request")
            for line in lines[1:sipmsg.MAX_HEADERS]:
                name, _, value = line.partition(":")
                name = sipmsg.canonical(name.strip())
                if name in sipmsg.REQUIRED and len(value) < sipmsg.MAX_LINE and value.isprintable():
                    reply.add(name, value.strip())
            vias = [v for k, v in reply.headers if k == "Via"]
            if not vias:
                return
            reply.add("Server", USER_AGENT)
            via = parse_via(vias[0])
            flow.send(reply.to_bytes(), self.response_address(via, addr, flow))

    def _on_request(self, msg: SipMessage, via: Via, addr: Address, flow: Flow) -> None:
        number, _ = msg.cseq
        if msg.method == "ACK":
            self._on_ack(msg, via)
            return
        key = ServerTransactions.key(via.branch, msg.method, msg.call_id, number)
        now = asyncio.get_running_loop().time()
        seen = self.transactions.seen(key, now)
        if seen is not None:  # a retransmission: the last response again, no new work
            if seen.response is not None:
                flow.send(seen.response, self.response_address(via, addr, flow))
            return
        self.transactions.begin(key, now)
        incoming = Incoming(msg, via, addr, flow, key)
        handler = {
            "INVITE": self._on_invite, "BYE": self._on_bye, "CANCEL": self._on_cancel,
            "OPTIONS": self._on_options,
        }.get(msg.method)
        if handler is None:
            self._reply(incoming, 405, "Method Not Allowed", {"Allow": ALLOW})
            return
        handler(incoming)

    # -- responses ----------------------------------------------------------------
    def _reply(self, inc: Incoming, status: int, reason: str, headers: dict[str, str] | None = None,
               body: bytes = b"", to_tag: str | None = None) -> bytes:
        """Send a response to ``inc`` (and remember it for retransmitted requests)."""
        req = inc.msg
        res = SipMessage(status=status, reason=reason, body=body)
        vias = req.get_all("Via")
        res.add("Via", _stamp_via(vias[0], inc.addr))
        for value in vias[1:]:
            res.add("Via", value)
        res.add("From", req.get("From") or "")
        to = req.get("To") or ""
        if to_tag and status > 100 and name_addr(to).tag is None:
            to = f"{to};tag={to_tag}"
        res.add("To", to)
        res.add("Call-ID", req.call_id)
        res.add("CSeq", req.get("CSeq") or "")
        res.add("Server", USER_AGENT)
        for name, value in (headers or {}).items():
            res.add(name, value)
        if body:
            res.add("Content-Type", "application/sdp")
        wire = res.to_bytes()
        inc.flow.send(wire, self.response_address(inc.via, inc.addr, inc.flow))
        if inc.key != ("", ""):
            self.transactions.respond(inc.key, wire, asyncio.get_running_loop().time())
        return wire

    def _reject_invite(self, inc: Incoming, status: int, reason: str, headers: dict[str, str] | None = None,
                       to_tag: str | None = None) -> None:
        """A final non-2xx to an INVITE, resent until its ACK (Timer G/H)."""
        wire = self._reply(inc, status, reason, headers, to_tag=to_tag or new_tag())
        dest = self.response_address(inc.via, inc.addr, inc.flow)
        branch = inc.via.branch
        old = self.error_resenders.pop(branch, None)
        if old is not None:
            old.stop()
        while len(self.error_resenders) >= MAX_ERROR_RESENDS:  # a flood of bad INVITEs: oldest first
            self.error_resenders.pop(next(iter(self.error_resenders))).stop()
        self.error_resenders[branch] = Resender(
            lambda: inc.flow.send(wire, dest), lambda: self._drop_error_resender(branch),
            reliable=inc.flow.reliable)

    def _drop_error_resender(self, branch: str) -> None:
        self.error_resenders.pop(branch, None)

    # -- methods --------------------------------------------------------------------
    def _on_options(self, inc: Incoming) -> None:
        self._reply(inc, 200, "OK", {"Allow": ALLOW, "Accept": "application/sdp"})

    def _on_invite(self, inc: Incoming) -> None:
        if name_addr(inc.msg.get("To") or "").tag is not None:
            self._on_reinvite(inc)
            return
        self._reply(inc, 100, "Trying")
        checked = self._check_invite(inc)
        if checked is None:
            return
        # registered before any await: a CANCEL right behind the INVITE must find it
        pending = Pending(inc, new_tag())
        self.pending[inc.via.branch] = pending
        self._reply(inc, 180, "Ringing", to_tag=pending.local_tag)
        self.spawn(self._answer(pending, *checked), f"invite {inc.msg.call_id[:16]}")

    async def _answer(self, pending: Pending, target: Route, offer: sdp.MediaOffer | None) -> None:
        """Ring, open media, start the call (or join the room), 200 OK (see module docstring)."""
        inc = pending.incoming
        leg: RtpLeg | None = None
        try:
            if self.settings.sip_ring_ms > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pending.cancelled.wait(), self.settings.sip_ring_ms / 1000)
            caller = name_addr(inc.msg.get("From") or "")
            session = None
            if target.kind == "persona" and not pending.cancelled.is_set():
                session = await self.hooks.new_session(target.target, caller.uri)
            if not pending.cancelled.is_set():
                leg = await RtpLeg.open(self._bind_host(), self.rtp_ports)
            if pending.cancelled.is_set() or leg is None:
                self._reject_invite(inc, 487, "Request Terminated", to_tag=pending.local_tag)
                return
            if offer is not None:
                leg.apply(offer)
            phone = await self.phone_leg(target, session, _caller_name(caller), leg)
            leg = None  # the call (or participant) owns it now
            self._establish(inc, pending.local_tag, phone, offer)
        except (TooManyCalls, RoomFull, LookupError) as exc:
            self._reject_invite(inc, 404 if isinstance(exc, LookupError) else 486, _reason(exc),
                                to_tag=pending.local_tag)
        except Exception:
            self._reject_invite(inc, 500, "Server Internal Error", to_tag=pending.local_tag)
            raise
        finally:
            self.pending.pop(inc.via.branch, None)
            if leg is not None:
                leg.close()

    async def phone_leg(self, target: Route, session: CallSession | None, caller: str, leg: RtpLeg) -> PhoneLeg:
        """A new :class:`SipCall` with the persona, or a new participant (named ``caller``) of the room.

        Inbound and dial-out both come here. LookupError: no such room; RoomFull, TooManyCalls.
        """
        if target.kind == "room":
            if self.hooks.join_room is None:
                raise LookupError("rooms are not available here")
            return await self.hooks.join_room(target.target, caller, leg, self._hangup)
        assert session is not None
        self.manager.check_capacity()
        call = SipCall(session, self.hooks.agent_factory, leg, self._hangup)
        self.manager.register(call)
        return call

    def _check_invite(self, inc: Incoming) -> tuple[Route, sdp.MediaOffer | None] | None:
        """(route, offer) for an acceptable INVITE; otherwise answered with the error."""
        msg = inc.msg
        if self._closing:
            self._reject_invite(inc, 503, "Service Unavailable", {"Retry-After": "30"})
            return None
        if self.auth is not None and self.auth.verify(msg.get("Authorization"), "INVITE") is None:
            self._reject_invite(inc, 401, "Unauthorized", {"WWW-Authenticate": self.auth.challenge()})
            return None
        try:
            user = parse_uri(msg.uri).user
        except SipParseError:
            self._reject_invite(inc, 416, "Unsupported URI Scheme")
            return None
        target = route(user, self.hooks.personas, self.settings.persona)
        if target is None or (target.kind == "room" and self.hooks.join_room is None):
            self._reject_invite(inc, 404, "Not Found")
            return None
        offer = None
        if msg.body:
            if (msg.get("Content-Type") or "").split(";")[0].strip().lower() != "application/sdp":
                self._reject_invite(inc, 415, "Unsupported Media Type", {"Accept": "application/sdp"})
                return None
            try:
                offer = sdp.parse(msg.body)
                offer.codec()
            except sdp.SdpError as exc:
                self._reject_invite(inc, 488, "Not Acceptable Here", {"Warning": f'305 parley "{exc}"'[:200]})
                return None
        try:
            self.manager.check_capacity()
        except TooManyCalls:
            self._reject_invite(inc, 486, "Busy Here")
            return None
        return target, offer

    def _bind_host(self) -> str:
        return self.settings.host or "0.0.0.0"

    def _establish(self, inc: Incoming, local_tag: str, phone: PhoneLeg,
                   offer: sdp.MediaOffer | None) -> SipDialogState:
        """Hold the dialog of a started leg, answer 200 OK and resend it until the ACK."""
        media = sdp.LocalMedia(self.local_address(inc.addr[0]), phone.leg.local_port)
        body = media.answer(offer) if offer is not None else media.offer()
        state = SipDialogState(
            Dialog.from_uas(inc.msg, local_tag, inc.addr), phone, inc.flow, media,
            self.contact(inc.addr[0], inc.flow), self.via(inc.addr[0], inc.flow),
            awaiting_answer=offer is None,
        )
        self.dialogs[inc.msg.call_id] = state
        self.by_call[phone.id] = state
        phone.start()
        logger.info("%s: answered %s for %s (%s)", phone.log_prefix, inc.msg.uri, phone.persona_id,
                    inc.flow.kind)
        self._answer_ok(inc, state, body)
        return state

    def _answer_ok(self, inc: Incoming, state: SipDialogState, body: bytes) -> None:
        wire = self._reply(inc, 200, "OK", {"Contact": f"<{state.contact}>", "Allow": ALLOW}, body,
                           to_tag=state.dialog.local_tag)
        dest = self.response_address(inc.via, inc.addr, inc.flow)
        if state.resender is not None:
            state.resender.stop()
        state.resender = Resender(lambda: inc.flow.send(wire, dest), lambda: self._no_ack(state),
                                  reliable=inc.flow.reliable)

    def _no_ack(self, state: SipDialogState) -> None:
        logger.info("%s: no ACK for the 200 OK in 32 s; hanging up", state.call.log_prefix)
        self.spawn(state.call.close("no ACK"), "close")

    def _on_ack(self, msg: SipMessage, via: Via) -> None:
        state = self.dialogs.get(msg.call_id)
        if state is not None and state.dialog.matches(msg):
            if state.resender is not None:
                state.resender.stop()
            if state.awaiting_answer and msg.body:
                state.awaiting_answer = False
                try:
                    state.call.leg.apply(sdp.parse(msg.body))
                except sdp.SdpError as exc:
                    logger.info("%s: unusable SDP answer in the ACK (%s); hanging up", state.call.log_prefix, exc)
                    self.spawn(state.call.close("bad SDP answer"), "close")
            return
        resender = self.error_resenders.pop(via.branch, None)
        if resender is not None:
            resender.stop()

    def _on_cancel(self, inc: Incoming) -> None:
        pending = self.pending.get(inc.via.branch)
        if pending is None:
            self._reply(inc, 481, "Call/Transaction Does Not Exist")
            return
        self._reply(inc, 200, "OK", to_tag=pending.local_tag)
        pending.cancelled.set()

    def _on_bye(self, inc: Incoming) -> None:
        state = self.dialogs.get(inc.msg.call_id)
        if state is None or not state.dialog.matches(inc.msg):
            self._reply(inc, 481, "Call/Transaction Does Not Exist")
            return
        self._reply(inc, 200, "OK")
        state.call.remote_bye = True
        self._forget(state)
        self.spawn(state.call.close("remote BYE"), "close")

    def _on_reinvite(self, inc: Incoming) -> None:
        """Hold, resume or a media move inside an established call."""
        state = self.dialogs.get(inc.msg.call_id)
        if state is None or not state.dialog.matches(inc.msg):
            self._reject_invite(inc, 481, "Call/Transaction Does Not Exist")
            return
        number = inc.msg.cseq[0]
        if number <= state.dialog.remote_cseq:
            self._reject_invite(inc, 500, "Server Internal Error", {"Retry-After": "1"})
            return
        if state.resender is not None and state.resender.active:
            self._reject_invite(inc, 491, "Request Pending")
            return
        state.dialog.remote_cseq = number
        if inc.msg.body:
            try:
                offer = sdp.parse(inc.msg.body)
                offer.codec()
            except sdp.SdpError as exc:
                self._reject_invite(inc, 488, "Not Acceptable Here", {"Warning": f'305 parley "{exc}"'[:200]})
                return
            state.call.leg.apply(offer)
            body = state.media.answer(offer)
            logger.info("%s: re-INVITE: %s", state.call.log_prefix, "hold" if offer.on_hold else "resume")
        else:
            body = state.media.offer()
            state.awaiting_answer = True
        self._answer_ok(inc, state, body)

    # -- our own requests ---------------------------------------------------------------
    def _hangup(self, call_id: str) -> None:
        """The call ended on our side: BYE the phone (SipCall.close_transport calls this)."""
        state = self.by_call.get(call_id)
        if state is None or state.ended:
            return
        self._forget(state)
        if not state.flow.open:
            return
        bye = state.dialog.request("BYE", state.via, state.contact)
        self.send_request(bye, state.flow, state.dialog.peer)

    def send_request(self, msg: SipMessage, flow: Flow, dest: Address,
                     on_response: Callable[[SipMessage], None] | None = None) -> Resender:
        """Send a request of ours, resent (Timer A/E) until a final response or time-out."""
        branch = (parse_via(msg.get_all("Via")[0]).branch, msg.method)
        wire = msg.to_bytes()
        resender: Resender

        def response(res: SipMessage) -> None:
            if res.status >= 200 or msg.method == "INVITE":
                resender.stop()  # a provisional stops INVITE resends (Timer A), not its time-out
            if res.status >= 200:
                self.client.pop(branch, None)
            if on_response is not None:
                on_response(res)

        def timeout() -> None:
            self.client.pop(branch, None)
            if on_response is not None:
                on_response(SipMessage(status=408, reason="Request Timeout"))

        flow.send(wire, dest)
        resender = Resender(lambda: flow.send(wire, dest), timeout, reliable=flow.reliable,
                            cap=msg.method != "INVITE")
        self.client[branch] = response
        return resender

    def _on_response(self, msg: SipMessage, via: Via) -> None:
        handler = self.client.get((via.branch, msg.cseq[1]))
        if handler is not None:
            handler(msg)
        elif msg.status >= 200 and msg.cseq[1] == "INVITE":
            self._on_stray_invite_response(msg)

    def _on_stray_invite_response(self, msg: SipMessage) -> None:
        """A retransmitted 2xx to our INVITE: the ACK was lost, send it again."""
        state = self.dialogs.get(msg.call_id)
        if state is not None and state.ack is not None:
            state.flow.send(state.ack, state.dialog.peer)

    def _forget(self, state: SipDialogState) -> None:
        if not state.ended:
            self.finished.append(FinishedCall.of(state.call))
        state.ended = True
        if state.resender is not None:
            state.resender.stop()
        if self.dialogs.get(state.dialog.call_id) is state:
            del self.dialogs[state.dialog.call_id]
        self.by_call.pop(state.call.id, None)


def _stamp_via(value: str, addr: Address) -> str:
    """Top Via of a response: ``received`` = source IP, ``rport`` = source port (RFC 3581)."""
    via = parse_via(value)
    head, *params = value.split(";")
    out = [head]
    for param in params:
        name = param.split("=")[0].strip().lower()
        if name in ("received", "rport"):
            continue
        out.append(param)
    if via.host != addr[0]:
        out.append(f"received={addr[0]}")
    if "rport" in via.params:
        out.append(f"rport={addr[1]}")
    return ";".join(out)


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _reason(exc: BaseException) -> str:
    return "Not Found" if isinstance(exc, LookupError) else "Busy Here"


def _caller_name(caller: NameAddr) -> str:
    """What the room shows for a phone: its display name, else the user part of its URI."""
    if caller.display:
        return caller.display
    try:
        return parse_uri(caller.uri).user or "phone"
    except SipParseError:
        return "phone"

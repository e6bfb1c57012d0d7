"""SIP dialogs (RFC 3261 section 12): the state two user agents share for one call.

A dialog is identified by Call-ID + local tag + remote tag and remembers what in-dialog
requests (BYE, re-INVITE, ACK) must carry: the remote target, the route set and the CSeq
counters. In-dialog requests go back over the *flow* the dialog was set up on (the source
address of the INVITE, or where we sent ours) rather than to the Contact's host: behind a
NAT the Contact is a private address, and symmetric signalling (RFC 3581) is what works.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from media_server.sip.message import NameAddr, SipMessage, name_addr
from media_server.sip.transaction import new_branch

USER_AGENT = "Parley"
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS"

Address = tuple[str, int]


@dataclass
class Dialog:
    call_id: str
    local: NameAddr  # our From/To value (with our tag)
    remote: NameAddr  # theirs (with their tag)
    remote_target: str
    peer: Address
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = field(default_factory=lambda: secrets.randbelow(10000) + 1)
    remote_cseq: int = 0

    @property
    def local_tag(self) -> str:
        return self.local.tag or ""

    @property
    def remote_tag(self) -> str:
        return self.remote.tag or ""

    @classmethod
    def from_uas(cls, invite: SipMessage, local_tag: str, peer: Address) -> Dialog:
        """The dialog a 2xx to ``invite`` creates on our (answering) side."""
        to = name_addr(invite.get("To") or "")
        local = NameAddr(to.uri, {**to.params, "tag": local_tag}, to.display)
        contact = invite.get("Contact")
        target = name_addr(contact).uri if contact else name_addr(invite.get("From") or "").uri
        return cls(
            call_id=invite.call_id, local=local, remote=name_addr(invite.get("From") or ""),
            remote_target=target, peer=peer, route_set=invite.get_all("Record-Route"),
            remote_cseq=invite.cseq[0],
        )

    @classmethod
    def from_uac(cls, invite: SipMessage, response: SipMessage, peer: Address) -> Dialog:
        """The dialog a 2xx to our ``invite`` creates on the calling side."""
        contact = response.get("Contact")
        return cls(
            call_id=invite.call_id, local=name_addr(invite.get("From") or ""),
            remote=name_addr(response.get("To") or ""),
            remote_target=name_addr(contact).uri if contact else invite.uri, peer=peer,
            route_set=list(reversed(response.get_all("Record-Route"))), local_cseq=invite.cseq[0],
        )

    def matches(self, msg: SipMessage) -> bool:
        """Is ``msg`` (a request from the remote) inside this dialog?"""
        to_tag = name_addr(msg.get("To") or "").tag
        from_tag = name_addr(msg.get("From") or "").tag
        return msg.call_id == self.call_id and to_tag == self.local_tag and from_tag == self.remote_tag

    def request(self, method: str, via: str, contact: str, body: bytes = b"",
                content_type: str | None = None, cseq: int | None = None) -> SipMessage:
        """A new in-dialog request (BYE, re-INVITE) or the ACK of ``cseq``."""
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        msg = SipMessage(method=method, uri=self.remote_target, body=body)
        msg.add("Via", f"{via};branch={new_branch()};rport")
        msg.add("Max-Forwards", "70")
        for route in self.route_set:
            msg.add("Route", route)
        msg.add("From", str(self.local))
        msg.add("To", str(self.remote))
        msg.add("Call-ID", self.call_id)
        msg.add("CSeq", f"{cseq} {method}")
        msg.add("Contact", f"<{contact}>")
        msg.add("User-Agent", USER_AGENT)
        if content_type:
            msg.add("Content-Type", content_type)
        return msg

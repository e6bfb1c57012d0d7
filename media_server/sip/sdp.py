"""SDP offer/answer (RFC 3264) for plain RTP audio: PCMU, PCMA and telephone-event.

Only what a phone or PBX leg needs: the remote connection address and port, the offered
payload types, telephone-event's payload type, ptime and the direction (hold is
``sendonly``/``inactive`` or the old ``c=0.0.0.0``). We answer with the first G.711 codec
in the offerer's order (its preference), always ptime 20.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from media_server.sip.g711 import NAMES, PCMA, PCMU

MAX_SDP = 16384
DTMF_PT_DEFAULT = 101
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_ANSWER_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


class SdpError(ValueError):
    """An SDP body that is malformed or has no audio we can use (-> 488)."""


@dataclass
class MediaOffer:
    """The audio section of a remote description."""

    address: str
    port: int
    payload_types: list[int]
    rtpmap: dict[int, str] = field(default_factory=dict)  # pt -> "name/rate" (lower-case name)
    ptime: int | None = None
    direction: str = "sendrecv"

    @property
    def on_hold(self) -> bool:
        return self.direction in ("sendonly", "inactive") or self.address in ("0.0.0.0", "")

    def codec(self) -> int:
        """The payload type we will use: the first PCMU/PCMA the remote listed."""
        for pt in self.payload_types:
            name = self.rtpmap.get(pt, NAMES.get(pt, "").lower() + "/8000")
            if (pt in (PCMU, PCMA) and name.startswith(("pcmu/", "pcma/"))) or name in ("pcmu/8000", "pcma/8000"):
                return PCMU if name.startswith("pcmu") else PCMA
        raise SdpError("no PCMU or PCMA in the offer")

    def dtmf_pt(self) -> int | None:
        for pt in self.payload_types:
            if self.rtpmap.get(pt, "").startswith("telephone-event/8000"):
                return pt
        return None


def parse(body: bytes) -> MediaOffer:
    """The first audio section of ``body``; :class:`SdpError` when unusable."""
    if len(body) > MAX_SDP:
        raise SdpError("SDP too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SdpError("SDP is not UTF-8") from exc
    lines = [line.strip() for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    if not lines or lines[0] != "v=0":
        raise SdpError("SDP must start with v=0")
    session_addr, session_dir, media = "", "sendrecv", None
    for line in lines:
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"bad SDP line {line[:40]!r}")
        kind, value = line[0], line[2:]
        if kind == "m":
            if media is not None:
                break  # only the first audio section
            media = _media_line(value)
        elif kind == "c":
            addr = _connection(value)
            if media is None:
                session_addr = addr
            else:
                media.address = addr
        elif kind == "a":
            direction = _attribute(value, media)
            if direction and media is None:
                session_dir = direction
    if media is None:
        raise SdpError("no audio m= line")
    media.address = media.address or session_addr
    if media.direction == "" and session_dir:
        media.direction = session_dir
    media.direction = media.direction or "sendrecv"
    if not media.address:
        raise SdpError("no connection address")
    return media


def _media_line(value: str) -> MediaOffer:
    parts = value.split()
    if len(parts) < 4 or parts[0] != "audio" or not parts[1].isdigit():
        raise SdpError("the first m= line is not audio")
    if parts[2] not in ("RTP/AVP", "RTP/AVPF"):
        raise SdpError(f"unsupported media profile {parts[2]!r} (plain RTP only)")
    port = int(parts[1])
    if port > 65535:
        raise SdpError("bad media port")
    try:
        pts = [int(p) for p in parts[3:32]]
    except ValueError as exc:
        raise SdpError("bad payload type") from exc
    if any(not 0 <= p <= 127 for p in pts):
        raise SdpError("payload type out of range")
    return MediaOffer(address="", port=port, payload_types=pts, direction="")


def _connection(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError("bad c= line")
    return parts[2].split("/")[0]


def _attribute(value: str, media: MediaOffer | None) -> str | None:
    name, _, rest = value.partition(":")
    if name in DIRECTIONS:
        if media is not None:
            media.direction = name
        return name
    if media is None:
        return None
    if name == "rtpmap":
        pt, _, encoding = rest.partition(" ")
        if pt.isdigit() and encoding:
            media.rtpmap[int(pt)] = encoding.strip().lower()
    elif name == "ptime" and rest.strip().isdigit():
        media.ptime = int(rest.strip())
    return None


@dataclass
class LocalMedia:
    """What we put in our own descriptions; ``version`` grows with each new one."""

    address: str
    port: int
    session_id: int = field(default_factory=lambda: secrets.randbelow(2**31))
    version: int = 0

    def describe(self, pts: list[int], dtmf_pt: int | None, direction: str = "sendrecv") -> bytes:
        self.version += 1
        ip = "IP6" if ":" in self.address else "IP4"
        fmts = [*pts, *([dtmf_pt] if dtmf_pt is not None else [])]
        lines = [
            "v=0",
            f"o=parley {self.session_id} {self.version} IN {ip} {self.address}",
            "s=parley",
            f"c=IN {ip} {self.address}",
            "t=0 0",
            f"m=audio {self.port} RTP/AVP {' '.join(map(str, fmts))}",
            *[f"a=rtpmap:{pt} {NAMES[pt]}/8000" for pt in pts],
        ]
        if dtmf_pt is not None:
            lines += [f"a=rtpmap:{dtmf_pt} telephone-event/8000", f"a=fmtp:{dtmf_pt} 0-16"]
        lines += ["a=ptime:20", f"a={direction}"]
        return ("\r\n".join(lines) + "\r\n").encode()

    def offer(self, direction: str = "sendrecv") -> bytes:
        return self.describe([PCMU, PCMA], DTMF_PT_DEFAULT, direction)

    def answer(self, remote: MediaOffer, *, hold: bool = False) -> bytes:
        direction = _ANSWER_DIRECTION[remote.direction]
        if hold:  # we put the remote on hold: send nothing, listen only
            direction = {"sendrecv": "recvonly", "sendonly": "inactive"}.get(direction, direction)
        return self.describe([remote.codec()], remote.dtmf_pt(), direction)

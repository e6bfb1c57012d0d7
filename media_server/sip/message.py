"""SIP messages (RFC 3261 section 7): strict, bounded parsing and serialising.

The listener faces the internet, so the parser is the first line of defence: every limit
is checked before work is done (message size, header count, line length), anything that is
not well-formed raises :class:`SipParseError` — never another exception — and the caller
answers 400 or drops the datagram. Header names are normalised (compact forms expanded,
canonical case) so the rest of the stack looks them up one way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_MESSAGE = 65535  # a UDP datagram; TCP messages are held to the same bound
MAX_HEADERS = 80
MAX_LINE = 4096
SIP_VERSION = "SIP/2.0"

COMPACT = {
    "i": "Call-ID", "m": "Contact", "e": "Content-Encoding", "l": "Content-Length",
    "c": "Content-Type", "f": "From", "s": "Subject", "k": "Supported", "t": "To", "v": "Via",
}
_CANONICAL = {
    name.lower(): name
    for name in (
        "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Max-Forwards", "Content-Length",
        "Content-Type", "Allow", "Accept", "Supported", "User-Agent", "Server", "Route",
        "Record-Route", "Authorization", "WWW-Authenticate", "Proxy-Authorization",
        "Proxy-Authenticate", "Require", "Unsupported", "Retry-After", "Expires", "Reason",
        "Subject", "Content-Encoding", "Event", "Allow-Events", "Session-Expires", "Min-SE",
    )
}
_TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
_STATUS = re.compile(r"^SIP/2\.0 ([1-6][0-9]{2}) ([^\r\n]*)$")
_CSEQ = re.compile(r"^([0-9]{1,10})\s+([A-Za-z0-9\-.!%*_+`'~]+)$")
REQUIRED = ("Via", "From", "To", "Call-ID", "CSeq")


class SipParseError(ValueError):
    """A message that is not well-formed SIP (or breaks a size limit)."""


def canonical(name: str) -> str:
    """Header name in one spelling: compact forms expanded, known names in RFC case."""
    lower = name.lower()
    if lower in COMPACT:
        return COMPACT[lower]
    return _CANONICAL.get(lower, name)


@dataclass
class SipMessage:
    """Start line fields + ordered headers + body (bytes)."""

    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    method: str = ""  # requests
    uri: str = ""  # requests
    status: int = 0  # responses
    reason: str = ""  # responses

    @property
    def is_request(self) -> bool:
        return bool(self.method)

    def get(self, name: str, default: str | None = None) -> str | None:
        """First value of header ``name``."""
        name = canonical(name)
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, comma-separated lists split (Via, Route, Record-Route)."""
        name = canonical(name)
        values = [v for k, v in self.headers if k == name]
        if name in ("Via", "Route", "Record-Route"):
            return [part.strip() for v in values for part in split_commas(v) if part.strip()]
        return values

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` header with one value (appended if absent)."""
        name = canonical(name)
        self.headers = [(k, v) for k, v in self.headers if k != name]
        self.headers.append((name, value))

    def add(self, name: str, value: str) -> None:
        self.headers.append((canonical(name), value))

    def remove(self, name: str) -> None:
        name = canonical(name)
        self.headers = [(k, v) for k, v in self.headers if k != name]

    @property
    def call_id(self) -> str:
        return self.get("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        match = _CSEQ.match((self.get("CSeq") or "").strip())
        if match is None:
            raise SipParseError("bad CSeq")
        return int(match.group(1)), match.group(2).upper()

    def to_bytes(self) -> bytes:
        """Wire form; Content-Length is always written from the body."""
        if self.is_request:
            lines = [f"{self.method} {self.uri} {SIP_VERSION}"]
        else:
            lines = [f"{SIP_VERSION} {self.status} {self.reason}"]
        lines += [f"{k}: {v}" for k, v in self.headers if k != "Content-Length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body

    def summary(self) -> str:
        """One line for logs."""
        if self.is_request:
            return f"{self.method} {self.uri[:80]}"
        return f"{self.status} {self.reason[:40]} ({self.get('CSeq')})"


def split_commas(value: str) -> list[str]:
    """Split a header list on commas outside quotes and angle brackets."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(value):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and not quoted and depth == 0:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return parts


def parse(data: bytes, *, stream: bool = False) -> SipMessage:
    """Parse one whole message; ``stream`` (TCP) requires Content-Length.

    Raises :class:`SipParseError` for anything malformed or oversize.
    """
    if len(data) > MAX_MESSAGE:
        raise SipParseError("message too large")
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise SipParseError("no end of headers")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipParseError("headers are not UTF-8") from exc
    lines = text.split("\r\n")
    msg = _start_line(lines[0])
    msg.headers = _headers(lines[1:])
    msg.body = _body(msg, body, stream)
    _check(msg)
    return msg


def _start_line(line: str) -> SipMessage:
    if len(line) > MAX_LINE:
        raise SipParseError("start line too long")
    if line.startswith("SIP/"):
        match = _STATUS.match(line)
        if match is None:
            raise SipParseError("bad status line")
        return SipMessage(status=int(match.group(1)), reason=match.group(2))
    parts = line.split(" ")
    if len(parts) != 3 or parts[2] != SIP_VERSION:
        raise SipParseError("bad request line")
    method, uri = parts[0], parts[1]
    if not _TOKEN.match(method) or not uri or any(c in uri for c in "\x00\t<>\""):
        raise SipParseError("bad method or request-URI")
    if ":" not in uri:
        raise SipParseError("request-URI has no scheme")
    return SipMessage(method=method.upper(), uri=uri)


def _headers(lines: list[str]) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for line in lines:
        if len(line) > MAX_LINE:
            raise SipParseError("header line too long")
        if line[:1] in (" ", "\t"):  # folded continuation of the previous header
            if not headers:
                raise SipParseError("continuation before any header")
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            if len(headers[-1][1]) > MAX_LINE:
                raise SipParseError("header too long")
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not _TOKEN.match(name):
            raise SipParseError("bad header line")
        if any(ord(c) < 32 and c != "\t" for c in value):
            raise SipParseError("control character in a header")
        headers.append((canonical(name), value.strip()))
        if len(headers) > MAX_HEADERS:
            raise SipParseError("too many headers")
    return headers


def _body(msg: SipMessage, body: bytes, stream: bool) -> bytes:
    raw = msg.get("Content-Length")
    if raw is None:
        if stream:
            raise SipParseError("Content-Length is required over TCP")
        return body
    if not raw.isdigit() or len(raw) > 6:
        raise SipParseError("bad Content-Length")
    length = int(raw)
    if length > len(body):
        raise SipParseError("body shorter than Content-Length")
    return body[:length]


def _check(msg: SipMessage) -> None:
    for name in REQUIRED:
        values = [v for k, v in msg.headers if k == name]
        if not values or not values[0]:
            raise SipParseError(f"missing {name}")
        if name != "Via" and len(values) > 1:
            raise SipParseError(f"more than one {name}")
    number, method = msg.cseq
    if msg.is_request and method != msg.method and msg.method != "ACK" and msg.method != "CANCEL":
        raise SipParseError("CSeq method does not match the request")
    if msg.is_request and msg.method in ("ACK", "CANCEL") and method != msg.method:
        raise SipParseError("CSeq method does not match the request")
    if number > 2**31 - 1:
        raise SipParseError("CSeq number out of range")
    if len(msg.call_id) > 256:
        raise SipParseError("Call-ID too long")
    mf = msg.get("Max-Forwards")
    if mf is not None and (not mf.isdigit() or len(mf) > 3):
        raise SipParseError("bad Max-Forwards")


# -- header value helpers ----------------------------------------------------------------
_PARAM = re.compile(r";\s*([A-Za-z0-9\-.!%*_+`'~]+)(?:\s*=\s*(\"[^\"]*\"|[^;,\s]*))?")


def params(text: str) -> dict[str, str]:
    """``;a=b;c`` parameters of a header tail, lower-case names, quotes stripped."""
    return {m.group(1).lower(): (m.group(2) or "").strip('"') for m in _PARAM.finditer(text)}


@dataclass(frozen=True, slots=True)
class NameAddr:
    """A From/To/Contact value: ``"display" <uri>;params``."""

    uri: str
    params: dict[str, str]
    display: str = ""

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        tail = "".join(f";{k}={v}" if v else f";{k}" for k, v in self.params.items())
        display = f'"{self.display}" ' if self.display else ""
        return f"{display}<{self.uri}>{tail}"


def name_addr(value: str) -> NameAddr:
    """Parse a From/To/Contact header value."""
    value = value.strip()
    if "<" in value:
        lt, gt = value.find("<"), value.find(">")
        if gt < lt:
            raise SipParseError("unbalanced <> in address")
        display = value[:lt].strip().strip('"')
        return NameAddr(value[lt + 1 : gt].strip(), params(value[gt + 1 :]), display)
    uri, _, tail = value.partition(";")  # addr-spec form: parameters belong to the header
    if not uri:
        raise SipParseError("empty address")
    return NameAddr(uri.strip(), params(";" + tail) if tail else {})


@dataclass(frozen=True, slots=True)
class SipUri:
    """The parts of a ``sip:user@host:port;params`` URI that routing needs."""

    user: str
    host: str
    port: int | None
    params: dict[str, str]


_URI = re.compile(r"^sips?:(?:([^@;?]*)@)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(?::([0-9]{1,5}))?([^?]*)")


def parse_uri(uri: str) -> SipUri:
    match = _URI.match(uri.strip())
    if match is None:
        raise SipParseError("not a sip: URI")
    user = (match.group(1) or "").partition(":")[0]
    port = int(match.group(3)) if match.group(3) else None
    if port is not None and not 0 < port < 65536:
        raise SipParseError("bad port in URI")
    return SipUri(user, match.group(2).strip("[]"), port, params(match.group(4)))


@dataclass(frozen=True, slots=True)
class Via:
    transport: str
    host: str
    port: int | None
    params: dict[str, str]

    @property
    def branch(self) -> str:
        return self.params.get("branch", "")


_VIA = re.compile(r"^SIP\s*/\s*2\.0\s*/\s*([A-Za-z]+)\s+(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(?:\s*:\s*([0-9]{1,5}))?")


def parse_via(value: str) -> Via:
    match = _VIA.match(value.strip())
    if match is None:
        raise SipParseError("bad Via")
    port = int(match.group(3)) if match.group(3) else None
    return Via(match.group(1).upper(), match.group(2).strip("[]"), port, params(value[match.end() :]))

"""A corpus of real SDP offers and a deterministic mutator, for the fuzz bench and the tests.

The offers are made by real aiortc peers in several shapes (audio only, audio + DataChannel,
audio + video, send-only, two audio sections, PCMU-only) plus Chromium offers captured from
the real browser (``tests/sdp_offers/chromium-*.sdp``, made by ``python -m bench.sdp_corpus
--chromium``). The mutations are the kinds of damage a fuzzer, a buggy client or a hostile
one produces: dropped, duplicated, swapped and truncated lines, numbers replaced by edge
values, attributes emptied, random bytes, line-ending changes.
"""

from __future__ import annotations

import asyncio
import importlib
import random
from collections.abc import Callable
from pathlib import Path

from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

DATA_DIR = Path(__file__).resolve().parent.parent / "tests" / "sdp_offers"
EDGE_NUMBERS = ("-1", "0", "65536", "256", "99999999999999999999", "1e9", "", "x", "72", "35")


async def _offer(setup: Callable[[RTCPeerConnection], None]) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        setup(pc)
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


def _audio(pc: RTCPeerConnection) -> None:
    pc.addTrack(AudioStreamTrack())


def _audio_dc(pc: RTCPeerConnection) -> None:
    pc.createDataChannel("events")
    pc.addTrack(AudioStreamTrack())


def _audio_video(pc: RTCPeerConnection) -> None:
    pc.createDataChannel("events")
    pc.addTrack(AudioStreamTrack())
    pc.addTrack(VideoStreamTrack())


def _sendonly(pc: RTCPeerConnection) -> None:
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")


def _two_audio(pc: RTCPeerConnection) -> None:
    pc.addTrack(AudioStreamTrack())
    pc.addTrack(AudioStreamTrack())


def _pcmu_only(pc: RTCPeerConnection) -> None:
    from aiortc.rtcrtpsender import RTCRtpSender

    transceiver = pc.addTransceiver(AudioStreamTrack())
    codecs = RTCRtpSender.getCapabilities("audio").codecs
    transceiver.setCodecPreferences([c for c in codecs if c.mimeType == "audio/PCMU"])


SHAPES: dict[str, Callable[[RTCPeerConnection], None]] = {
    "aiortc-audio": _audio, "aiortc-audio-dc": _audio_dc, "aiortc-audio-video": _audio_video,
    "aiortc-sendonly": _sendonly, "aiortc-two-audio": _two_audio, "aiortc-pcmu": _pcmu_only,
}


async def aiortc_offers() -> dict[str, str]:
    """One fresh offer per shape, made by real aiortc peers."""
    return {name: await _offer(setup) for name, setup in SHAPES.items()}


def stored_offers() -> dict[str, str]:
    """Offers captured from real browsers (tests/sdp_offers)."""
    return {p.stem: p.read_text() for p in sorted(DATA_DIR.glob("*.sdp"))}


async def corpus() -> dict[str, str]:
    return {**await aiortc_offers(), **stored_offers()}


def _lines(sdp: str) -> list[str]:
    return sdp.replace("\r\n", "\n").split("\n")


def _join(lines: list[str]) -> str:
    return "\r\n".join(lines)


def mutate(sdp: str, rng: random.Random) -> str:
    """One randomly damaged copy of ``sdp`` (1–3 mutations)."""
    for _ in range(rng.randint(1, 3)):
        sdp = rng.choice(MUTATIONS)(sdp, rng)
    return sdp


def _drop_line(sdp: str, rng: random.Random) -> str:
    lines = _lines(sdp)
    del lines[rng.randrange(len(lines))]
    return _join(lines)


def _dup_line(sdp: str, rng: random.Random) -> str:
    lines = _lines(sdp)
    i = rng.randrange(len(lines))
    lines.insert(rng.randrange(len(lines)), lines[i])
    return _join(lines)


def _swap_lines(sdp: str, rng: random.Random) -> str:
    lines = _lines(sdp)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return _join(lines)


def _truncate(sdp: str, rng: random.Random) -> str:
    return sdp[: rng.randrange(len(sdp) + 1)]


def _edge_number(sdp: str, rng: random.Random) -> str:
    lines = _lines(sdp)
    i = rng.randrange(len(lines))
    tokens = lines[i].split(" ")
    j = rng.randrange(len(tokens))
    head, sep, tail = tokens[j].rpartition(":")
    tokens[j] = head + sep + rng.choice(EDGE_NUMBERS) if sep and rng.random() < 0.5 else rng.choice(EDGE_NUMBERS)
    if j == 0 and "=" in lines[i][:2]:
        tokens[0] = lines[i][:2] + tokens[0].lstrip("=")
    lines[i] = " ".join(tokens)
    return _join(lines)


def _empty_value(sdp: str, rng: random.Random) -> str:
    lines = _lines(sdp)
    i = rng.randrange(len(lines))
    key, sep, _ = lines[i].partition(":")
    lines[i] = key + sep if sep else lines[i][:2]
    return _join(lines)


def _drop_tokens(sdp: str, rng: random.Random) -> str:
    lines = _lines(sdp)
    i = rng.randrange(len(lines))
    tokens = lines[i].split(" ")
    lines[i] = " ".join(tokens[: rng.randrange(1, len(tokens) + 1)]) if len(tokens) > 1 else lines[i][:3]
    return _join(lines)


def _random_bytes(sdp: str, rng: random.Random) -> str:
    i = rng.randrange(len(sdp) + 1)
    junk = "".join(chr(rng.choice([0, 7, 10, 13, 32, 58, 61, 127, 0xE9, 0xFFFD, 0x1F600, rng.randrange(0x20, 0x7F)]))
                   for _ in range(rng.randint(1, 8)))
    return sdp[:i] + junk + sdp[i:]


def _line_endings(sdp: str, rng: random.Random) -> str:
    return rng.choice([sdp.replace("\r\n", "\n"), sdp.replace("\r\n", "\r"), sdp.replace("\r\n", "\n\n")])


def _strip_kind(sdp: str, rng: random.Random) -> str:
    prefix = rng.choice(["a=ice-", "a=fingerprint", "a=setup", "a=mid", "a=rtcp-mux", "a=rtpmap", "a=sctp",
                         "a=group", "a=msid", "a=ssrc", "a=fmtp", "c=", "m="])
    return _join([line for line in _lines(sdp) if not line.startswith(prefix)])


def _set_attr(sdp: str, rng: random.Random) -> str:
    values = {"a=setup:": ["", "bogus", "holdconn", "active", "passive"],
              "a=fingerprint:": ["", "sha-256", "md5 00", "sha-256 zz"],
              "a=mid:": ["", "0", "1", "x" * 300], "a=group:": ["BUNDLE", "BUNDLE 9 8", "", "LS"],
              "a=rtpmap:": ["", "111", "111 opus", "300 opus/48000/2", "x opus/y"],
              "a=fmtp:": ["", "999 a=b", "111", "111 ;;=;"], "a=sctp-port:": ["", "x", "-5"],
              "a=ssrc:": ["", "x", "1", "1 cname"], "a=candidate:": ["", "1 1 udp", "x y z"],
              "a=extmap:": ["", "x", "1/bogus uri"], "a=rtcp:": ["", "x"], "c=": ["", "IN", "IN IP9 q"]}
    prefix = rng.choice(list(values))
    out = []
    for line in _lines(sdp):
        out.append(prefix + rng.choice(values[prefix]) if line.startswith(prefix) and rng.random() < 0.7 else line)
    return _join(out)


MUTATIONS: list[Callable[[str, random.Random], str]] = [
    _drop_line, _dup_line, _swap_lines, _truncate, _edge_number, _empty_value, _drop_tokens,
    _random_bytes, _line_endings, _strip_kind, _set_attr, _set_attr, _strip_kind,
]


async def capture_chromium(count: int = 2) -> list[str]:
    """Offers from headless Chromium (audio + ``events`` DataChannel, like web/)."""
    # the tests' CDP driver; imported by name so the library does not depend on tests/
    open_page = importlib.import_module("tests.browser").open_page

    js = """(async () => { const pc = new RTCPeerConnection();
      pc.createDataChannel('events');
      pc.addTransceiver('audio', {direction: 'sendrecv'});
      await pc.setLocalDescription(await pc.createOffer());
      await new Promise(r => { if (pc.iceGatheringState === 'complete') r();
        pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r();
        setTimeout(r, 3000); });
      const sdp = pc.localDescription.sdp; pc.close(); return sdp; })()"""
    offers = []
    async with open_page("about:blank") as page:
        for _ in range(count):
            offers.append(str(await page.evaluate(js, timeout=15)))
    return offers


if __name__ == "__main__":
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    for n, offer in enumerate(asyncio.run(capture_chromium())):
        (DATA_DIR / f"chromium-{n}.sdp").write_text(offer)
        print(f"wrote {DATA_DIR / f'chromium-{n}.sdp'}")

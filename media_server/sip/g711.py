"""G.711 PCMU (mu-law) and PCMA (A-law) in numpy, by table lookup.

Encoding is a 65 536-entry table indexed by the int16 sample's bit pattern and decoding a
256-entry table, both built once at import from the segment/quantisation rules of ITU-T
G.711 — a lookup per sample is ~10x faster than evaluating the rules per frame.
"""

from __future__ import annotations

import numpy as np

#: RTP static payload types (RFC 3551) and names as they appear in SDP rtpmap lines.
PCMU, PCMA = 0, 8
NAMES = {PCMU: "PCMU", PCMA: "PCMA"}
RATE = 8000

_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635


def _segment(magnitude: np.ndarray, ends: list[int]) -> np.ndarray:
    """Index of the first segment end that is >= magnitude (8 when beyond the last)."""
    return np.searchsorted(np.asarray(ends), magnitude, side="left")


def _build_ulaw_encode() -> np.ndarray:
    x = np.arange(-32768, 32768, dtype=np.int32)
    v = x >> 2  # 14-bit domain, as G.711 defines it
    mask = np.where(v < 0, 0x7F, 0xFF)
    v = np.minimum(np.abs(v), _ULAW_CLIP >> 2) + (_ULAW_BIAS >> 2)
    seg = _segment(v, [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
    code = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((v >> (np.minimum(seg, 7) + 1)) & 0x0F))
    return _by_bit_pattern(x, code ^ mask)


def _build_ulaw_decode() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _build_alaw_encode() -> np.ndarray:
    x = np.arange(-32768, 32768, dtype=np.int32)
    v = x >> 3  # 13-bit magnitude domain
    mask = np.where(v >= 0, 0xD5, 0x55)
    v = np.where(v >= 0, v, -v - 1)
    seg = _segment(v, [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
    shift = np.where(seg < 2, 1, seg)
    code = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((v >> shift) & 0x0F))
    return _by_bit_pattern(x, code ^ mask)


def _build_alaw_decode() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


def _by_bit_pattern(x: np.ndarray, code: np.ndarray) -> np.ndarray:
    table = np.empty(65536, dtype=np.uint8)
    table[x.astype(np.int16).view(np.uint16)] = code.astype(np.uint8)
    return table


_ENCODE = {PCMU: _build_ulaw_encode(), PCMA: _build_alaw_encode()}
_DECODE = {PCMU: _build_ulaw_decode(), PCMA: _build_alaw_decode()}


def encode(pcm: np.ndarray, payload_type: int) -> bytes:
    """int16 PCM (8 kHz mono) -> G.711 bytes for ``payload_type`` (PCMU or PCMA)."""
    samples = np.ascontiguousarray(pcm, dtype=np.int16)
    return _ENCODE[payload_type][samples.view(np.uint16)].tobytes()


def decode(payload: bytes, payload_type: int) -> np.ndarray:
    """G.711 bytes -> int16 PCM (8 kHz mono)."""
    return _DECODE[payload_type][np.frombuffer(payload, dtype=np.uint8)]


def silence(samples: int, payload_type: int) -> bytes:
    """Encoded digital silence (0xFF for mu-law, 0xD5 for A-law)."""
    return encode(np.zeros(samples, dtype=np.int16), payload_type)

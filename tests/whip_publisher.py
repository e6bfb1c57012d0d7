"""A WHIP publisher on FFmpeg's own ``whip`` muxer (through PyAV): a third-party client.

``python -m tests.whip_publisher URL IN.wav [--token T] [--tail S] [--whip-flags F]
[--cert C --key K]`` encodes IN.wav (16-bit mono PCM) as libopus 48 kHz stereo and sends it
in real time, then silence, until ``stop`` arrives on stdin or ``--tail`` seconds of silence
have gone. Closing the muxer makes FFmpeg send its own ``DELETE``.

It runs in its own process: PyAV keeps the GIL while the muxer blocks on its HTTP request
and handshakes, which would freeze an event loop in the same process.
"""

from __future__ import annotations

import argparse
import fractions
import logging
import sys
import threading
import time
import wave

import av
import numpy as np

RATE = 48000
FRAME = 960  # 20 ms


def read_wav(path: str) -> np.ndarray:
    with wave.open(path, "rb") as w:
        if w.getframerate() != RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise SystemExit(f"{path}: need 48 kHz mono 16-bit PCM")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def stop_on_stdin(stop: threading.Event) -> None:
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    stop.set()


def frame_at(pcm: np.ndarray, pts: int) -> av.AudioFrame:
    chunk = np.zeros(FRAME, dtype=np.int16)
    part = pcm[pts:pts + FRAME]
    chunk[: len(part)] = part
    frame = av.AudioFrame.from_ndarray(np.repeat(chunk, 2)[None, :], format="s16", layout="stereo")
    frame.sample_rate, frame.pts, frame.time_base = RATE, pts, fractions.Fraction(1, RATE)
    return frame


def publish(url: str, pcm: np.ndarray, token: str | None, tail_s: float, stop: threading.Event,
            extra: dict[str, str] | None = None) -> int:
    options = {"authorization": token} if token else {}
    options.update(extra or {})
    out = av.open(url, "w", format="whip", options=options)
    stream = out.add_stream("libopus", rate=RATE, layout="stereo")
    stream.bit_rate = 64000
    end = len(pcm) + int(tail_s * RATE)
    t0, pts, status = time.monotonic(), 0, 0
    try:
        while pts < end and not stop.is_set():
            for packet in stream.encode(frame_at(pcm, pts)):
                out.mux(packet)
            if pts == 0:
                print("publishing", flush=True)  # the header (offer/answer, ICE, DTLS) is done
            pts += FRAME
            time.sleep(max(0.0, t0 + pts / RATE - time.monotonic()))  # real time, absolute schedule
    except av.FFmpegError as exc:  # e.g. the server hung up first
        print(f"publish stopped: {exc}", flush=True)
        status = 2 if pts == 0 else 0
    finally:
        try:
            out.close()
        except av.FFmpegError as exc:
            print(f"close: {exc}", flush=True)
    print("closed", flush=True)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("wav")
    parser.add_argument("--token")
    parser.add_argument("--tail", type=float, default=10.0)
    parser.add_argument("--whip-flags", help="the muxer's whip_flags, e.g. dtls_active")
    parser.add_argument("--cert", help="PEM certificate for DTLS (the muxer's cert_file); default: FFmpeg makes one")
    parser.add_argument("--key", help="PEM private key for DTLS (the muxer's key_file)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    av.logging.set_level(av.logging.ERROR)  # FFmpeg's own reasons (e.g. "DTLS session failed")
    stop = threading.Event()
    threading.Thread(target=stop_on_stdin, args=(stop,), daemon=True).start()
    extra = {name: value for name, value in
             (("whip_flags", args.whip_flags), ("cert_file", args.cert), ("key_file", args.key)) if value}
    return publish(args.url, read_wav(args.wav), args.token, args.tail, stop, extra)


if __name__ == "__main__":
    sys.exit(main())
